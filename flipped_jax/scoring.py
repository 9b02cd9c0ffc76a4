"""Zero-shot prediction by instruction likelihood (the original's T0/evaluation.py `evaluate_instruct`).

Each label option gets its own encoder input (`input: {input}\\n output: {option}`); its score is the summed
log-likelihood of the instruction's tokens (</s> included, padding not) under teacher forcing, not normalised by
length, as the original sums them; the prediction is the option of highest score, the first one on a tie.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flipped_jax.losses import token_log_likelihoods
from jaxport.seq2seq import shift_right


def option_log_likelihoods(model, input_ids, attention_mask, instruction_ids, instruction_mask) -> jax.Array:
    """Summed instruction log-likelihood [B, K] of every option; the arguments as in `score_options`, the
    instruction already [B, K, T]. Traceable: the trainer's evaluation calls it inside its jitted step."""
    batch, options, length = input_ids.shape
    flat = lambda x: x.reshape(batch * options, x.shape[-1])
    labels, label_mask = flat(instruction_ids), flat(instruction_mask)
    decoder_input_ids = shift_right(labels, model.config.decoder_start_token_id, model.config.pad_token_id)
    logits = model(input_ids=flat(input_ids), attention_mask=flat(attention_mask), decoder_input_ids=decoder_input_ids,
                   decoder_attention_mask=label_mask).logits
    summed = jnp.sum(token_log_likelihoods(logits, labels) * label_mask.astype(jnp.float32), axis=-1)
    return summed.reshape(batch, options)


def masked_predictions(log_likelihoods, option_mask) -> tuple[jax.Array, jax.Array]:
    """(scores with -inf in the empty option slots, argmax: the first option of highest score)."""
    scores = jnp.where(option_mask.astype(bool), log_likelihoods, -jnp.inf)
    return scores, jnp.argmax(scores, axis=-1)


@nnx.jit
def _scores(model, input_ids, attention_mask, instruction_ids, instruction_mask, option_mask):
    return masked_predictions(
        option_log_likelihoods(model, input_ids, attention_mask, instruction_ids, instruction_mask), option_mask)


def score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask, option_mask=None
                  ) -> tuple[jax.Array, jax.Array]:
    """Scores [B, K] (float32; -inf for empty slots) and predictions [B] (int32) of K label options per example.

    Args:
      model: a FlippedModel (any t5_jax T5).
      input_ids: [B, K, L] one encoder input per option, right-padded with 0.
      attention_mask: [B, K, L] 1 for tokens, 0 for padding.
      instruction_ids: [B, T] the instruction shared by the options, or [B, K, T] one per option; ends in </s>,
        right-padded with 0. The decoder reads it shifted right behind decoder_start_token_id.
      instruction_mask: [B, T] or [B, K, T] 1 for the instruction's tokens, 0 for padding.
      option_mask: [B, K] 1 for a real option, 0 for an empty slot (its score is -inf); None: all real.
    """
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be [batch, options, length], got "
                         f"{input_ids.shape} and {attention_mask.shape}")
    batch, options, _ = input_ids.shape
    instruction_ids, instruction_mask = np.asarray(instruction_ids), np.asarray(instruction_mask)
    if instruction_ids.shape != instruction_mask.shape:
        raise ValueError(f"instruction_ids {instruction_ids.shape} and instruction_mask {instruction_mask.shape} "
                         "differ in shape")
    if instruction_ids.ndim == 2 and instruction_ids.shape[0] == batch:  # one instruction shared by the options
        expand = lambda x: np.broadcast_to(x[:, None], (batch, options, x.shape[-1]))
        instruction_ids, instruction_mask = expand(instruction_ids), expand(instruction_mask)
    if instruction_ids.ndim != 3 or instruction_ids.shape[:2] != (batch, options):
        raise ValueError(f"instruction_ids must be [batch, length] or [batch, options, length] with batch {batch} "
                         f"and {options} options, got {instruction_ids.shape}")
    option_mask = np.ones((batch, options), np.int32) if option_mask is None else np.asarray(option_mask)
    if option_mask.shape != (batch, options):
        raise ValueError(f"option_mask must be [batch, options] = {(batch, options)}, got {option_mask.shape}")
    empty = np.flatnonzero(~option_mask.astype(bool).any(axis=-1))
    if empty.size:
        raise ValueError(f"example(s) {empty.tolist()} of the batch have every option masked: nothing to predict")
    return _scores(model, input_ids, attention_mask, instruction_ids, instruction_mask, option_mask)
