"""Perceiver IO's training tasks (jaxport.trainer.Task): masked-byte pre-training and GLUE fine-tuning.

- family "perceiver" (PerceiverForMaskedLM, configs/perceiver_mlm.py): documents concatenated into one stream of
  Perceiver byte ids, each ended by [SEP], cut into windows of data.sequence_length, whole words masked
  (perceiver_jax.masking); cross-entropy over the chosen bytes, masked-byte accuracy.
- family "perceiver_cls" (PerceiverForSequenceClassification, configs/perceiver_glue.py): a GLUE task's
  texts as `[CLS] A [SEP] (B [SEP])`; cross-entropy, or squared error for STS-B's scores; the task's own metrics on
  the whole eval set (Matthews correlation, F1, Pearson/Spearman, accuracy; each of MNLI's eval sets apart).
  `init_from` a masked-LM (or classification) checkpoint takes its encoder; the classifier starts fresh.
"""
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxport import config as config_lib
from jaxport.hf import param_paths, read_config, resolve_folder
from jaxport.tasks import ModelTask, check_params_fit, eval_batches, real_rows, token_cross_entropy, train_batches
from perceiver_jax.configuration import PerceiverConfig
from perceiver_jax.corpus import CorpusTokenizer
from perceiver_jax.masking import MaskedBytes
from perceiver_jax.modeling import PerceiverForMaskedLM, PerceiverForSequenceClassification
from perceiver_jax.tokenization import PerceiverTokenizer

ENCODER_PREFIX = "perceiver/"  # parameters of the byte embeddings, latents and encoder...
DECODER_PREFIX = "perceiver/decoder/"  # ...but not the decoder, which each head has its own


def is_encoder(path: str) -> bool:
    return path.startswith(ENCODER_PREFIX) and not path.startswith(DECODER_PREFIX)


def data_section(config):
    """The config's data section as its source's object."""
    return config_lib.section_object("data", config.data)


class _PerceiverTask(ModelTask):
    def __init__(self, config, model_config: PerceiverConfig):
        self.model_config = model_config
        if config.data.get("tokenizer", "perceiver") != "perceiver":
            raise ValueError(f"data.tokenizer={config.data.tokenizer!r}: Perceiver IO reads its own byte ids; set "
                             "it to 'perceiver'")

    @staticmethod
    def num_tokens(batch) -> int:
        return int(np.asarray(batch["attention_mask"]).sum())


class MaskedLanguageModelTask(_PerceiverTask):
    model_class = PerceiverForMaskedLM

    def __init__(self, config):
        super().__init__(config, PerceiverConfig.from_dict(config.model.to_dict()))
        length = config.data.sequence_length
        if length > self.model_config.max_position_embeddings:
            raise ValueError(f"data.sequence_length={length} is more than the model's max_position_embeddings="
                             f"{self.model_config.max_position_embeddings}")
        self.mask = MaskedBytes(seed=config.seed, rate=config.data.get("mask_rate", 0.15))

    @staticmethod
    def windows(config, split: str):
        """The corpus' windows of `split` in Perceiver's byte ids, or None (no eval data)."""
        return data_section(config).make(split, tokenizer=CorpusTokenizer())

    def train_data(self, config):
        return train_batches(config, self.windows(config, "train"), self.mask,
                             num_workers=config.data.get("num_workers", 0))

    def eval_data(self, config):
        return eval_batches(config, self.windows(config, "eval"), self.mask)

    @staticmethod
    def logits(model, batch, dropout_rng=None):
        return model(inputs=batch["inputs"], attention_mask=batch["attention_mask"], dropout_rng=dropout_rng).logits

    @staticmethod
    def weights(batch) -> jnp.ndarray:
        """float32 [B, L]: the chosen bytes of the real examples."""
        return batch["label_mask"].astype(jnp.float32) * real_rows(batch)[:, None]

    def loss(self, model, batch, dropout_rng):
        return token_cross_entropy(self.logits(model, batch, dropout_rng), batch["labels"], self.weights(batch))

    def eval_metrics(self, model, batch):
        logits, weights = self.logits(model, batch), self.weights(batch)
        correct = (jnp.argmax(logits, -1) == batch["labels"]) * weights
        return {"loss": token_cross_entropy(logits, batch["labels"], weights),
                "masked_accuracy": (jnp.sum(correct), jnp.sum(weights))}


# ------------------------------------------------------------------------------------------------ classification

class GlueExample:
    """A GLUE example -> `inputs` and `attention_mask` [max_length] (`[CLS] A [SEP] (B [SEP])`, padded with [PAD]),
    `labels` (int32 id, or float32 score), `eval_set`. Longer texts are an error unless `truncate`."""

    def __init__(self, max_length: int, truncate: bool, regression: bool):
        self.tokenizer = PerceiverTokenizer(model_max_length=max_length)
        self.max_length, self.truncate, self.regression = max_length, truncate, regression

    def __call__(self, example: dict) -> dict[str, np.ndarray]:
        ids = self.tokenizer.encode(*example["texts"], truncation=self.truncate, max_length=self.max_length)
        if len(ids) > self.max_length:
            texts = "the texts take" if len(example["texts"]) > 1 else "the text takes"
            raise ValueError(f"{texts} {len(ids)} bytes with [CLS] and [SEP], more than data.max_length="
                             f"{self.max_length} (raise it, or set data.truncate=True)")
        inputs = np.full(self.max_length, self.tokenizer.pad_token_id, np.int32)
        inputs[:len(ids)] = ids
        label = np.float32(example["label"]) if self.regression else np.int32(example["label"])
        return {"inputs": inputs, "attention_mask": (np.arange(self.max_length) < len(ids)).astype(np.int32),
                "labels": label, "eval_set": np.int32(example["eval_set"])}


def matthews_correlation(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Binary Matthews correlation coefficient; 0 when a row or column of the confusion matrix is empty."""
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    tp = np.sum((predictions == 1) & (labels == 1))
    wrong = np.sum(predictions != labels)
    return float(2 * tp / (2 * tp + wrong)) if tp or wrong else 0.0


def correlation(kind: str):
    """Pearson or Spearman correlation of predicted and true scores (scipy's, a dependency of jax); 0 for a constant
    prediction."""
    def compute(labels: np.ndarray, predictions: np.ndarray) -> float:
        import scipy.stats

        if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return 0.0
        return float(getattr(scipy.stats, f"{kind}r")(labels, predictions)[0])
    return compute


METRICS = {
    "accuracy": lambda labels, predictions: float(np.mean(labels == predictions)),
    "matthews_correlation": matthews_correlation,
    "f1": f1,
    "pearson": correlation("pearson"),
    "spearman": correlation("spearman"),
}


class ClassificationTask(_PerceiverTask):
    model_class = PerceiverForSequenceClassification

    def __init__(self, config):
        self.section = section = data_section(config)
        self.glue = section.glue()
        self.eval_sets = section.eval_set_names()
        labels = self.glue.labels or ("score",)
        model = {**config.model.to_dict(), "id2label": dict(enumerate(labels)),
                 "problem_type": "regression" if self.glue.labels is None else "single_label_classification"}
        super().__init__(config, PerceiverConfig.from_dict(model))
        if section.max_length > self.model_config.max_position_embeddings:
            raise ValueError(f"data.max_length={section.max_length} is more than the model's "
                             f"max_position_embeddings={self.model_config.max_position_embeddings}")
        self.preprocess = GlueExample(section.max_length, section.truncate, regression=self.glue.labels is None)

    @property
    def regression(self) -> bool:
        return self.glue.labels is None

    def pretrained_params(self, config):
        """The encoder of the checkpoint in init_from (a masked-LM or classification folder); the classifier's
        decoder as the model initialises it."""
        if not config.init_from:
            return None
        folder = resolve_folder(config.init_from)
        architectures = read_config(folder).get("architectures") or ["PerceiverForMaskedLM"]
        source_class = (PerceiverForSequenceClassification if architectures[0] == "PerceiverForSequenceClassification"
                        else PerceiverForMaskedLM)
        loaded = param_paths(source_class.from_pretrained(folder))
        encoder = {path: value for path, value in loaded.items() if is_encoder(path)}
        fitted = check_params_fit(self, config, encoder, include=is_encoder)
        return {**param_paths(self.create_model(config, nnx.Rngs(config.seed))), **fitted}

    def train_data(self, config):
        return train_batches(config, self.section.make("train"), self.preprocess)

    def eval_data(self, config):
        return eval_batches(config, self.section.make("eval") or None, self.preprocess)

    def outputs(self, model, batch, dropout_rng=None):
        return model(inputs=batch["inputs"], attention_mask=batch["attention_mask"], dropout_rng=dropout_rng).logits

    def example_losses(self, logits, labels):
        if self.regression:
            return jnp.square(logits[:, 0] - labels)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def loss(self, model, batch, dropout_rng):
        rows = real_rows(batch)
        losses = self.example_losses(self.outputs(model, batch, dropout_rng), batch["labels"])
        return jnp.sum(losses * rows), jnp.sum(rows)

    def eval_metrics(self, model, batch):
        rows = real_rows(batch)
        logits = self.outputs(model, batch)
        metrics = {"loss": (jnp.sum(self.example_losses(logits, batch["labels"]) * rows), jnp.sum(rows))}
        if not self.regression:
            correct = (jnp.argmax(logits, -1) == batch["labels"]) * rows
            metrics["accuracy"] = (jnp.sum(correct), jnp.sum(rows))
        return metrics

    def predict(self, model, batch):
        logits = self.outputs(model, batch)
        return logits[:, 0] if self.regression else jnp.argmax(logits, -1).astype(jnp.float32)

    def score_predictions(self, batch, predictions):
        records = [{"eval_set": self.eval_sets[int(s)], "label": float(label) if self.regression else int(label),
                    "prediction": float(p) if self.regression else int(p)}
                   for s, label, p in zip(batch["eval_set"], batch["labels"], predictions, strict=True)]
        return {}, records

    def corpus_metrics(self, records: list[dict]) -> dict[str, float]:
        """The task's metrics on each eval set (suffixed with the set's name when there are several)."""
        results = {}
        for name in dict.fromkeys(record["eval_set"] for record in records):
            chosen = [record for record in records if record["eval_set"] == name]
            labels = np.asarray([record["label"] for record in chosen])
            predictions = np.asarray([record["prediction"] for record in chosen])
            suffix = f"_{name}" if len(self.eval_sets) > 1 else ""
            for metric in self.glue.metrics:
                results[f"{metric}{suffix}"] = METRICS[metric](labels, predictions)
        return results


def get_task(config):
    tasks = {"perceiver": MaskedLanguageModelTask, "perceiver_cls": ClassificationTask}
    if config.family not in tasks:
        raise ValueError(f"family {config.family!r} is not one of Perceiver IO's: {sorted(tasks)}")
    return tasks[config.family](config)
