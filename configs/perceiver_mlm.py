"""Perceiver IO masked-byte pre-training: whole words masked in windows of UTF-8 bytes cut from concatenated documents.

    python -m train --config configs/perceiver_mlm.py --workdir runs/perceiver_mlm          # tiny, CPU, a minute
    python -m train --config configs/perceiver_mlm.py:paper --workdir runs/language_perceiver   # the paper's run

Documents become one stream of Perceiver byte ids (each document ended by [SEP]) cut into windows of
data.sequence_length bytes; in each window 15% of the words (whitespace-delimited, with the space before them) are
chosen anew on every pass over the corpus, 80% of them replaced by [MASK] bytes, 10% by random bytes, 10% left, and
the model predicts the chosen bytes (perceiver_jax.masking). Metrics: loss and masked-byte accuracy over the chosen
bytes.

`tiny` (the default) reads the English text that ships with Python (the topics of its documentation, about 470 KB:
`data.source=lm_python_docs`), no download, windows of 128 bytes, a 0.2M-parameter model. Other text:
`--config.data.source=lm_text --config.data.train_path=FILE` (a document a line) or `lm_jsonl` (a "text" field).

`paper` is the deepmind/language-perceiver run (Jaegle et al., Perceiver IO, ICLR 2022): C4 (70%) and English
Wikipedia (30%) through TFDS (`tfds build c4/en wikipedia/20230601.en --file_format=array_record` first, mixed by
document: `lm_tfds_mixture`), windows of 2048 bytes, the 201M-parameter shape (2048 byte positions of width 768, 256
latents of 1280, one cross-attention, 26 self-attention layers of 8 heads, query/key channels 256, value channels
1280), batch 2048, 500k steps, LAMB at 1.25e-3 with 1k warmup steps, cosine decay, weight decay 0.01, bf16 compute.
"""
import ml_collections

from jaxport.base_config import base
from jaxport.data import data_section
from perceiver_jax.configuration import LANGUAGE_PERCEIVER, PAPER_LAMB, TINY_PERCEIVER
from perceiver_jax.corpus import PythonDocsData, TfdsMixtureData


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in ("tiny", "paper"):
        raise ValueError(f"configs/perceiver_mlm.py:{arg}: choose tiny or paper")
    paper = arg == "paper"
    c = base()
    c.family = "perceiver"
    c.model = ml_collections.ConfigDict(LANGUAGE_PERCEIVER if paper else TINY_PERCEIVER)
    if paper:
        c.data = data_section(TfdsMixtureData, sequence_length=2048, tokenizer="perceiver",
                              cache_dir="~/.cache/jaxport/perceiver", num_eval_windows=4096)
    else:
        c.data = data_section(PythonDocsData, sequence_length=128, tokenizer="perceiver", num_eval_windows=64)

    c.optimizer.update(PAPER_LAMB)
    if paper:
        c.train.num_steps = 500_000
        c.train.batch_size = 2048
        c.train.compute_dtype = "bfloat16"
        c.train.log_every = 100
        c.train.eval_every = 10_000
        c.train.checkpoint_every = 5_000
        c.eval.batch_size = 256
        c.optimizer.learning_rate = 1.25e-3
        c.optimizer.warmup_steps = 1000
    else:
        c.train.num_steps = 300
        c.train.batch_size = 16
        c.train.log_every = 25
        c.train.eval_every = 300
        c.train.checkpoint_every = 300
        c.eval.batch_size = 16
        c.optimizer.learning_rate = 1e-2
        c.optimizer.warmup_steps = 30
    return c
