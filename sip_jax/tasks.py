"""SIP's training tasks for the shared trainer (jaxport.trainer.Task): `get_task(config)` by `config.family`.

- `sip_finetune` (configs/sip_finetune.py): few-shot fine-tuning of a SIPFinetuningModel on a TSV of input/output
  pairs, as the original's sip/task_finetune.py:14-81; evaluated, like sip/eval_tools.py:31-45, by greedy
  generation scored on decoded strings: exact-match accuracy, character edit distance and edit distance divided
  by the gold length ("per"). `predict_tsv` writes a test set's predictions to a file.
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

from jaxport import data, tree
from jaxport.tasks import (Seq2SeqTask, check_params_fit, make_tokenizer, teacher_forced_metrics,
                            token_cross_entropy)
from sip_jax.configuration import SIPFinetuningConfig, SIPPreTrainingConfig
from sip_jax.modeling import SIPFinetuningModel, SIPPreTrainingModel

log = logging.getLogger(__name__)

# Fields of the fine-tuning config that only decide how the prefix is initialised: taken from the training
# config when loading `init_from` (the README of namednil/sip sets them this way on the Hub model).
PREFIX_INIT_FIELDS = ("num_examples", "prefix_length", "random_selection")
# The original generates up to (longest gold target in the batch, eos included) + 2 tokens (eval_tools.py:38).
EXTRA_NEW_TOKENS = 2


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


def _cut_at_eos(ids, eos_id) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[:ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


def decode_predictions(tokenizer, sequences, labels, label_mask) -> tuple[list[str], list[str]]:
    """Generated rows (start token first) and gold labels -> strings. Each prediction keeps as many new
    tokens as the original's generation limit allows: the batch's longest gold (eos included) + 2."""
    sequences, labels, label_mask = np.asarray(sequences), np.asarray(labels), np.asarray(label_mask)
    limit = int(label_mask.sum(axis=1).max()) + EXTRA_NEW_TOKENS
    predictions = [tokenizer.decode(_cut_at_eos(row[1:1 + limit], tokenizer.eos_id)) for row in sequences]
    golds = [tokenizer.decode(_cut_at_eos(row[mask > 0], tokenizer.eos_id)) for row, mask in zip(labels, label_mask)]
    return predictions, golds


def _replicated(x: jax.Array) -> jax.Array:
    """Gather a batch-sharded array before a host callback (spares XLA an 'involuntary rematerialization')."""
    mesh = jax.typeof(x).sharding.mesh
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def generation_metrics(tokenizer, sequences, batch) -> dict:
    """Exact match, edit distance and per-gold-length edit distance of generated `sequences` against
    batch["labels"], as (sum, count) pairs; strings are decoded on the host through a callback."""
    labels, mask = batch["labels"], batch["decoder_attention_mask"]
    rows = batch.get(data.EXAMPLE_MASK, jnp.ones(labels.shape[:1], jnp.int32)).astype(jnp.float32)

    def score(sequences, labels, mask):
        predictions, golds = decode_predictions(tokenizer, sequences, labels, mask)
        scores = np.array([string_scores(p, g) for p, g in zip(predictions, golds)], np.float32)
        return scores.reshape(len(golds), 3)

    scores = jax.pure_callback(score, jax.ShapeDtypeStruct((labels.shape[0], 3), jnp.float32),
                               _replicated(sequences), _replicated(labels), _replicated(mask),
                               vmap_method="sequential")
    total = jnp.sum(rows)
    sums = jnp.sum(scores * rows[:, None], axis=0)
    return {"accuracy": (sums[0], total), "edit_distance": (sums[1], total), "per": (sums[2], total)}


def _masked_loss(logits, batch):
    """Token cross-entropy; rows marked padding by the iterator (EXAMPLE_MASK) count for nothing."""
    mask = batch["decoder_attention_mask"]
    if data.EXAMPLE_MASK in batch:
        mask = mask * batch[data.EXAMPLE_MASK].astype(mask.dtype)[:, None]
    return token_cross_entropy(logits, batch["labels"], mask)


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
        self.eval_generate = bool(config.eval.get("generate", True))
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
        return check_params_fit(self, config, tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))))

    def train_data(self, config):
        source = finetuning_source(config.data, "train")
        return data.BatchIterator(source, self.preprocess, batch_size=config.train.batch_size, seed=config.seed,
                                  shuffle=True, drop_remainder=False)

    def eval_data(self, config):
        source = finetuning_source(config.data, "eval")
        if source is None:
            return None
        return data.make_eval_iterator(source, self.preprocess, batch_size=config.eval.batch_size)

    def loss(self, model, batch, dropout_rng):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"],
                       decoder_attention_mask=batch["decoder_attention_mask"], dropout_rng=dropout_rng).logits
        return _masked_loss(logits, batch)

    @staticmethod
    def num_tokens(batch) -> int:
        rows = batch.get(data.EXAMPLE_MASK, np.ones(len(batch["input_ids"]), bool))[:, None]
        return int((batch["attention_mask"] * rows).sum() + (batch["decoder_attention_mask"] * rows).sum())

    def generate(self, model, batch, max_new_tokens: int):
        return model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens).sequences

    def eval_metrics(self, model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"],
                       decoder_attention_mask=batch["decoder_attention_mask"]).logits
        metrics = teacher_forced_metrics(logits, batch)
        if self.eval_generate:
            sequences = self.generate(model, batch, self.max_new_tokens)
            metrics.update(generation_metrics(self.tokenizer, sequences, batch))
        return metrics

    def after_training(self, model, config, workdir) -> dict | None:
        """Predictions for the test examples, written to data.predictions_path (default
        WORKDIR/predictions.tsv) with the scores beside it (test_metrics.json); None without test data."""
        source = finetuning_source(config.data, "test")
        if source is None:
            return None
        out = Path(config.data.predictions_path or Path(workdir) / "predictions.tsv")
        return predict_tsv(self, model, config, source, out)


def _one_field(text: str) -> str:
    """A generated string as one TSV field: tabs and line breaks (a model may write any byte) escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def predict_tsv(task, model, config, source, out_path) -> dict:
    """Greedy predictions for every example of `source`, written to `out_path` as TSV rows `input, output,
    prediction` under that header (a prediction's tabs, line breaks and backslashes escaped with a backslash).
    The scores (accuracy, edit_distance, per, num_examples) go to test_metrics.json beside it and are returned."""
    cfg = config.data
    max_new_tokens = _max_new_tokens(config)
    graphdef, state = nnx.split(model)

    @jax.jit
    def generate(state, batch):
        return task.generate(nnx.merge(graphdef, state), batch, max_new_tokens)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    totals = np.zeros(3)
    count = 0
    iterator = data.make_eval_iterator(source, task.preprocess, batch_size=config.eval.batch_size, prefetch=0,
                                       process_index=0, process_count=1)
    with open(out_path, "w", encoding="utf-8") as file:
        file.write(f"{cfg.input_key}\t{cfg.target_key}\tprediction\n")
        for batch in iterator:
            real = batch.pop(data.EXAMPLE_MASK)
            sequences = generate(state, {k: jnp.asarray(v) for k, v in batch.items()})
            predictions, golds = decode_predictions(task.tokenizer, sequences, batch["labels"],
                                                    batch["decoder_attention_mask"])
            for prediction, gold, is_real in zip(predictions, golds, real):
                if not is_real:  # padding of the last batch
                    continue
                example = source[count]
                file.write(f"{example[cfg.input_key]}\t{example[cfg.target_key]}\t{_one_field(prediction)}\n")
                totals += string_scores(prediction, gold)
                count += 1
    metrics = {"accuracy": totals[0] / max(count, 1), "edit_distance": totals[1] / max(count, 1),
               "per": totals[2] / max(count, 1), "num_examples": count}
    (out_path.parent / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("test: %s (predictions in %s)", metrics, out_path)
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Pre-training


class PretrainingTask:
    """FST-simulation pre-training: the model reads an FST and a string and writes the FST's output for it."""

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
        self.eval_generate = bool(config.eval.get("generate", True))
        self.max_new_tokens = _max_new_tokens(config)

    def create_model(self, config, rngs: nnx.Rngs):
        return SIPPreTrainingModel(self.model_config, dtype=jnp.dtype(config.train.compute_dtype), rngs=rngs)

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
            params = tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        else:
            t5 = T5ForConditionalGeneration.from_pretrained(folder)
            fresh = jax.jit(lambda: nnx.to_pure_dict(nnx.state(self.create_model(config, nnx.Rngs(config.seed)))))()
            params = tree.flatten(fresh)
            params.update({f"model/{path}": value
                           for path, value in tree.flatten(nnx.to_pure_dict(nnx.state(t5, nnx.Param))).items()})
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

    def _logits(self, model, batch, dropout_rng=None):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"],
                     decoder_attention_mask=batch["decoder_attention_mask"], fst_rep=batch["fst_rep"],
                     dropout_rng=dropout_rng).logits

    def loss(self, model, batch, dropout_rng):
        return token_cross_entropy(self._logits(model, batch, dropout_rng), batch["labels"],
                                   batch["decoder_attention_mask"])

    def generate(self, model, batch, max_new_tokens: int):
        return model.generate(batch["input_ids"], batch["attention_mask"], fst_rep=batch["fst_rep"],
                              max_new_tokens=max_new_tokens).sequences

    def eval_metrics(self, model, batch):
        metrics = teacher_forced_metrics(self._logits(model, batch), batch)
        if self.eval_generate:
            metrics.update(generation_metrics(self.tokenizer, self.generate(model, batch, self.max_new_tokens), batch))
        return metrics
