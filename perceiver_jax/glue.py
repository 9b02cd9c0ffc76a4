"""GLUE sentence (pair) classification for Perceiver IO: the tasks' texts, labels and metrics, and their sources
(`data.source`):
  glue_tfds        TFDS `glue/<task>`
  glue_tsv         local TSV files (the GLUE download's train.tsv / dev.tsv, header named columns)
  glue_synthetic   a tiny separable sentiment set made on the fly, no download (the tiny default)
"""
import dataclasses

import numpy as np

from jaxport.data import TfdsSource, data_source, first


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
