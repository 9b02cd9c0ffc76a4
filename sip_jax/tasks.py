"""SIP's training tasks for the shared trainer (jaxport.trainer.Task): `get_task(config)` by `config.family`.

- `sip_finetune` (configs/sip_finetune.py): few-shot fine-tuning of a SIPFinetuningModel on a TSV of input/output
  pairs, as the original's sip/task_finetune.py:14-81; evaluated, like sip/eval_tools.py:31-45, by greedy
  generation scored on decoded strings: exact-match accuracy, character edit distance and edit distance divided
  by the gold length ("per"), through the trainer's `predict` / `score_predictions` hook. `predict_tsv` writes a
  test set's predictions to a file.
- `sip_pretrain` (configs/sip_pretrain.py): FST-simulation pre-training of a SIPPreTrainingModel on examples
  drawn on the fly by the FST generator (sip_jax.fst), as sip/pretraining.py:97-200 on its fixed files.
"""
import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxport import data, trainer, tree
from jaxport.hf import param_paths
from jaxport.records import write_tsv
from jaxport.seq2seq import cut_at_eos
from jaxport.tasks import (
    ModelTask,
    Seq2SeqTask,
    check_params_fit,
    make_tokenizer,
    target_mask,
    teacher_forced_logits,
    teacher_forced_metrics,
    token_cross_entropy,
)
from sip_jax.configuration import SIPFinetuningConfig, SIPPreTrainingConfig
from sip_jax.modeling import SIPFinetuningModel, SIPPreTrainingModel

log = logging.getLogger(__name__)

# Fields of the fine-tuning config that only decide how the prefix is initialised: taken from the training
# config when loading `init_from` (the README of namednil/sip sets them this way on the Hub model).
PREFIX_INIT_FIELDS = ("num_examples", "prefix_length", "random_selection")
# The original generates up to (longest gold target in the batch, eos included) + 2 tokens (eval_tools.py:38).
EXTRA_NEW_TOKENS = 2
GENERATION_SCORES = ("accuracy", "edit_distance", "per")  # string_scores' three, as eval_accuracy etc.


def get_task(config):
    if config.family == "sip_finetune":
        return FinetuningTask(config)
    if config.family == "sip_pretrain":
        return PretrainingTask(config)
    raise ValueError(f"sip_jax has the families sip_finetune and sip_pretrain, not {config.family!r}")


# ---------------------------------------------------------------------------------------------------------------
# Scores on strings


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over characters (insertions, deletions, substitutions cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def string_scores(prediction: str, gold: str) -> tuple[float, float, float]:
    """(exact match, edit distance, edit distance / max(1, len(gold))): sip/eval_tools.py:41-44."""
    distance = edit_distance(prediction, gold)
    return float(prediction == gold), float(distance), distance / max(1, len(gold))


def decode_predictions(tokenizer, sequences, labels, label_mask) -> tuple[list[str], list[str]]:
    """Generated rows (start token first) and gold labels -> strings. Each prediction keeps as many new
    tokens as the original's generation limit allows: the batch's longest gold (eos included) + 2."""
    sequences, labels, label_mask = np.asarray(sequences), np.asarray(labels), np.asarray(label_mask)
    limit = int(label_mask.sum(axis=1).max()) + EXTRA_NEW_TOKENS
    predictions = [tokenizer.decode(cut_at_eos(row[1:1 + limit], tokenizer.eos_id)) for row in sequences]
    golds = [tokenizer.decode(cut_at_eos(row[mask > 0], tokenizer.eos_id))
             for row, mask in zip(labels, label_mask, strict=True)]
    return predictions, golds


def score_generations(tokenizer, sequences, batch) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Task.score_predictions of generated `sequences` against batch["labels"]: exact match, edit distance and edit
    distance per gold character of each example, and its record (prediction, reference and those scores)."""
    predictions, golds = decode_predictions(tokenizer, sequences, batch["labels"], batch["decoder_attention_mask"])
    per_example = [dict(zip(GENERATION_SCORES, string_scores(p, g), strict=True))
                   for p, g in zip(predictions, golds, strict=True)]
    scores = {name: np.array([s[name] for s in per_example]) for name in GENERATION_SCORES}
    records = [{"prediction": p, "reference": g, **s} for p, g, s in zip(predictions, golds, per_example, strict=True)]
    return scores, records


def _max_new_tokens(config) -> int:
    return config.data.max_target_length + EXTRA_NEW_TOKENS


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning data: TSV files of input/output pairs


class HeaderSkippingSource:
    """A TSV source without its first row when that row is the column names (the original's files start with
    "input<TAB>output" and its reader skips that line: sip/data_loading.py:16-31)."""

    def __init__(self, source, fields):
        self.source = source
        self.offset = int(len(source) > 0 and tuple(source[0][f] for f in fields) == tuple(fields))

    def __len__(self) -> int:
        return len(self.source) - self.offset

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.source[index + self.offset]


@data.data_source("sip_tsv")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuningData(data.Seq2SeqData):
    """The `data` section of configs/sip_finetune.py: TSV files of input/output pairs (see finetuning_source)."""

    train_path: str = ""
    eval_path: str = ""  # "": none, or see num_train
    test_path: str = ""  # "": none, or see num_train
    predictions_path: str = ""  # "": WORKDIR/predictions.tsv
    skip_header: bool = True  # a first line "input<TAB>output" is column names, not an example
    num_train: int = 0  # > 0: few-shot split of train_path, its other rows evaluate (and test)
    split_seed: int = 0
    input_key: str = "input"
    target_key: str = "output"


def tsv_source(path: str, cfg):
    if not path:
        raise ValueError("no TSV path configured")
    fields = (cfg.input_key, cfg.target_key)
    source = data.TsvSource(path, fields=fields)  # names the line of a malformed row
    return HeaderSkippingSource(source, fields) if cfg.skip_header else source


def finetuning_source(cfg, split: str):
    """The examples of `split` ('train', 'eval' or 'test'), or None when none is configured.

    With `num_train > 0` the training TSV is the whole labelled set of a few-shot task (the original's
    RandomSplit, sip/data_loading.py:157-187): a permutation drawn with `split_seed` gives its first `num_train`
    rows to training and the rest to eval and test, unless eval_path / test_path name other files.
    """
    if cfg.source != "sip_tsv":
        raise ValueError(f"sip_finetune reads TSV files: data.source must be 'sip_tsv', got {cfg.source!r}")
    path = cfg.get(f"{split}_path")
    if cfg.num_train > 0 and (split == "train" or not path):
        full = tsv_source(cfg.train_path, cfg)
        if cfg.num_train >= len(full):
            raise ValueError(f"data.num_train={cfg.num_train} leaves nothing to evaluate on: {cfg.train_path} has "
                             f"{len(full)} examples")
        order = np.random.default_rng(cfg.split_seed).permutation(len(full))
        return data.Subset(full, order[:cfg.num_train] if split == "train" else order[cfg.num_train:])
    return tsv_source(path, cfg) if path else None


class FinetuningTask(Seq2SeqTask):
    """SIP fine-tuning: the shared seq2seq task with SIPFinetuningModel, its prefix initialisation, TSV data
    kept in epochs of every example (the last batch of an epoch padded and masked, as the original's loader
    keeps incomplete batches), and generation-based evaluation."""

    def __init__(self, config):
        super().__init__(config, SIPFinetuningModel, SIPFinetuningConfig)
        self.tokenizer = self.preprocess.tokenizer
        self.max_new_tokens = _max_new_tokens(config)

    def create_model(self, config, rngs: nnx.Rngs):
        model = SIPFinetuningModel(self.model_config, dtype=jnp.dtype(config.train.compute_dtype), rngs=rngs)
        # From scratch there are no stored encodings (zeros): this gives a zero prefix rather than NaN.
        model.initialize_prefix(jax.random.key(config.seed))
        return model

    def pretrained_params(self, config):
        if not config.init_from:
            return None
        overrides = {name: config.model[name] for name in PREFIX_INIT_FIELDS if name in config.model}
        model = SIPFinetuningModel.from_pretrained(config.init_from, prefix_init_rng=jax.random.key(config.seed),
                                                   **overrides)
        return check_params_fit(self, config, param_paths(model))

    def train_data(self, config):
        source = finetuning_source(config.data, "train")
        return data.BatchIterator(source, self.preprocess, batch_size=config.train.batch_size, seed=config.seed,
                                  shuffle=True, drop_remainder=False)

    def eval_data(self, config):
        source = finetuning_source(config.data, "eval")
        if source is None:
            return None
        return data.make_eval_iterator(source, self.preprocess, batch_size=config.eval.batch_size)

    # --- evaluation by generation (jaxport.trainer.Task.predict / score_predictions) -------------------------------

    def predict(self, model, batch):
        """Greedy generations [B, 1 + max_new_tokens], the decoder start token first."""
        return model.generate(batch["input_ids"], batch["attention_mask"],
                              max_new_tokens=self.max_new_tokens).sequences

    def score_predictions(self, batch, predictions):
        return score_generations(self.tokenizer, predictions, batch)

    def after_training(self, model, config, workdir) -> dict | None:
        """Predictions for the test examples, written to data.predictions_path (default
        WORKDIR/predictions.tsv) with the scores beside it (test_metrics.json); None without test data."""
        source = finetuning_source(config.data, "test")
        if source is None:
            return None
        out = Path(config.data.predictions_path or Path(workdir) / "predictions.tsv")
        return predict_tsv(self, model, config, source, out)


def predict_tsv(task, model, config, source, out_path) -> dict:
    """Greedy predictions for every example of `source` (jaxport.trainer.predict_dataset), written to `out_path`
    as TSV rows `input, output, prediction` under that header (jaxport.records.write_tsv: any string round-trips
    through read_tsv). The scores (accuracy, edit_distance, per, num_examples) go to test_metrics.json beside it
    and are returned."""
    cfg = config.data
    batches = data.make_eval_iterator(source, task.preprocess, batch_size=config.eval.batch_size, prefetch=0,
                                      process_index=0, process_count=1)
    metrics, records = trainer.predict_dataset(task, model, batches)
    examples = [source[index] for index in range(len(source))]
    rows = [(e[cfg.input_key], e[cfg.target_key], r["prediction"]) for e, r in zip(examples, records, strict=True)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(out_path, [(cfg.input_key, cfg.target_key, "prediction"), *rows])
    metrics["num_examples"] = len(records)
    (out_path.parent / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("test: %s (predictions in %s)", metrics, out_path)
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Pre-training


class PretrainingTask(ModelTask):
    """FST-simulation pre-training: the model reads an FST and a string and writes the FST's output for it."""

    model_class = SIPPreTrainingModel

    def __init__(self, config):
        from sip_jax.fst_data import pretraining_preprocessor

        self.model_config = SIPPreTrainingConfig.from_dict(config.model.to_dict())
        cfg = config.data
        self.tokenizer = make_tokenizer(cfg.tokenizer)
        self.preprocess = pretraining_preprocessor(cfg, self.tokenizer, self.model_config.num_states,
                                                   self.model_config.decoder_start_token_id)
        fst_vocab = self.preprocess.fst_tokenizer.vocab_size
        if fst_vocab > self.model_config.fst_tokenizer_vocab_size:
            raise ValueError(f"the FST tokenizer has {fst_vocab} symbols, more than model.fst_tokenizer_vocab_size="
                             f"{self.model_config.fst_tokenizer_vocab_size}")
        self.max_new_tokens = _max_new_tokens(config)

    def pretrained_params(self, config):
        """From a sip_pretrain folder (all weights), or from a plain T5 folder such as google/byt5-small (the
        paper's start: sip/fst_pretrain.py:90-95), whose weights fill `model/` beside a fresh FST encoder."""
        if not config.init_from:
            return None
        from jaxport.hf import read_config, resolve_folder
        from t5_jax import T5ForConditionalGeneration

        folder = resolve_folder(config.init_from)
        if read_config(folder).get("model_type") == "sip_pretrain":
            model = SIPPreTrainingModel.from_pretrained(folder)
            params = param_paths(model)
        else:
            t5 = T5ForConditionalGeneration.from_pretrained(folder)
            fresh = jax.jit(lambda: nnx.to_pure_dict(nnx.state(self.create_model(config, nnx.Rngs(config.seed)))))()
            params = tree.flatten(fresh)
            params.update({f"model/{path}": value for path, value in param_paths(t5).items()})
        return check_params_fit(self, config, params)

    def train_data(self, config):
        from sip_jax.fst_data import pretraining_source

        return data.make_iterator(pretraining_source(config.data, "train"), self.preprocess,
                                  batch_size=config.train.batch_size, seed=config.seed,
                                  num_workers=config.data.num_workers)

    def eval_data(self, config):
        from sip_jax.fst_data import pretraining_source

        if not config.data.num_eval_examples:
            return None
        return data.make_eval_iterator(pretraining_source(config.data, "eval"), self.preprocess,
                                       batch_size=config.eval.batch_size)

    @staticmethod
    def num_tokens(batch) -> int:
        return int(batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum())

    def loss(self, model, batch, dropout_rng):
        logits = teacher_forced_logits(model, batch, dropout_rng, fst_rep=batch["fst_rep"])
        return token_cross_entropy(logits, batch["labels"], target_mask(batch))

    def eval_metrics(self, model, batch):
        return teacher_forced_metrics(teacher_forced_logits(model, batch, fst_rep=batch["fst_rep"]), batch)

    def predict(self, model, batch):
        """Greedy generations [B, 1 + max_new_tokens], the decoder start token first."""
        return model.generate(batch["input_ids"], batch["attention_mask"], fst_rep=batch["fst_rep"],
                              max_new_tokens=self.max_new_tokens).sequences

    def score_predictions(self, batch, predictions):
        return score_generations(self.tokenizer, predictions, batch)
