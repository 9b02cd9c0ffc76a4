"""The flipped loss (Ye et al. 2023, section 3; the original's T0/T5.py `_step` with `channel` and `ul_loss` on).

The decoder is teacher-forced on the same instruction twice: after (input, gold label) and after (input, one wrong
label). The loss is

    likelihood + ul_weight * unlikelihood
    likelihood   = sum over real tokens of -log p_gold(token)            / N
    unlikelihood = sum over real tokens of -log(1 - p_wrong(token) + 0.01) / N  +  PADDED_CONSTANT * (B*T - N) / N

with N the real instruction tokens of the whole batch (token means over the batch, not per sequence), as the
original computes it. Its unlikelihood term also sums over the padded positions, where the log-likelihood it adds
-100 to makes p = exp(-100) = 0 in float32: each padded position adds -log(1.01). That constant changes no gradient;
it is kept here, so the loss is the number the original logs.
"""
import math

import jax
import jax.numpy as jnp

UL_EPSILON = 0.01  # the original's 1e-2 inside the unlikelihood's log
PADDED_CONSTANT = -math.log(1 + UL_EPSILON)  # what one padded position adds to the unlikelihood sum


def token_log_likelihoods(logits, labels) -> jax.Array:
    """log p(labels) [..., T] under logits [..., T, V], in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def flipped_loss_sums(logits_pos, logits_neg, labels, label_mask, ul_weight: float = 3.0):
    """(sum, count) with sum / count = flipped_loss(...): the form the trainer adds up over micro-batches and
    devices (jaxport.trainer.Task.loss), exact because both terms are means over the same N tokens."""
    mask = label_mask.astype(jnp.float32)
    likelihood = -jnp.sum(token_log_likelihoods(logits_pos, labels) * mask)
    # 1 - p as -expm1(log p): exact where p is close to 1, where 1 - exp(log p) loses the digits that matter.
    log_p_wrong = token_log_likelihoods(logits_neg, labels)
    unlikelihood = -jnp.sum(jnp.log(-jnp.expm1(log_p_wrong) + UL_EPSILON) * mask)
    unlikelihood += PADDED_CONSTANT * jnp.sum(1.0 - mask)
    return likelihood + ul_weight * unlikelihood, jnp.sum(mask)


def flipped_loss(logits_pos, logits_neg, labels, label_mask, ul_weight: float = 3.0) -> jax.Array:
    """The flipped loss of a batch, a float32 scalar (see the module docstring; padded-position constant kept).

    Args:
      logits_pos: [B, T, V] decoder logits of the instruction after (input, gold label).
      logits_neg: [B, T, V] decoder logits of the same instruction after (input, a wrong label).
      labels: [B, T] instruction token ids (ending in </s>, right-padded).
      label_mask: [B, T] 1 for the instruction's tokens, 0 for padding.
      ul_weight: the unlikelihood term's weight (the original's ul_weight, 3).
    """
    total, count = flipped_loss_sums(logits_pos, logits_neg, labels, label_mask, ul_weight)
    return total / jnp.maximum(count, 1.0)
