"""Perceiver IO's data: the masked-language corpus (jaxport.data's language-model sections, read with Perceiver's byte
ids) and GLUE sentence (pair) classification.

Sources of its own (`data.source`):
  lm_python_docs   English text that ships with Python (its documentation's topics): the tiny default, no download
  lm_tfds_mixture  several TFDS corpora mixed by document in given proportions (C4 70%, Wikipedia 30% in the paper)
  glue_tfds        a GLUE task through TFDS `glue/<task>`
  glue_tsv         a GLUE task from local TSV files (the GLUE download's train.tsv / dev.tsv, header named columns)
  glue_synthetic   a tiny separable sentence classification set made on the fly, no download
"""
import dataclasses
import math
import sys

import numpy as np

from jaxport.data import LanguageModelData, TfdsSource, data_source, first
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


# ------------------------------------------------------------------------------------------------ GLUE

@dataclasses.dataclass(frozen=True)
class GlueTask:
    text_features: tuple[str, ...]  # TFDS glue/<task> features holding the text(s)
    labels: tuple[str, ...] | None  # label names in TFDS's order (the ids); None: regression (a score)
    eval_splits: tuple[str, ...]  # TFDS splits evaluated, each an eval set
    train_size: int  # examples in TFDS's train split (epochs -> steps)
    tsv_texts: tuple[str, ...]  # the GLUE download's TSV columns holding the text(s)...
    tsv_label: str  # ...and the label
    metrics: tuple[str, ...]  # the task's own metrics, first the one GLUE reports


GLUE_TASKS = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), ("validation",), 8551,
                     ("sentence",), "label", ("matthews_correlation", "accuracy")),
    "sst2": GlueTask(("sentence",), ("negative", "positive"), ("validation",), 67349,
                     ("sentence",), "label", ("accuracy",)),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("validation",), 3668,
                     ("#1 String", "#2 String"), "Quality", ("f1", "accuracy")),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate"), ("validation",), 363846,
                    ("question1", "question2"), "is_duplicate", ("f1", "accuracy")),
    "stsb": GlueTask(("sentence1", "sentence2"), None, ("validation",), 5749,
                     ("sentence1", "sentence2"), "score", ("pearson", "spearman")),
    "mnli": GlueTask(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                     ("validation_matched", "validation_mismatched"), 392702,
                     ("sentence1", "sentence2"), "gold_label", ("accuracy",)),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment"), ("validation",), 104743,
                     ("question", "sentence"), "label", ("accuracy",)),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment"), ("validation",), 2490,
                    ("sentence1", "sentence2"), "label", ("accuracy",)),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment"), ("validation",), 635,
                     ("sentence1", "sentence2"), "label", ("accuracy",)),
}


def glue_task(name: str) -> GlueTask:
    if name not in GLUE_TASKS:
        raise ValueError(f"data.task={name!r} is not a GLUE task; choose one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def label_id(task: GlueTask, value, where: str):
    """A label as the model is trained on it: a float score for regression; for classification the id of a label
    given as an id (int or digits) or a name. Anything outside the task's labels is an error naming it."""
    if task.labels is None:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {value!r} is not a number (a regression score)") from None
    if isinstance(value, str) and value in task.labels:
        return task.labels.index(value)
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = None
    if index is None or index != float(value) or not 0 <= index < len(task.labels):
        raise ValueError(f"{where}: label {value!r} is outside the task's {len(task.labels)} labels "
                         f"(ids 0..{len(task.labels) - 1}: {', '.join(task.labels)})")
    return index


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassificationData:
    """Keys of every GLUE source. An example is `{"texts": [text, (second text)], "label": id or score,
    "eval_set": index into the task's eval sets}`."""

    task: str = "sst2"  # the GLUE task: its texts, labels and metrics (GLUE_TASKS)
    max_length: int = 2048  # bytes with [CLS] and [SEP]s; at most the model's max_position_embeddings
    truncate: bool = False  # cut longer texts (the longer of a pair first); False: they are errors
    num_eval_examples: int = 0  # evaluate on the first N examples of each eval set; 0: all

    def glue(self) -> GlueTask:
        return glue_task(self.task)

    def eval_set_names(self) -> tuple[str, ...]:
        """Names of the eval sets, which suffix their metrics when there are several (MNLI's matched/mismatched)."""
        raise NotImplementedError

    def make(self, split: str):
        """'train': the training examples; otherwise a list of the examples of every eval set, or None."""
        raise NotImplementedError


class Normalized:
    """A source read lazily as GLUE examples of one eval set (training sets are large: QQP and MNLI hold about
    400k)."""

    def __init__(self, source, task: GlueTask, texts, label, where: str, eval_set: int = 0):
        self.source, self.task, self.texts, self.label, self.where = source, task, texts, label, where
        self.eval_set = eval_set

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        row = self.source[index]
        return {"texts": [row[key] for key in self.texts],
                "label": label_id(self.task, row[self.label], f"{self.where}, example {index}"),
                "eval_set": self.eval_set}


def eval_examples(sets: list[Normalized]) -> list[dict]:
    """Every example of the eval sets, set after set (evaluation sets are small enough to hold)."""
    return [normalized[i] for normalized in sets for i in range(len(normalized))]


@data_source("glue_tfds")
@dataclasses.dataclass(frozen=True, kw_only=True)
class GlueTfdsData(ClassificationData):
    """TFDS `glue/<task>` prepared as array_record (`tfds build glue/cola --file_format=array_record`)."""

    data_dir: str = ""  # "": TFDS's default
    train_split: str = "train"

    def eval_set_names(self):
        return tuple(split.removeprefix("validation_") for split in self.glue().eval_splits)

    def _source(self, split: str):
        task = self.glue()
        return TfdsSource(f"glue/{self.task}", split, data_dir=self.data_dir or None,
                          fields=(*task.text_features, "label"))

    def make(self, split: str):
        task = self.glue()
        if split == "train":
            return Normalized(self._source(self.train_split), task, task.text_features, "label",
                              f"glue/{self.task} {self.train_split}")
        return eval_examples([Normalized(first(self._source(name), self.num_eval_examples), task, task.text_features,
                                         "label", f"glue/{self.task} {name}", index)
                              for index, name in enumerate(task.eval_splits)])


class HeaderTsv:
    """Rows of a TSV file with a header line, as {column: value}. Quotes are text, as in GLUE's files."""

    def __init__(self, path: str, columns: tuple[str, ...]):
        with open(path, encoding="utf-8") as file:
            lines = [line.rstrip("\r\n") for line in file if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty")
        header = lines[0].split("\t")
        missing = [column for column in columns if column not in header]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} in its header {header}")
        self.path, self.rows = path, []
        positions = [header.index(column) for column in columns]
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) <= max(positions):
                raise ValueError(f"{path}, line {number}: {len(fields)} fields, the header has {len(header)}")
            self.rows.append({column: fields[p] for column, p in zip(columns, positions, strict=True)})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


@data_source("glue_tsv")
@dataclasses.dataclass(frozen=True, kw_only=True)
class GlueTsvData(ClassificationData):
    """TSV files with a header line (GLUE's own train.tsv / dev.tsv; CoLA's, which have none, need one added:
    `source, label, original label, sentence`). Several eval files, comma-separated, are several eval sets (MNLI's
    dev_matched.tsv,dev_mismatched.tsv)."""

    train_path: str = ""
    eval_path: str = ""  # "": no evaluation
    text_columns: tuple = ()  # () : the task's columns in GLUE's files (GLUE_TASKS' tsv_texts)
    label_column: str = ""  # "": the task's (tsv_label)

    def _columns(self):
        task = self.glue()
        return tuple(self.text_columns) or task.tsv_texts, self.label_column or task.tsv_label

    def eval_set_names(self):
        return tuple(path.rsplit("/", 1)[-1].removesuffix(".tsv") for path in self.eval_path.split(",") if path)

    def make(self, split: str):
        task, (texts, label) = self.glue(), self._columns()
        if split == "train":
            if not self.train_path:
                raise ValueError("data.train_path is not set")
            return Normalized(HeaderTsv(self.train_path, (*texts, label)), task, texts, label, self.train_path)
        paths = [path for path in self.eval_path.split(",") if path]
        return eval_examples([Normalized(first(HeaderTsv(path, (*texts, label)), self.num_eval_examples), task,
                                         texts, label, path, index) for index, path in enumerate(paths)]) or None


# Words of the synthetic sentiment set.
POSITIVE = ("good", "great", "fine", "lovely", "superb", "happy", "bright", "warm")
NEGATIVE = ("bad", "awful", "poor", "dull", "grim", "sad", "cold", "weak")
NEUTRAL = ("the", "film", "was", "a", "story", "and", "its", "cast", "plot", "with", "of", "seemed")


@data_source("glue_synthetic")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticSentimentData(ClassificationData):
    """Sentences of 4-12 words, most of them neutral, with 1, 3 or 5 sentiment words; the label (SST-2's: negative,
    positive) is the majority's. Example i is drawn from a generator seeded by (seed, i): endless and resumable."""

    seed: int = 0
    num_eval_examples: int = 256

    def eval_set_names(self):
        return ("validation",)

    def example(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        sentiment = rng.choice([1, 3, 5])
        positive = rng.integers(0, sentiment + 1)
        words = ([str(rng.choice(POSITIVE)) for _ in range(positive)]
                 + [str(rng.choice(NEGATIVE)) for _ in range(sentiment - positive)]
                 + [str(rng.choice(NEUTRAL)) for _ in range(rng.integers(max(0, 4 - sentiment), 8))])
        rng.shuffle(words)
        return {"texts": [" ".join(words) + "."], "label": int(2 * positive > sentiment), "eval_set": 0}

    def make(self, split: str):
        if split == "train":
            return SyntheticStream(self)
        offset = 1_000_003  # a stream training is unlikely to repeat
        return [dataclasses.replace(self, seed=self.seed + offset).example(i) for i in range(self.num_eval_examples)]


class SyntheticStream:
    """An endless source (no len): the batch iterator reads it in index order."""

    def __init__(self, data: SyntheticSentimentData):
        self.data = data

    def __getitem__(self, index: int) -> dict:
        return self.data.example(index)
