"""Tokenizers behind one small interface used by the preprocessors and the language-model corpus.

A tokenizer has `pad_id` (None if it has none), `eos_id`, `vocab_size`, `encode(text, max_length=None) -> ids`
(with the special tokens the model expects, e.g. a final eos; cut to `max_length` keeping them, when given),
`decode(ids) -> str` (special tokens and padding left out), and, for the language-model corpus
(jaxport.data.corpus), `encode_batch(texts) -> [ids, ...]` (plain ids, no special tokens: the corpus adds its own
end-of-document id) and `fingerprint`, a string that changes whenever the ids a text gets would.
"""
import hashlib
import json
from collections.abc import Sequence

import numpy as np


class ByteTokenizer:
    """ByT5's byte-level scheme: pad=0, eos=1, unk=2, then id = UTF-8 byte + 3."""

    pad_id = 0
    eos_id = 1
    unk_id = 2
    num_special_tokens = 3
    vocab_size = 256 + num_special_tokens
    fingerprint = "bytes+3"

    def _byte_ids(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.num_special_tokens

    def encode(self, text: str, max_length: int | None = None) -> np.ndarray:
        ids = self._byte_ids(text)
        if max_length is not None:
            ids = ids[:max_length - 1]  # room for eos
        return np.append(ids, np.int32(self.eos_id))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self._byte_ids(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        ids = np.asarray(ids, np.int64)
        byte_ids = ids[(ids >= self.num_special_tokens) & (ids < self.vocab_size)]
        # Like ByT5, drop bytes that do not form valid UTF-8 (a model can emit any byte sequence).
        return bytes((byte_ids - self.num_special_tokens).astype(np.uint8)).decode("utf-8", errors="ignore")


class HuggingFaceTokenizer:
    """Adapts a `transformers` tokenizer object; its own special-token rules (eos, bos...) apply. A tokenizer
    without a pad token (GPT-2's) serves the language-model corpus, which pads nothing."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        return self.tokenizer(text, truncation=max_length is not None, max_length=max_length)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # One call for many texts: a fast tokenizer encodes them in parallel. verbose=False: documents longer than
        # the model's length are expected here (the corpus cuts the stream into windows).
        return self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def fingerprint(self) -> str:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        rules = backend.to_str() if backend is not None else json.dumps(self.tokenizer.get_vocab(), sort_keys=True)
        return f"{type(self.tokenizer).__name__}:{hashlib.sha256(rules.encode()).hexdigest()[:16]}"


def load_tokenizer(name: str):
    """"bytes" (ByteTokenizer), or a transformers tokenizer from a folder or hub id (e.g. "gpt2")."""
    if name == "bytes":
        return ByteTokenizer()
    from transformers import AutoTokenizer
    return HuggingFaceTokenizer(AutoTokenizer.from_pretrained(name))
