"""The `data` section of a training config, typed by `data.source`: each source is a dataclass of its own keys.

    c.data = data_section(SyntheticData, task="reverse", max_input_length=16, max_target_length=16)
    c.data = data_section(JsonlData, train_path="train.jsonl", input_key="article", target_key="abstract", ...)

    c.data = data_section(LanguageModelJsonlData, train_path="owt/*.jsonl", sequence_length=512, tokenizer="gpt2")

A config lists only what its source uses; `--config.data.source=tsv` swaps the section for the TSV source's keys
(those both sources have keep their values). A family declares its own sources next to its code, as subclasses of
Seq2SeqData registered with `@data_source("name")` (sip_jax: "fst", "sip_tsv").
"""
import dataclasses
import functools
import glob
import os

from jaxport import config as config_lib
from jaxport.data.corpus import TokenWindows, token_stream
from jaxport.data.sources import Concatenation, JsonlSource, TextLineSource, TfdsSource, TsvSource, first
from jaxport.data.synthetic import SyntheticTask
from jaxport.data.tokenizers import load_tokenizer

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageModelData:
    """Keys of every language-model source: documents -> token stream -> windows (jaxport.data.corpus)."""

    sequence_length: int  # tokens a model reads per example
    tokenizer: str = "bytes"  # ByT5's bytes, or a transformers tokenizer (folder or hub id, e.g. "gpt2")
    text_key: str = "text"  # the documents' field holding their text
    # Where token streams are kept (memory-mapped, built once per documents and tokenizer); "": built in memory at
    # every start, fine for small files. "~" is expanded.
    cache_dir: str = ""
    num_eval_windows: int = 0  # evaluate on the first N windows of the eval documents; 0: all

    def documents(self, split: str):
        """(the documents of `split`, what identifies them in a cache), or None when the split has none."""
        raise NotImplementedError

    def make(self, split: str, tokenizer=None, overlap: int = 0):
        """The windows of `split` ('train' or 'eval'; None: no eval data): `{"tokens": int32[sequence_length +
        overlap]}`, one every sequence_length tokens. overlap=1 suits next-token prediction (each window's last token
        starts the next). tokenizer: an object of jaxport.data.tokenizers' interface; None loads data.tokenizer."""
        found = self.documents(split)
        if found is None:
            return None
        documents, identity = found
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.tokenizer)
        tokens = token_stream(documents, tokenizer, text_key=self.text_key,
                              cache_dir=os.path.expanduser(self.cache_dir) if self.cache_dir else None,
                              source_id=identity)
        windows = TokenWindows(tokens, self.sequence_length + overlap, self.sequence_length)
        return windows if split == "train" else first(windows, self.num_eval_windows)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LanguageModelFiles(LanguageModelData):
    train_path: str = ""  # a file or a glob pattern (files read in sorted order)
    eval_path: str = ""  # "": no evaluation

    def documents(self, split: str):
        pattern = self.train_path if split == "train" else self.eval_path
        if not pattern:
            if split == "train":
                raise ValueError("data.train_path is not set")
            return None
        paths = sorted(glob.glob(os.path.expanduser(pattern))) or ([pattern] if os.path.exists(pattern) else [])
        if not paths:
            raise FileNotFoundError(f"data.{split}_path={pattern!r} matches no file")
        identity = [f"{os.path.abspath(p)}:{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" for p in paths]
        return Concatenation(self.read(path) for path in paths), f"{type(self).__name__}:{identity}"


@data_source("lm_text")
@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageModelTextData(_LanguageModelFiles):
    """Text files, one document per non-blank line."""

    def read(self, path: str):
        return TextLineSource(path, field=self.text_key)


@data_source("lm_jsonl")
@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageModelJsonlData(_LanguageModelFiles):
    """Files of one JSON object a line, each a document with its text under text_key."""

    def read(self, path: str):
        return JsonlSource(path, fields=(self.text_key,))


@data_source("lm_tfds")
@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageModelTfdsData(LanguageModelData):
    """A TensorFlow Datasets text corpus (openwebtext, c4/en, wikipedia/...) prepared as array_record beforehand
    (`tfds build NAME --file_format=array_record`), read through its builder (jaxport.data.TfdsSource). Splits take
    TFDS's slicing, so a corpus with one split lends its evaluation documents: train[:-1000] and train[-1000:]."""

    tfds_name: str = ""  # e.g. "openwebtext"
    data_dir: str = ""  # "": TFDS's default
    train_split: str = "train"
    eval_split: str = ""  # "": no evaluation

    def documents(self, split: str):
        name = self.train_split if split == "train" else self.eval_split
        if not name:
            return None
        if not self.tfds_name:
            raise ValueError("data.tfds_name is not set")
        source = TfdsSource(self.tfds_name, name, data_dir=self.data_dir or None, fields=(self.text_key,))
        return source, source.identity


def make_source(data_config, split: str):
    """The examples of `split` ('train' or 'eval') that a config's data section describes; None: no eval data."""
    return config_lib.section_object("data", data_config).make(split)
