"""Tokenizers behind one small interface used by the preprocessors.

A tokenizer has `pad_id`, `eos_id`, `encode(text, max_length=None) -> ids` (with the special tokens
the model expects, e.g. a final eos; cut to `max_length` keeping them, when given) and
`decode(ids) -> str` (special tokens and padding left out).
"""
from collections.abc import Sequence

import numpy as np


class ByteTokenizer:
    """ByT5's byte-level scheme: pad=0, eos=1, unk=2, then id = UTF-8 byte + 3."""

    pad_id = 0
    eos_id = 1
    unk_id = 2
    num_special_tokens = 3
    vocab_size = 256 + num_special_tokens

    def encode(self, text: str, max_length: int | None = None) -> np.ndarray:
        ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.num_special_tokens
        if max_length is not None:
            ids = ids[:max_length - 1]  # room for eos
        return np.append(ids, np.int32(self.eos_id))

    def decode(self, ids: Sequence[int]) -> str:
        ids = np.asarray(ids, np.int64)
        byte_ids = ids[(ids >= self.num_special_tokens) & (ids < self.vocab_size)]
        # Like ByT5, drop bytes that do not form valid UTF-8 (a model can emit any byte sequence).
        return bytes((byte_ids - self.num_special_tokens).astype(np.uint8)).decode("utf-8", errors="ignore")


class HuggingFaceTokenizer:
    """Adapts a `transformers` tokenizer object; its own special-token rules (eos, bos...) apply."""

    def __init__(self, tokenizer):
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token first")
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        return self.tokenizer(text, truncation=max_length is not None, max_length=max_length)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
