"""The encoder-decoder training task shared by every seq2seq family (T5, SIP, LSG-BART, FLIPPED):
teacher-forced cross-entropy, token and sequence accuracy, data sources chosen by `config.data`. Rows the batch
iterator marks as padding (EXAMPLE_MASK: the last batch of an epoch or of an eval set) count for nothing."""
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxport import attention, cross_entropy_kernels, data
from jaxport.hf import param_paths


def token_cross_entropy(logits, labels, mask):
    """(sum of per-token losses over mask, number of tokens), computed in float32 whatever the logits' dtype: on an
    NVIDIA GPU by jaxport.cross_entropy_kernels (no float32 copy of the logits), elsewhere by optax."""
    if attention.default_platform() == "gpu" and cross_entropy_kernels.supported():
        losses = cross_entropy_kernels.cross_entropy(logits, labels)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(losses * mask), jnp.sum(mask).astype(jnp.float32)


def real_rows(batch) -> jnp.ndarray:
    """float32 [B]: 1 for the batch's real examples, 0 for the rows padding it."""
    return batch.get(data.EXAMPLE_MASK, jnp.ones(batch["labels"].shape[:1], jnp.int32)).astype(jnp.float32)


def target_mask(batch) -> jnp.ndarray:
    """float32 [B, T]: the target tokens of the real examples."""
    return batch["decoder_attention_mask"] * real_rows(batch)[:, None]


def teacher_forced_logits(model, batch, dropout_rng=None, **inputs):
    """The logits [B, T, V] of the batch's targets under teacher forcing; `inputs`: a family's other model inputs."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 decoder_input_ids=batch["decoder_input_ids"], decoder_attention_mask=batch["decoder_attention_mask"],
                 dropout_rng=dropout_rng, **inputs).logits


def teacher_forced_metrics(logits, batch) -> dict:
    """Loss, token accuracy and sequence accuracy under teacher forcing, as (sum, count) pairs."""
    rows, mask = real_rows(batch), target_mask(batch)
    loss_sum, tokens = token_cross_entropy(logits, batch["labels"], mask)
    correct = (jnp.argmax(logits, -1) == batch["labels"]) * mask
    sequence_correct = jnp.all((correct > 0) | (mask == 0), axis=-1) * rows
    return {"loss": (loss_sum, tokens), "token_accuracy": (jnp.sum(correct), tokens),
            "sequence_accuracy": (jnp.sum(sequence_correct), jnp.sum(rows))}


def check_params_fit(task, config, params: dict, include=lambda path: True) -> dict:
    """`params` (flat {path: array}, loaded from config.init_from) checked against the model config.model describes:
    every parameter present with its shape and nothing else, or a ValueError listing each difference. `include`
    limits the check to the model's parameters whose paths it accepts (a fine-tuning model that loads an encoder)."""
    abstract = nnx.eval_shape(lambda: task.create_model(config, nnx.Rngs(0)))
    expected = {path: tuple(value.shape)
                for path, value in param_paths(abstract).items()
                if include(path)}
    problems = [f"{path}: init_from has {tuple(params[path].shape)}, config.model gives {shape}"
                for path, shape in expected.items() if path in params and tuple(params[path].shape) != shape]
    problems += [f"{path}: missing from init_from" for path in expected if path not in params]
    problems += [f"{path}: in init_from, not in the model config.model describes" for path in params
                 if path not in expected]
    if problems:
        raise ValueError(f"config.model does not describe the model in init_from={config.init_from!r}:\n  "
                         + "\n  ".join(problems))
    return params


make_tokenizer = data.load_tokenizer  # "bytes", or a transformers tokenizer's folder or hub id


def train_batches(config, examples, preprocess, **kwargs):
    """Endless shuffled training batches of `examples` through `preprocess` (config.train.batch_size, config.seed);
    kwargs: data.make_iterator's others (num_workers)."""
    return data.make_iterator(examples, preprocess, batch_size=config.train.batch_size, seed=config.seed, **kwargs)


def eval_batches(config, examples, preprocess):
    """One pass over the evaluation `examples` (config.eval.batch_size, the last batch padded), or None without any."""
    return None if examples is None else data.make_eval_iterator(examples, preprocess,
                                                                 batch_size=config.eval.batch_size)


class ModelTask:
    """What every family's task (jaxport.trainer.Task) shares: `model_class` built from `model_config` in the
    training's compute dtype, and config.init_from's weights loaded by that class and checked against it."""

    model_class: type
    model_config: object

    def create_model(self, config, rngs: nnx.Rngs):
        return self.model_class(self.model_config, dtype=jnp.dtype(config.train.compute_dtype), rngs=rngs)

    def pretrained_params(self, config):
        if not config.init_from:
            return None
        return check_params_fit(self, config, param_paths(self.model_class.from_pretrained(config.init_from)))


class Seq2SeqTask(ModelTask):
    def __init__(self, config, model_class, config_class, tokenizer=None):
        """tokenizer: the data interface's tokenizer object; None makes one from `config.data.tokenizer`."""
        self.model_class = model_class
        self.model_config = config_class.from_dict(config.model.to_dict())
        cfg = config.data
        tokenizer = tokenizer if tokenizer is not None else make_tokenizer(cfg.tokenizer)
        self.preprocess = data.Seq2SeqPreprocessor(
            tokenizer, cfg.max_input_length, cfg.max_target_length,
            input_key=cfg.input_key, target_key=cfg.target_key, truncate=cfg.truncate,
            decoder_start_token_id=self.model_config.decoder_start_token_id)

    def source(self, config, split: str):
        """The examples of `split` ('train' or 'eval'; None: no eval data), as config.data describes them."""
        return data.make_source(config.data, split)

    def train_data(self, config):
        return train_batches(config, self.source(config, "train"), self.preprocess)

    def eval_data(self, config):
        return eval_batches(config, self.source(config, "eval"), self.preprocess)

    @staticmethod
    def num_tokens(batch) -> int:
        rows = batch.get(data.EXAMPLE_MASK, np.ones(len(batch["input_ids"]), bool))[:, None]
        return int((batch["attention_mask"] * rows).sum() + (batch["decoder_attention_mask"] * rows).sum())

    def loss(self, model, batch, dropout_rng):
        return token_cross_entropy(teacher_forced_logits(model, batch, dropout_rng), batch["labels"],
                                   target_mask(batch))

    def eval_metrics(self, model, batch):
        return teacher_forced_metrics(teacher_forced_logits(model, batch), batch)
