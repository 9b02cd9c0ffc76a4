"""The causal language-modelling task for the shared trainer (jaxport.trainer.Task), one for Backpack-GPT2
(`family = "backpack"`) and plain GPT-2 (`family = "gpt2"`, the paper's baseline): next-token cross-entropy over
windows of a language-model corpus (config.data: a jaxport.data.LanguageModelData section, lm_tfds, lm_jsonl or
lm_text); evaluated by the same loss, token accuracy and perplexity (exp of the mean loss per token)."""
import math

import jax.numpy as jnp
import numpy as np

from backpack_jax.configuration import BackpackGPT2Config, GPT2Config
from backpack_jax.modeling import BackpackGPT2LMHeadModel, GPT2LMHeadModel
from jaxport import config as config_lib
from jaxport import data
from jaxport.tasks import ModelTask, eval_batches, real_rows, token_cross_entropy, train_batches

MODELS = {"backpack": (BackpackGPT2LMHeadModel, BackpackGPT2Config), "gpt2": (GPT2LMHeadModel, GPT2Config)}


def get_task(config):
    if config.family not in MODELS:
        raise ValueError(f"backpack_jax has the families {sorted(MODELS)}, not {config.family!r}")
    return CausalLMTask(config, *MODELS[config.family])


class CausalLMTask(ModelTask):
    def __init__(self, config, model_class, config_class, tokenizer=None):
        """tokenizer: an object of jaxport.data.tokenizers' interface; None loads `config.data.tokenizer`."""
        if not isinstance(config_lib.section_object("data", config.data), data.LanguageModelData):
            raise ValueError(f"data.source={config.data.source!r} is not a language-model corpus (lm_tfds, lm_jsonl, "
                             "lm_text)")
        if not config.data.tokenizer:
            raise ValueError("data.tokenizer is not set: 'bytes', or a tokenizer folder or hub id")
        self.model_class = model_class
        self.model_config = config_class.create(**config.model.to_dict())
        self.tokenizer = tokenizer if tokenizer is not None else data.load_tokenizer(config.data.tokenizer)
        if self.tokenizer.vocab_size > self.model_config.vocab_size:
            raise ValueError(f"data.tokenizer has {self.tokenizer.vocab_size} tokens, more than model.vocab_size="
                             f"{self.model_config.vocab_size}")
        if config.data.sequence_length > self.model_config.n_positions:
            raise ValueError(f"data.sequence_length={config.data.sequence_length} is longer than the model's "
                             f"n_positions={self.model_config.n_positions}")

    def windows(self, config, split: str):
        """The corpus windows of `split` ('train' or 'eval'; None: no eval data), one token longer than the model
        reads: inputs and their next tokens."""
        return config_lib.section_object("data", config.data).make(split, tokenizer=self.tokenizer, overlap=1)

    def train_data(self, config):
        return train_batches(config, self.windows(config, "train"), data.next_token_example)

    def eval_data(self, config):
        return eval_batches(config, self.windows(config, "eval"), data.next_token_example)

    @staticmethod
    def num_tokens(batch) -> int:
        rows = batch.get(data.EXAMPLE_MASK, np.ones(len(batch["input_ids"]), bool))
        return int(np.sum(rows) * batch["input_ids"].shape[1])

    @staticmethod
    def label_mask(batch) -> jnp.ndarray:
        """float32 [B, T]: every label of the real rows."""
        return jnp.broadcast_to(real_rows(batch)[:, None], batch["labels"].shape)

    def loss(self, model, batch, dropout_rng):
        logits = model(batch["input_ids"], dropout_rng=dropout_rng).logits
        return token_cross_entropy(logits, batch["labels"], self.label_mask(batch))

    def eval_metrics(self, model, batch):
        logits = model(batch["input_ids"]).logits
        mask = self.label_mask(batch)
        loss_sum, tokens = token_cross_entropy(logits, batch["labels"], mask)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * mask)
        return {"loss": (loss_sum, tokens), "token_accuracy": (correct, tokens)}

    @staticmethod
    def derived_eval_metrics(means: dict[str, float]) -> dict[str, float]:
        return {"eval_perplexity": math.exp(means["eval_loss"])} if "eval_loss" in means else {}

