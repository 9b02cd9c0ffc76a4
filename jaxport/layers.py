"""Parameter-holding building blocks shared by every family.

Each parameter carries `logical_axes` metadata (embed, mlp, heads, kv, vocab, ...); jaxport.sharding
maps those names to mesh axes by the rules in the config.
"""
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxport import attention, layer_norm_kernels
from jaxport.dropout_mask import dropout_hashes, dropout_keep, dropout_scale, dropout_words, keep_mask


def float32_matmuls(method):
    """For a model's entry points (`__call__`, `encode`, `decode`, ...): a model that computes in float32 runs its
    matmuls in true float32 on every backend. JAX's default precision lets a GPU run float32 matmuls as TF32, which
    gave LSG-BART logits 2e-2 relative error against the PyTorch original (whose float32 is float32); bf16 models
    keep the default. A precision the caller chose (`with jax.default_matmul_precision(...)`, the training configs'
    `train.matmul_precision`) is kept. Reads `self.dtype`; applies where the method is traced."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if jax.config.jax_default_matmul_precision is not None or jnp.dtype(self.dtype) != jnp.float32:
            return method(self, *args, **kwargs)
        with jax.default_matmul_precision("highest"):
            return method(self, *args, **kwargs)

    return wrapper


def normal_param(rngs: nnx.Rngs, shape, std: float, axes: Sequence[str | None], param_dtype) -> nnx.Param:
    value = std * jax.random.normal(rngs.params(), shape, param_dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
    """A projection whose kernel keeps input and output axes apart, e.g. (embed, heads, kv), so each axis
    can be sharded on its own; optionally with a bias over the output axes."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], axes: Sequence[str | None], std: float,
                 *, use_bias: bool = False, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_in = len(in_shape)
        self.dtype = dtype
        self.kernel = normal_param(rngs, (*in_shape, *out_shape), std, axes, param_dtype)
        if use_bias:
            self.bias = nnx.Param(jnp.zeros(tuple(out_shape), param_dtype), logical_axes=tuple(axes[self.num_in:]))
        self.use_bias = use_bias

    def __call__(self, x: jax.Array) -> jax.Array:
        y, bias = self.branch(x)
        return y if bias is None else y + bias.astype(self.dtype)

    def branch(self, x: jax.Array) -> "Branch":
        """The projection with its bias kept apart, for a LayerNorm to add to a residual stream
        (`LayerNorm.add_and_norm`)."""
        y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), axes=self.num_in)
        return Branch(y, self.bias[...] if self.use_bias else None)


class Branch(NamedTuple):
    """A residual branch's output before its bias: what `LayerNorm.add_and_norm` adds to the residual stream."""
    hidden: jax.Array
    bias: jax.Array | None


class Embed(nnx.Module):
    def __init__(self, num_embeddings: int, features: int, axes: Sequence[str | None], std: float,
                 *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = normal_param(rngs, (num_embeddings, features), std, axes, param_dtype)

    def __call__(self, ids: jax.Array, dtype=None) -> jax.Array:
        """The rows of `ids` in `dtype` (default the module's computation dtype)."""
        return jnp.take(self.embedding[...], ids, axis=0).astype(dtype or self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Scores of x against every embedding row: the tied output projection."""
        return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; rng=None means evaluation (identity).

    The mask's random bits are a counter-based hash of each element's position and two words folded from rng's
    key data (jaxport.dropout_mask), computed inside whichever XLA kernel uses the mask, and computed again in the
    backward pass: no random bits are written to memory or kept. On an H100, threefry masks kept for the backward
    pass took a fifth of an LSG-BART training step, and XLA's RngBitGenerator bits drawn again still about a tenth
    (bench/RESULTS.md).
    Deterministic for a given rng and shape."""
    if rng is None or rate == 0.0:
        return x
    return _dropout(x, dropout_words(rng), rate)


def _masked(x: jax.Array, words: jax.Array, rate: float) -> jax.Array:
    # The scale multiplies in float32, as torch's does: rounded to bf16, 1 / 0.9 would be 0.16% short.
    kept = x.astype(jnp.float32) * dropout_scale(rate)
    return jnp.where(keep_mask(x.shape, words, rate), kept, 0).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(x, words, rate):
    return _masked(x, words, rate)


def _dropout_fwd(x, words, rate):
    return _masked(x, words, rate), words


def _dropout_bwd(rate, words, g):
    return _masked(g, words, rate), None  # the same mask, computed again


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


def layer_drop(apply, x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """LayerDrop: in training (rng given), the layer `apply` is skipped - x passes unchanged - with probability
    `rate`. The layer still runs (a select, not a branch: no host round trip for the decision)."""
    if rng is None or rate == 0.0:
        return apply(x)
    skip = jax.random.uniform(jax.random.fold_in(rng, 0x1D0)) < rate
    return jnp.where(skip, x, apply(x))


def remat(apply, mode: str):
    """`apply` (a layer's call; modules may be among its arguments) for the backward pass `mode` asks
    (jaxport.hf_config.REMAT_MODES): itself ("none"), recomputed whole from its inputs ("full"), or recomputed but
    for its matmul outputs ("dots"). Training memory for compute; the same numbers."""
    if mode == "none":
        return apply
    return nnx.remat(apply, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable if mode == "dots" else None)


def split_rng(rng: jax.Array | None, num: int) -> list:
    """`num` independent keys, or `num` Nones in evaluation."""
    return [None] * num if rng is None else list(jax.random.split(rng, num))


_SQRT_HALF = 0.7071067811865476


def _gelu(x: jax.Array) -> jax.Array:
    y = x.astype(jnp.float32)
    return (0.5 * y * (1.0 + jax.lax.erf(y * _SQRT_HALF))).astype(x.dtype)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU as PyTorch computes it, x * (1 + erf(x / sqrt(2))) / 2, in float32. jax.nn.gelu(approximate=False)
    goes through erfc, whose XLA expansion (exp, divisions, two polynomial branches) made it 3x slower on an
    H100 (bench/RESULTS.md); XLA's erf is one rational polynomial. The backward pass keeps only x (autodiff lists
    three float32 intermediates of the MLP's widest activation as residuals) and recomputes the derivative; XLA
    already recomputed them in LSG-BART's training step (no measured change there), this guarantees it."""
    return _gelu(x)


def _gelu_fwd(x):
    return _gelu(x), x


def _gelu_bwd(x, g):
    y = x.astype(jnp.float32)
    slope = 0.5 * (1.0 + jax.lax.erf(y * _SQRT_HALF)) + y * jnp.exp(-0.5 * y * y) * (_SQRT_HALF / math.sqrt(math.pi))
    return ((g.astype(jnp.float32) * slope).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, dtype) -> jax.Array:
    """LayerNorm over the last axis with statistics in float32, output in `dtype`. The backward pass keeps x and the
    per-row mean and inverse deviation (autodiff lists several float32 copies of x as residuals) and recomputes the
    rest, whatever XLA's rematerialisation decides (it matched this in LSG-BART's training step)."""
    return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, dtype):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + eps)
    out = ((x32 - mean) * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)
    return out, (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, dtype, residuals, g):
    x, mean, rstd, scale, bias = residuals
    g = g.astype(jnp.float32)
    normed = (x.astype(jnp.float32) - mean) * rstd
    rows = tuple(range(g.ndim - 1))
    d_normed = g * scale.astype(jnp.float32)
    dx = rstd * (d_normed - d_normed.mean(-1, keepdims=True)
                 - normed * (d_normed * normed).mean(-1, keepdims=True))
    return (dx.astype(x.dtype), (g * normed).sum(rows).astype(scale.dtype), g.sum(rows).astype(bias.dtype))


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def add_layer_norm(residual, branch, branch_bias, scale, bias, row_hash, col_hash, eps: float, dtype, rate: float):
    """(total, normalised): total = residual + dropout(branch + branch_bias), the branch and its dropout in float32,
    and layer_norm of the total. What layer_norm_kernels.add_layer_norm computes, with the same arguments.

    Args:
      residual: [rows, width], the stream (float32 under bf16 compute); total comes back in its dtype.
      branch: [rows, width], the branch's output before its bias.
      branch_bias, scale, bias: [width], the branch's bias and the LayerNorm's parameters.
      row_hash, col_hash: [rows] and [width] uint32, the dropout mask's hashes (dropout_mask.dropout_hashes).
      eps: the LayerNorm's epsilon; dtype: of the normalised output; rate: the branch's dropout rate (0: none).
    """
    total = branch.astype(jnp.float32) + branch_bias.astype(jnp.float32)
    if rate:
        keep = dropout_keep(row_hash[:, None], col_hash[None, :], rate)
        total = jnp.where(keep, total * dropout_scale(rate), 0.0)
    total = residual + total.astype(residual.dtype)
    return total, layer_norm(total, scale, bias, eps, dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with a scale and a bias over the last axis (torch.nn.LayerNorm; its default eps, 1e-5): on an
    NVIDIA GPU jaxport.layer_norm_kernels' Pallas kernels (one pass over the rows each way), else layer_norm."""

    def __init__(self, size: int, eps: float = 1e-5, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps, self.dtype = eps, dtype
        self.scale = nnx.Param(jnp.ones((size,), param_dtype), logical_axes=("embed",))
        self.bias = nnx.Param(jnp.zeros((size,), param_dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        norm = layer_norm_kernels.layer_norm if self._fused(x) else layer_norm
        return norm(x, self.scale[...], self.bias[...], self.eps, self.dtype)

    def add_and_norm(self, residual: jax.Array, branch: Branch | None, rate: float = 0.0,
                     rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(residual + dropout(branch), this LayerNorm of it) for a pre-LN residual stream, the branch's bias
        added first; the branch's dropout in float32 (rng=None: none). branch=None: (residual, LayerNorm of it).
        On an NVIDIA GPU one kernel each way (layer_norm_kernels.add_layer_norm), else add_layer_norm."""
        if branch is None:
            return residual, self(residual)
        rate = rate if rng is not None else 0.0
        words = dropout_words(rng) if rate else jnp.zeros((2,), jnp.uint32)
        shape, width = residual.shape, residual.shape[-1]
        rows = math.prod(shape[:-1])
        row_hash, col_hash = dropout_hashes(shape, words)
        bias = branch.bias if branch.bias is not None else jnp.zeros((width,), jnp.float32)
        add = layer_norm_kernels.add_layer_norm if self._fused(residual) else add_layer_norm
        total, out = add(residual.reshape(rows, width), branch.hidden.reshape(rows, width), bias, self.scale[...],
                         self.bias[...], row_hash, col_hash, self.eps, self.dtype, rate)
        return total.reshape(shape), out.reshape(shape)

    @staticmethod
    def _fused(x: jax.Array) -> bool:
        return attention.default_platform() == "gpu" and layer_norm_kernels.supported(x.shape[-1])


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}

NEG_INF = float(jnp.finfo(jnp.float32).min)


def padding_mask(mask: jax.Array) -> jax.Array:
    """[B, S] 1/0 (or boolean) mask of the keys to attend to -> boolean [B, 1, 1, S]."""
    return mask[:, None, None, :] > 0


def causal_mask(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Boolean [1, 1, T, S]: each query sees the keys at or before its position."""
    return (key_positions[None, :] <= query_positions[:, None])[None, None]


def mask_bias(mask: jax.Array) -> jax.Array:
    """Boolean mask (True: attend) -> the additive float32 bias attention puts on its scores: 0 or NEG_INF.

    Masks stay boolean (combined with &) until the attention scores take them through this, so every masked score
    is NEG_INF: softmax makes it exactly 0 beside any unmasked one, and a row with no key left attends evenly to all,
    as PyTorch's masks do. As in jax.nn.dot_product_attention, a float bias (T5's relative positions) stays apart."""
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
                          dropout_rate: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
    """Softmax attention of q [B, T, H, Dqk] over k [B, S, H, Dqk] and v [B, S, H, Dv] -> [B, T, H, Dv] in v's dtype.

    Scores scaled by 1/sqrt(Dqk) and accumulated in float32, over the keys the boolean `mask` (broadcastable to
    [B, H, T, S]; None: all) allows; softmax in float32; dropout on the probabilities in training (rng given).
    The backward pass keeps the probabilities in v's dtype, as they multiply v (autodiff kept a float32 copy), and
    hands the scores' gradient to the query/key products in q's dtype; the dropout mask is computed again."""
    rate = dropout_rate if rng is not None else 0.0
    words = dropout_words(rng) if rate else jnp.zeros((2,), jnp.uint32)
    bias = jnp.zeros((), jnp.float32) if mask is None else mask_bias(mask)
    return _attention(q, k, v, bias, words, rate)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, bias, words, rate):
    return _attention_fwd(q, k, v, bias, words, rate)[0]


def _drop(probs, words, rate):
    return _masked(probs, words, rate) if rate else probs


def _attention_fwd(q, k, v, bias, words, rate):
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", _drop(probs, words, rate), v), (q, k, v, bias, words, probs)


def _attention_bwd(rate, residuals, d_out):
    q, k, v, bias, words, probs = residuals
    d_probs = _drop(jnp.einsum("bthd,bshd->bhts", d_out, v), words, rate).astype(jnp.float32)
    p = probs.astype(jnp.float32)
    d_scores = (p * (d_probs - (p * d_probs).sum(-1, keepdims=True)) / math.sqrt(q.shape[-1])).astype(q.dtype)
    return (jnp.einsum("bhts,bshd->bthd", d_scores, k), jnp.einsum("bhts,bthd->bshd", d_scores, q),
            jnp.einsum("bhts,bthd->bshd", _drop(probs, words, rate), d_out), jnp.zeros_like(bias), None)


_attention.defvjp(_attention_fwd, _attention_bwd)
