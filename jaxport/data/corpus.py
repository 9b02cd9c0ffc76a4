"""A language-model corpus: documents tokenised, each followed by the tokenizer's end-of-document id (its eos),
concatenated into one stream of ids and read as fixed-length windows: a random-access source for the batch
iterator, which shuffles the windows, gives each host its slice of every batch and resumes at its position.

    documents = JsonlSource("train.jsonl", fields=("text",))    # or TextLineSource, TfdsSource, a list of dicts
    tokens = token_stream(documents, tokenizer, cache_dir="cache", source_id="train.jsonl v1")
    windows = TokenWindows(tokens, length=513, stride=512)       # {"tokens": int32[513]}: next-token prediction
    batch = next(make_iterator(windows, next_token_example, batch_size=8))   # input_ids, labels: int32[8, 512]

Nothing here knows a tokenizer's vocabulary (jaxport.data.tokenizers: `encode_batch`, `eos_id`, `vocab_size`,
`fingerprint`), so a byte-level masked-LM and a GPT-2 causal LM read the same files. The stream of a large corpus
(OpenWebText is about 9B GPT-2 tokens) is written once under `cache_dir`, named after the documents, the tokenizer and
the end-of-document id, and memory-mapped from then on; without a cache_dir it is built in memory at every start.
"""
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the cached files; a change of layout changes every cache name
DOCUMENTS_PER_CALL = 1000  # documents handed to the tokenizer at once (a fast tokenizer encodes them in parallel)
LOG_EVERY_DOCUMENTS = 100_000


def token_stream(documents, tokenizer, *, text_key: str = "text", cache_dir: str | os.PathLike | None = None,
                 source_id: str | None = None) -> np.ndarray:
    """The ids of every document in order, each followed by `tokenizer.eos_id`; blank documents are left out.

    Args:
      documents: a random-access source of dicts (len, [i]) with the text under `text_key`.
      tokenizer: see the module docstring.
      cache_dir: where to keep the stream as a file, read back (memory-mapped) when the same documents and tokenizer
        come again; None builds it in memory.
      source_id: what identifies the documents in the cache name (paths with sizes and times, a TFDS folder and
        split); needed with cache_dir.
    """
    if cache_dir is None:
        pieces = [ids.astype(np.int32) for ids, _ in _tokenized(documents, tokenizer, text_key)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    if not source_id:
        raise ValueError("a cached token stream needs a source_id naming its documents")
    key = {"format": FORMAT_VERSION, "source": source_id, "text_key": text_key, "tokenizer": tokenizer.fingerprint,
           "end_of_document_id": int(tokenizer.eos_id)}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    tokens_path, info_path = Path(cache_dir) / f"{name}.tokens", Path(cache_dir) / f"{name}.json"
    if not info_path.exists():
        tokens_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("tokenizing %s into %s", source_id, tokens_path)
        partial = tokens_path.with_name(f"{tokens_path.name}.partial{os.getpid()}")
        dtype, count, num_documents = _id_dtype(tokenizer.vocab_size), 0, 0
        with open(partial, "wb") as file:
            for ids, documents_in_piece in _tokenized(documents, tokenizer, text_key):
                file.write(ids.astype(dtype).tobytes())
                count, num_documents = count + len(ids), num_documents + documents_in_piece
        # The tokens first, then the description that marks them complete: a run killed in between leaves no cache.
        os.replace(partial, tokens_path)
        info = {**key, "num_tokens": count, "num_documents": num_documents, "dtype": np.dtype(dtype).name}
        _write_atomically(info_path, json.dumps(info, indent=1))
    return _read_cached(tokens_path, json.loads(info_path.read_text()))


def _read_cached(tokens_path: Path, info: dict) -> np.ndarray:
    dtype = np.dtype(info["dtype"])
    size = tokens_path.stat().st_size if tokens_path.exists() else None
    if size != info["num_tokens"] * dtype.itemsize:
        raise ValueError(f"{tokens_path} holds {size} bytes, not the {info['num_tokens']} {dtype.name} tokens its "
                         f"{tokens_path.with_suffix('.json').name} records: delete both to tokenize again")
    if not size:
        return np.zeros(0, dtype)  # an empty file cannot be memory-mapped
    return np.memmap(tokens_path, dtype=dtype, mode="r", shape=(info["num_tokens"],))


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.partial{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def _id_dtype(vocab_size: int):
    """The narrowest unsigned integer every id fits."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _tokenized(documents, tokenizer, text_key: str):
    """The stream in pieces: (ids, how many documents they hold)."""
    end = int(tokenizer.eos_id)
    if not 0 <= end < tokenizer.vocab_size:
        raise ValueError(f"the tokenizer's end-of-document (eos) id {tokenizer.eos_id} is not in its vocabulary "
                         f"of {tokenizer.vocab_size}")
    for start in range(0, len(documents), DOCUMENTS_PER_CALL):
        stop = min(start + DOCUMENTS_PER_CALL, len(documents))
        texts = [text for text in (_text(documents, index, text_key) for index in range(start, stop)) if text.strip()]
        if not texts:
            continue
        ids = np.concatenate([np.append(np.asarray(doc, np.int64), end) for doc in tokenizer.encode_batch(texts)])
        if ids.min() < 0 or ids.max() >= tokenizer.vocab_size:
            raise ValueError(f"the tokenizer gave ids outside its vocabulary of {tokenizer.vocab_size} "
                             f"(documents {start}..{stop - 1})")
        if start // LOG_EVERY_DOCUMENTS != stop // LOG_EVERY_DOCUMENTS:
            log.info("tokenized %d of %d documents", stop, len(documents))
        yield ids, len(texts)


def _text(documents, index: int, text_key: str) -> str:
    document = documents[index]
    if text_key not in document:
        raise ValueError(f"document {index} has no {text_key!r} field; it has {sorted(document)}")
    text = document[text_key]
    if not isinstance(text, str):
        raise ValueError(f"document {index}: {text_key!r} is a {type(text).__name__}, not text")
    return text


class TokenWindows:
    """Window i of a token stream, `tokens[i * stride : i * stride + length]`, as `{"tokens": int32[length]}`; the
    tokens after the last whole window are not used. For next-token prediction length = stride + 1: each window
    shares its last token with the next, so every token but the first is a label once."""

    def __init__(self, tokens: np.ndarray, length: int, stride: int):
        if not 0 < stride <= length:
            raise ValueError(f"stride {stride} must be in 1..length ({length})")
        if len(tokens) < length:
            raise ValueError(f"the corpus has {len(tokens)} tokens, fewer than one window of {length}")
        self.tokens, self.length, self.stride = tokens, length, stride

    def __len__(self) -> int:
        return (len(self.tokens) - self.length) // self.stride + 1

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        start = index * self.stride
        return {"tokens": np.asarray(self.tokens[start:start + self.length], np.int32)}

    def __getstate__(self) -> dict:
        # A memory-mapped stream travels to worker processes as its file, not as a copy of its contents.
        state = dict(self.__dict__)
        if isinstance(self.tokens, np.memmap):
            state["tokens"] = (self.tokens.filename, self.tokens.dtype.name, len(self.tokens))
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["tokens"], tuple):
            path, dtype, size = state["tokens"]
            state["tokens"] = np.memmap(path, dtype=dtype, mode="r", shape=(size,))
        self.__dict__.update(state)


def next_token_example(window: dict) -> dict[str, np.ndarray]:
    """A window of length + 1 tokens -> `input_ids` (its first length) and `labels` (its last length)."""
    tokens = window["tokens"]
    return {"input_ids": tokens[:-1], "labels": tokens[1:]}
