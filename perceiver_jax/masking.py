"""Whole-word masking on UTF-8 bytes, as Perceiver IO's masked-language pre-training describes it.

A word is a maximal run of non-whitespace bytes (special ids end a word too); 15% of the words of a window are
chosen, and each chosen word is predicted from its bytes replaced BERT's way: [MASK] for all of them (80% of the
words), random bytes (10%), or left as they are (10%). A chosen word's span starts at the whitespace byte before it
when there is one: the original's colab masks " missing." and notes that the model does much better when the masked
span starts with a space, which is how it was trained to fill spans.

The choice is a function of the window's ids, the pass over the corpus (epoch) and a seed, so every pass masks a
window anew (dynamic masking: with one fixed mask per window, a model that sees a small corpus many times learns
each window's answers by heart) and a resumed run masks every window as before.
"""
import dataclasses
import zlib

import numpy as np

from perceiver_jax.tokenization import NUM_SPECIAL_TOKENS, VOCAB_SIZE, PerceiverTokenizer

WHITESPACE = b" \t\n\r\x0b\x0c"  # Python's str.split() whitespace within ASCII
MASK_ID = PerceiverTokenizer.mask_token_id


def word_spans(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) arrays of each word's span in `ids` (byte ids), its preceding whitespace byte included."""
    byte = ids - NUM_SPECIAL_TOKENS
    is_byte = ids >= NUM_SPECIAL_TOKENS
    in_word = is_byte & ~np.isin(byte, np.frombuffer(WHITESPACE, np.uint8))
    edges = np.diff(np.concatenate([[0], in_word.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    space_before = (starts > 0) & is_byte[np.maximum(starts - 1, 0)] & ~in_word[np.maximum(starts - 1, 0)]
    return starts - space_before, ends


def mask_words(ids: np.ndarray, rng: np.random.Generator, rate: float = 0.15,
               replace: tuple[float, float] = (0.8, 0.1)) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, chosen): `ids` with round(rate x words) whole words replaced (at least one when there is one), and a
    boolean mask of the bytes to predict. replace: the fractions of chosen words that become [MASK] and random bytes
    (the rest stay as they are)."""
    starts, ends = word_spans(ids)
    count = min(len(starts), max(1, round(rate * len(starts)))) if len(starts) else 0
    inputs, chosen = ids.copy(), np.zeros(ids.shape, bool)
    to_mask, to_randomize = replace
    for word in rng.choice(len(starts), count, replace=False):
        span = slice(starts[word], ends[word])
        chosen[span] = True
        draw = rng.random()
        if draw < to_mask:
            inputs[span] = MASK_ID
        elif draw < to_mask + to_randomize:
            inputs[span] = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, ends[word] - starts[word])
    return inputs, chosen


@dataclasses.dataclass(frozen=True)
class MaskedBytes:
    """A window of the corpus (`{"tokens": int32[L]}`) -> the model's inputs and what it must predict:
    `inputs`, `attention_mask` (every position: the windows are cut from one stream of documents, so none is
    padding), `labels` (the original ids) and `label_mask` (1 on the chosen words' bytes). Windows are masked
    from a generator seeded by (seed, epoch, their content); the training iterator passes the epoch."""

    seed: int = 0
    rate: float = 0.15
    takes_epoch = True  # jaxport.data.make_iterator calls it as (window, epoch)

    def __call__(self, window: dict, epoch: int = 0) -> dict[str, np.ndarray]:
        ids = np.asarray(window["tokens"], np.int32)
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(ids.tobytes())])
        inputs, chosen = mask_words(ids, rng, self.rate)
        return {"inputs": inputs, "attention_mask": np.ones_like(ids), "labels": ids,
                "label_mask": chosen.astype(np.int32)}
