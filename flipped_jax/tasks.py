"""FLIPPED's training task for the shared trainer (jaxport.trainer.Task), and its data sections.

Training: per example, the encoder reads (input, gold label) and (input, one wrong label), the decoder is
teacher-forced on the instruction after each, and the loss is the flipped loss (flipped_jax.losses). Both inputs
run as one batch of 2B rows, as the original concatenates them. Evaluation: zero-shot accuracy by option scoring
(flipped_jax.scoring), overall and per dataset.

Data (`config.data.source`):
  flipped_synthetic  tiny generated classification tasks with templates (flipped_jax.synthetic), no download
  flipped_hf         Hugging Face `datasets` (comma-separated names, the original's "path/config") rendered with
                     promptsource templates.yaml files under templates_dir (templates_dir/path[/config]/)
  flipped_jsonl      files of {input, label, options, instruction[, dataset]} rows, already in FLIPPED's form
Every source samples training examples in proportion to dataset size, capped at `cap`, a random template each draw;
evaluation reads eval_path (JSONL rows as flipped_jsonl's) where set, else (synthetic) held-out generated rows.
"""
import dataclasses
from pathlib import Path

import jax.numpy as jnp

from flipped_jax import data as flipped_data
from flipped_jax import synthetic
from flipped_jax.losses import flipped_loss_sums
from flipped_jax.modeling import FlippedModel
from flipped_jax.scoring import masked_predictions, option_log_likelihoods
from flipped_jax.templates import load_templates
from jaxport import config as config_lib
from jaxport import data
from jaxport.tasks import ModelTask, eval_batches, make_tokenizer, train_batches
from t5_jax.configuration import T5Config

EVAL_SEED_OFFSET = 1_000_003  # held-out synthetic examples come from the stream of seed + this


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlippedData:
    """Keys every FLIPPED source has."""

    max_input_length: int
    max_target_length: int
    tokenizer: str = "bytes"  # ByT5's bytes (sentinels spelled out), or a transformers tokenizer folder / hub id
    truncate: bool = False  # cut inputs and instructions longer than their limit; False: they are errors
    ul_weight: float = 3.0  # the unlikelihood term's weight
    cap: int = 500_000  # examples kept of a larger dataset (proportional sampling up to this size)
    eval_path: str = ""  # JSONL rows {input, label, options, instruction[, dataset]}; "": none (or synthetic's own)
    num_eval_examples: int = 0  # the first N evaluation rows; 0: all
    num_options: int = 4  # option slots per evaluation example (the most options of an evaluation task)

    def mixture(self, seed: int) -> flipped_data.Mixture:
        raise NotImplementedError

    def eval_rows(self) -> list[dict] | None:
        if not self.eval_path:
            return None
        return list(data.first(flipped_data.JsonlExamples(self.eval_path), self.num_eval_examples))


@data.data_source("flipped_synthetic")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticFlippedData(FlippedData):
    tasks: str = "sentiment,topic"  # of flipped_jax.synthetic.TASKS
    size: int = 2000  # examples per task
    seed: int = 0

    def names(self) -> list[str]:
        return self.tasks.split(",")

    def mixture(self, seed: int) -> flipped_data.Mixture:
        return flipped_data.Mixture([flipped_data.MixtureDataset(
            name, synthetic.SyntheticClassification(name, self.size, self.seed), synthetic.templates(name))
            for name in self.names()], self.cap, seed)

    def eval_rows(self) -> list[dict]:
        if self.eval_path:
            return super().eval_rows()
        count = self.num_eval_examples or 32
        rows = []
        for name in self.names():
            examples = synthetic.SyntheticClassification(name, count, self.seed + EVAL_SEED_OFFSET)
            rows += [{**template.flipped(examples[i]), "dataset": name, "where": f"{name}, eval example {i}"}
                     for i in range(count) for template in synthetic.templates(name)]
        return rows


@data.data_source("flipped_hf")
@dataclasses.dataclass(frozen=True, kw_only=True)
class HuggingFaceFlippedData(FlippedData):
    datasets: str = ""  # comma-separated, e.g. "glue/qqp,paws/labeled_final,ag_news"
    templates_dir: str = ""  # promptsource's templates folder: templates_dir/glue/qqp/templates.yaml, ...
    split: str = "train"

    def mixture(self, seed: int) -> flipped_data.Mixture:
        if not self.datasets or not self.templates_dir:
            raise ValueError("data.datasets and data.templates_dir must be set for data.source=flipped_hf")
        return flipped_data.Mixture([flipped_data.MixtureDataset(
            name, flipped_data.hf_examples(name, self.split), tuple(load_templates(Path(self.templates_dir) / name)))
            for name in self.datasets.split(",")], self.cap, seed)


@data.data_source("flipped_jsonl")
@dataclasses.dataclass(frozen=True, kw_only=True)
class JsonlFlippedData(FlippedData):
    train_path: str = ""

    def mixture(self, seed: int) -> flipped_data.Mixture:
        if not self.train_path:
            raise ValueError("data.train_path is not set")
        groups = flipped_data.jsonl_datasets(self.train_path, Path(self.train_path).stem)
        return flipped_data.Mixture([flipped_data.MixtureDataset(name, rows) for name, rows in groups.items()],
                                    self.cap, seed)


def get_task(config) -> "FlippedTask":
    return FlippedTask(config)


def dataset_names(rows) -> tuple[str, ...]:
    return tuple(dict.fromkeys(row.get(flipped_data.DATASET_FIELD, "") for row in rows))


class FlippedTask(ModelTask):
    model_class = FlippedModel

    def __init__(self, config, tokenizer=None):
        """tokenizer: the data interface's tokenizer object; None makes one from `config.data.tokenizer`."""
        self.model_config = T5Config.from_dict(config.model.to_dict())
        self.data_config = config_lib.section_object("data", config.data)
        cfg = self.data_config
        tokenizer = tokenizer if tokenizer is not None else make_tokenizer(cfg.tokenizer)
        self.encoder = flipped_data.Encoder(tokenizer, cfg.max_input_length, cfg.max_target_length, cfg.truncate)
        self.eval_rows = cfg.eval_rows()
        self.datasets = dataset_names(self.eval_rows or [])

    def train_data(self, config):
        preprocess = flipped_data.TrainPreprocessor(self.encoder, self.model_config.decoder_start_token_id,
                                                    config.seed)
        return train_batches(config, self.data_config.mixture(config.seed), preprocess)

    def eval_data(self, config):
        if not self.eval_rows:
            return None
        preprocess = flipped_data.OptionsPreprocessor(self.encoder, self.data_config.num_options, self.datasets)
        return eval_batches(config, self.eval_rows, preprocess)

    @staticmethod
    def num_tokens(batch) -> int:
        """Tokens of a training batch: both encoder inputs, and the instruction decoded after each."""
        return int(batch["attention_mask"].sum() + 2 * batch["decoder_attention_mask"].sum())

    def loss(self, model, batch, dropout_rng):
        """The flipped loss as (sum, tokens): gold and wrong inputs as one batch of 2B rows."""
        both = lambda x: jnp.concatenate([x[:, 0], x[:, 1]])  # [B, 2, L] -> [2B, L], gold rows first
        twice = lambda x: jnp.concatenate([x, x])
        logits = model(input_ids=both(batch["input_ids"]), attention_mask=both(batch["attention_mask"]),
                       decoder_input_ids=twice(batch["decoder_input_ids"]),
                       decoder_attention_mask=twice(batch["decoder_attention_mask"]), dropout_rng=dropout_rng).logits
        gold, wrong = jnp.split(logits, 2)
        return flipped_loss_sums(gold, wrong, batch["labels"], batch["decoder_attention_mask"],
                                 self.data_config.ul_weight)

    def eval_metrics(self, model, batch):
        """Zero-shot accuracy over the real rows, overall and (with several datasets) per dataset."""
        scores = option_log_likelihoods(model, batch["input_ids"], batch["attention_mask"], batch["instruction_ids"],
                                        batch["instruction_mask"])
        _, predictions = masked_predictions(scores, batch["option_mask"])
        rows = batch[data.EXAMPLE_MASK].astype(jnp.float32)  # the eval iterator marks the rows padding a batch
        correct = (predictions == batch["label"]) * rows
        metrics = {"accuracy": (jnp.sum(correct), jnp.sum(rows))}
        if len(self.datasets) > 1:
            for index, name in enumerate(self.datasets):
                selected = (batch["dataset"] == index) * rows
                metrics[f"accuracy_{name}"] = (jnp.sum(correct * selected), jnp.sum(selected))
        return metrics
