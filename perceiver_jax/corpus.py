"""Perceiver IO's pre-training text: jaxport.data's language-model corpus read with Perceiver's byte ids, and two
sources of its own (`data.source`):
  lm_python_docs   English text that ships with Python (its documentation's topics): the tiny default, no download
  lm_tfds_mixture  several TFDS corpora mixed by document in given proportions (C4 70%, Wikipedia 30% in the paper)
"""
import dataclasses
import math
import sys

import numpy as np

from jaxport.data import LanguageModelData, TfdsSource, data_source
from perceiver_jax.tokenization import NUM_SPECIAL_TOKENS, VOCAB_SIZE, PerceiverTokenizer


class CorpusTokenizer:
    """Perceiver's ids in the interface of jaxport.data's language-model corpus: each document's bytes (special
    tokens' names as their ids, as PerceiverTokenizer reads them), ended by [SEP] as a single text is."""

    pad_id = PerceiverTokenizer.pad_token_id
    eos_id = PerceiverTokenizer.sep_token_id
    vocab_size = VOCAB_SIZE
    fingerprint = f"perceiver-bytes+{NUM_SPECIAL_TOKENS}"

    def __init__(self):
        self.tokenizer = PerceiverTokenizer()

    def encode_batch(self, texts):
        return [np.asarray(self.tokenizer.text_ids(text), np.int32) for text in texts]


# ------------------------------------------------------------------------------------------------ pre-training text

@data_source("lm_python_docs")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PythonDocsData(LanguageModelData):
    """The topics of Python's own documentation (pydoc_data.topics: about 470 KB of English prose and examples),
    one document each, in name order; every tenth is held out for evaluation."""

    def documents(self, split: str):
        from pydoc_data.topics import topics

        names = sorted(topics)
        held_out = split != "train"
        documents = [{self.text_key: topics[name]} for i, name in enumerate(names) if (i % 10 == 9) == held_out]
        return documents, f"pydoc_data.topics:{sys.version_info[:3]}:{split}"


class Mixture:
    """Documents of several sources interleaved so that, in every prefix, source k holds about weights[k] of them:
    document i comes from the source whose share is furthest behind (smooth weighted round robin, deterministic).
    As long as the first source to run out allows."""

    def __init__(self, sources, weights):
        total = sum(weights)
        self.sources, self.weights = list(sources), [w / total for w in weights]
        self.length = min(math.floor(len(s) / w) for s, w in zip(self.sources, self.weights, strict=True))
        counts = [math.floor(self.length * w) for w in self.weights]
        self.length = sum(counts)
        # Which source, and which of its documents, each position takes: built once (a few bytes a document).
        owner = np.zeros(self.length, np.uint8)
        credit = np.zeros(len(self.sources))
        taken = np.zeros(len(self.sources), np.int64)
        for i in range(self.length):
            credit += self.weights
            credit[taken >= counts] = -np.inf
            k = int(np.argmax(credit))
            credit[k] -= 1.0
            owner[i], taken[k] = k, taken[k] + 1
        self.owner = owner
        self.rank = np.zeros(self.length, np.int64)
        for k in range(len(self.sources)):
            where = np.flatnonzero(owner == k)
            self.rank[where] = np.arange(len(where))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.sources[self.owner[index]][int(self.rank[index])]


@data_source("lm_tfds_mixture")
@dataclasses.dataclass(frozen=True, kw_only=True)
class TfdsMixtureData(LanguageModelData):
    """TFDS text corpora prepared as array_record (`tfds build NAME --file_format=array_record`), mixed by document in
    the proportions of `weights`. Evaluation reads eval_splits ("" for a corpus without one) mixed the same way."""

    tfds_names: tuple = ("c4/en", "wikipedia/20230601.en")
    weights: tuple = (0.7, 0.3)
    data_dir: str = ""  # "": TFDS's default
    train_split: str = "train"
    eval_splits: tuple = ("validation", "")

    def documents(self, split: str):
        if len(self.weights) != len(self.tfds_names) or len(self.eval_splits) != len(self.tfds_names):
            raise ValueError(f"data.tfds_names {self.tfds_names}, data.weights {self.weights} and data.eval_splits "
                             f"{self.eval_splits} must have one entry per corpus")
        chosen = [(name, self.train_split if split == "train" else eval_split, weight)
                  for name, eval_split, weight in zip(self.tfds_names, self.eval_splits, self.weights, strict=True)]
        chosen = [entry for entry in chosen if entry[1]]
        if not chosen:
            return None
        sources = [TfdsSource(name, part, data_dir=self.data_dir or None, fields=(self.text_key,))
                   for name, part, _ in chosen]
        weights = [weight for _, _, weight in chosen]
        identity = f"mixture:{[s.identity for s in sources]}:{weights}"
        return Mixture(sources, weights), identity
