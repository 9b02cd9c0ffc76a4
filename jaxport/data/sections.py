"""The `data` section of a training config, typed by `data.source`: each source is a dataclass of its own keys.

    c.data = data_section(SyntheticData, task="reverse", max_input_length=16, max_target_length=16)
    c.data = data_section(JsonlData, train_path="train.jsonl", input_key="article", target_key="abstract", ...)

A config lists only what its source uses; `--config.data.source=tsv` swaps the section for the TSV source's keys
(those both sources have keep their values). A family declares its own sources next to its code, as subclasses of
Seq2SeqData registered with `@data_source("name")` (sip_jax: "fst", "sip_tsv").
"""
import dataclasses
import functools

from jaxport import config as config_lib
from jaxport.data.sources import JsonlSource, TfdsSource, TsvSource, first
from jaxport.data.synthetic import SyntheticTask

data_source = functools.partial(config_lib.section_kind, "data", "source")
data_section = config_lib.typed_section

# Synthetic evaluation examples come from the stream of seed + this: strings training is unlikely to repeat.
EVAL_SEED_OFFSET = 1_000_003


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seq2SeqData:
    """Keys of every seq2seq source: how an example becomes arrays (jaxport.data.Seq2SeqPreprocessor)."""

    max_input_length: int
    max_target_length: int
    tokenizer: str = "bytes"  # ByT5's bytes, or a transformers tokenizer (folder or hub id)
    input_key: str = "inputs"  # the example's fields read as input and target text
    target_key: str = "targets"
    truncate: bool = False  # cut texts longer than their limit; False: they are errors

    def make(self, split: str):
        """The examples of `split` ('train' or 'eval'; None: no eval data), for make_source."""
        raise NotImplementedError(f"data.source {type(self).__name__} is read by its family's task")


@data_source("synthetic")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticData(Seq2SeqData):
    """Strings made on the fly (jaxport.data.SyntheticTask): endless training, a fixed evaluation set."""

    task: str = "reverse"  # copy | reverse | sort
    alphabet: str = "abcdefghij"
    min_length: int = 1
    max_length: int = 16
    seed: int = 0
    num_eval_examples: int = 256

    def make(self, split: str):
        seed = self.seed if split == "train" else self.seed + EVAL_SEED_OFFSET
        task = SyntheticTask(self.task, seed=seed, alphabet=self.alphabet, min_length=self.min_length,
                             max_length=self.max_length)
        return task if split == "train" else [task[i] for i in range(self.num_eval_examples)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _FileData(Seq2SeqData):
    train_path: str = ""
    eval_path: str = ""  # "": no evaluation
    num_eval_examples: int = 0  # evaluate on the first N examples of eval_path; 0: all

    def make(self, split: str):
        if split == "train":
            if not self.train_path:
                raise ValueError("data.train_path is not set")
            return self.read(self.train_path)
        return first(self.read(self.eval_path), self.num_eval_examples) if self.eval_path else None


@data_source("tsv")
@dataclasses.dataclass(frozen=True, kw_only=True)
class TsvData(_FileData):
    """Files of `input<TAB>target` lines."""

    def read(self, path: str):
        return TsvSource(path, fields=(self.input_key, self.target_key))


@data_source("jsonl")
@dataclasses.dataclass(frozen=True, kw_only=True)
class JsonlData(_FileData):
    """Files of one JSON object a line, with input_key and target_key among its fields."""

    def read(self, path: str):
        return JsonlSource(path, fields=(self.input_key, self.target_key))


@data_source("tfds")
@dataclasses.dataclass(frozen=True, kw_only=True)
class TfdsData(Seq2SeqData):
    """A TensorFlow Datasets dataset prepared as array_record (jaxport.data.TfdsSource)."""

    tfds_name: str = ""  # e.g. "scientific_papers/arxiv"
    data_dir: str = ""  # "": TFDS's default
    train_split: str = "train"
    eval_split: str = "validation"  # "": no evaluation
    num_eval_examples: int = 0  # evaluate on the first N examples of eval_split; 0: all

    def make(self, split: str):
        name = self.train_split if split == "train" else self.eval_split
        if not name:
            return None
        if not self.tfds_name:
            raise ValueError("data.tfds_name is not set")
        source = TfdsSource(self.tfds_name, name, data_dir=self.data_dir or None)
        return source if split == "train" else first(source, self.num_eval_examples)


def make_source(data_config, split: str):
    """The examples of `split` ('train' or 'eval') that a config's data section describes; None: no eval data."""
    return config_lib.section_object("data", data_config).make(split)
