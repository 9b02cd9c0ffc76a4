"""Perceiver's byte tokenizer: the ids transformers' PerceiverTokenizer gives, without transformers.

Six special tokens take ids 0-5 and byte b of the text's UTF-8 encoding is id b + 6 (vocabulary 262). A sequence is
`[CLS] bytes [SEP]`, a pair `[CLS] A [SEP] B [SEP]`. The special tokens' names inside a text ("[MASK]", ...) are
read as those tokens, as transformers does. Truncation (only when asked) and padding follow transformers' rules.
"""
import re
from typing import Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")  # ids 0..5
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
VOCAB_SIZE = NUM_SPECIAL_TOKENS + 256
_SPECIAL_PATTERN = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")
TRUNCATION = {True: "longest_first", False: None, "longest_first": "longest_first", "only_first": "only_first",
              "only_second": "only_second", "do_not_truncate": None}
PADDING = {True: "longest", False: None, "longest": "longest", "max_length": "max_length", "do_not_pad": None}


def _option(table: dict, name: str, value):
    if isinstance(value, (bool, str)) and value in table:
        return table[value]
    raise ValueError(f"{name}={value!r}: expected one of {list(table)}")


class PerceiverTokenizer:
    pad_token_id, bos_token_id, eos_token_id, mask_token_id, cls_token_id, sep_token_id = range(NUM_SPECIAL_TOKENS)
    pad_token, bos_token, eos_token, mask_token, cls_token, sep_token = SPECIAL_TOKENS
    vocab_size = VOCAB_SIZE

    def __init__(self, model_max_length: int = 2048):
        self.model_max_length = model_max_length

    def __len__(self) -> int:
        return VOCAB_SIZE

    def text_ids(self, text: str) -> list[int]:
        """The ids of a text without added [CLS]/[SEP]: its UTF-8 bytes, special tokens' names as their ids."""
        ids = []
        for index, part in enumerate(_SPECIAL_PATTERN.split(text)):
            # re.split with one group alternates plain text (even indices) and special-token names (odd).
            ids.extend([SPECIAL_TOKENS.index(part)] if index % 2 else (b + NUM_SPECIAL_TOKENS for b in part.encode()))
        return ids

    def encode(self, text: str, text_pair: str | None = None, *, add_special_tokens: bool = True,
               truncation: bool | str = False, max_length: int | None = None) -> list[int]:
        """One text (or pair) as ids, cut to max_length (default model_max_length) only if `truncation` says how:
        True / "longest_first" (from the end of the longer text of a pair), "only_first", "only_second"."""
        ids = self.text_ids(text)
        pair = None if text_pair is None else self.text_ids(text_pair)
        strategy = _option(TRUNCATION, "truncation", truncation)
        if strategy:
            limit = self.model_max_length if max_length is None else max_length
            num_special = (3 if pair is not None else 2) if add_special_tokens else 0
            ids, pair = _truncate(ids, pair, len(ids) + len(pair or []) + num_special - limit, strategy)
        if not add_special_tokens:
            return ids + (pair or [])
        ids = [self.cls_token_id, *ids, self.sep_token_id]
        return ids if pair is None else [*ids, *pair, self.sep_token_id]

    def __call__(self, text: str | Sequence[str], text_pair: str | Sequence[str] | None = None, *,
                 add_special_tokens: bool = True, padding: bool | str = False, truncation: bool | str = False,
                 max_length: int | None = None, pad_to_multiple_of: int | None = None,
                 return_tensors: str | None = None) -> dict:
        """{"input_ids", "attention_mask"} of one text (lists of ints) or a batch (lists of lists), as transformers'
        tokenizer returns them. padding: True / "longest" (the batch's longest), "max_length" (max_length, default
        model_max_length); right padding with [PAD]. return_tensors="np" gives int64 arrays with a batch axis."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = [text_pair] if single or text_pair is None else list(text_pair)
        if text_pair is None:
            pairs = [None] * len(texts)
        elif len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
        rows = [self.encode(first, second, add_special_tokens=add_special_tokens, truncation=truncation,
                            max_length=max_length) for first, second in zip(texts, pairs, strict=True)]
        masks = [[1] * len(row) for row in rows]
        strategy = _option(PADDING, "padding", padding)
        if strategy:
            target = max(map(len, rows), default=0) if strategy == "longest" else (
                self.model_max_length if max_length is None else max_length)
            if pad_to_multiple_of:
                target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
            masks = [mask + [0] * (target - len(mask)) for mask in masks]
            rows = [row + [self.pad_token_id] * (target - len(row)) for row in rows]
        if return_tensors is not None:
            return self._tensors(rows, masks, return_tensors)
        return {"input_ids": rows[0] if single else rows, "attention_mask": masks[0] if single else masks}

    @staticmethod
    def _tensors(rows, masks, kind: str) -> dict:
        if kind != "np":
            raise ValueError(f"return_tensors={kind!r}: only 'np' (numpy) is supported")
        if len({len(row) for row in rows}) > 1:
            raise ValueError(f"rows of lengths {sorted({len(row) for row in rows})} make no array: pass padding=True")
        return {"input_ids": np.asarray(rows, np.int64), "attention_mask": np.asarray(masks, np.int64)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ids: bytes decoded as UTF-8 (invalid bytes as U+FFFD), special tokens as their names or left out."""
        out = bytearray()
        for token in np.asarray(ids, np.int64).reshape(-1).tolist():
            if not 0 <= token < VOCAB_SIZE:
                raise ValueError(f"id {token} is outside the Perceiver vocabulary [0, {VOCAB_SIZE})")
            if token >= NUM_SPECIAL_TOKENS:
                out.append(token - NUM_SPECIAL_TOKENS)
            elif not skip_special_tokens:
                out += SPECIAL_TOKENS[token].encode()
        return out.decode("utf-8", errors="replace")

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]


def _truncate(ids: list[int], pair: list[int] | None, excess: int, strategy: str) -> tuple[list[int], list[int] | None]:
    """Drop `excess` ids from the ends as transformers does: longest_first evens out a pair's lengths first (from the
    longer one), then takes the rest half and half, the odd one from the second text."""
    if excess <= 0:
        return ids, pair
    if strategy == "only_second":
        if pair is None:
            raise ValueError("truncation='only_second' needs a text pair")
        return ids, pair[:max(len(pair) - excess, 0)]
    if strategy == "only_first" or pair is None:
        return ids[:max(len(ids) - excess, 0)], pair
    uneven = min(abs(len(ids) - len(pair)), excess)
    rest = excess - uneven
    from_first = rest // 2 + (uneven if len(ids) > len(pair) else 0)
    from_pair = excess - from_first
    return ids[:max(len(ids) - from_first, 0)], pair[:max(len(pair) - from_pair, 0)]
