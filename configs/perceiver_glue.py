"""Perceiver IO fine-tuned on a GLUE task: a masked-LM checkpoint's encoder, a fresh classifier (one decoded query).

    python -m train --config configs/perceiver_glue.py --workdir runs/perceiver_glue      # tiny, synthetic, CPU
    python -m convert perceiver deepmind/language-perceiver runs/lang_perceiver
    python -m train --config configs/perceiver_glue.py:cola --workdir runs/cola --config.init_from=runs/lang_perceiver

A preset named after a GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) reads TFDS `glue/<task>`
(`tfds build glue/cola --file_format=array_record` first) and follows the paper's fine-tuning recipe: 10 epochs,
LAMB with 200 warmup steps and weight decay 0.01, from the grid batch {16, 32, 64} x learning rate {1e-4, 5e-5,
2e-5, 1e-5} the middle (32, 5e-5: set others with --config.train.batch_size / --config.optimizer.learning_rate and
--config.train.num_steps), cosine decay (the paper names none), inputs of 2048 bytes as the checkpoint reads them.
The GLUE download's TSV files instead: --config.data.source=glue_tsv --config.data.train_path=MNLI/train.tsv
--config.data.eval_path=MNLI/dev_matched.tsv,MNLI/dev_mismatched.tsv (columns named by their header lines).

Metrics, on the whole eval set: Matthews correlation (CoLA), F1 and accuracy (MRPC, QQP), Pearson and Spearman
correlation of the predicted scores (STS-B, trained as a regression), accuracy otherwise; MNLI's matched and
mismatched sets apart (eval_accuracy_matched, eval_accuracy_mismatched). Predictions: WORKDIR/predictions_STEP.jsonl.

`tiny` (the default) fine-tunes a tiny model from scratch on a synthetic sentiment set (sentences whose majority of
sentiment words is positive or negative; `data.source=glue_synthetic`), no download.
"""
import math

import ml_collections

from jaxport.base_config import base
from jaxport.data import data_section
from perceiver_jax.configuration import LANGUAGE_PERCEIVER, PAPER_LAMB, TINY_PERCEIVER
from perceiver_jax.glue import GLUE_TASKS, GlueTfdsData, SyntheticSentimentData

EPOCHS, BATCH_SIZE = 10, 32


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg != "tiny" and arg not in GLUE_TASKS:
        raise ValueError(f"configs/perceiver_glue.py:{arg}: choose tiny or a GLUE task: {sorted(GLUE_TASKS)}")
    c = base()
    c.family = "perceiver_cls"
    c.model = ml_collections.ConfigDict(TINY_PERCEIVER if arg == "tiny" else LANGUAGE_PERCEIVER)
    c.eval.generate = True  # the task's metrics are computed from every eval prediction (Task.corpus_metrics)
    c.optimizer.update(PAPER_LAMB)
    if arg == "tiny":
        c.data = data_section(SyntheticSentimentData, max_length=128)
        c.train.num_steps = 300
        c.train.batch_size = 32
        c.train.log_every = 25
        c.train.eval_every = 300
        c.train.checkpoint_every = 300
        c.eval.batch_size = 64
        c.optimizer.learning_rate = 1e-2  # 2e-2 fell back to the uniform loss for ~150 steps on some seeds
        c.optimizer.warmup_steps = 20
        return c
    c.data = data_section(GlueTfdsData, task=arg, max_length=2048)
    steps_per_epoch = math.ceil(GLUE_TASKS[arg].train_size / BATCH_SIZE)
    c.train.num_steps = EPOCHS * steps_per_epoch
    c.train.batch_size = BATCH_SIZE
    c.train.compute_dtype = "bfloat16"
    c.train.log_every = 50
    c.train.eval_every = steps_per_epoch
    c.train.checkpoint_every = steps_per_epoch
    c.eval.batch_size = 64
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 200
    return c
