"""Parameter-holding building blocks shared by every family.

Each parameter carries `logical_axes` metadata (embed, mlp, heads, kv, vocab, ...); jaxport.sharding
maps those names to mesh axes by the rules in the config.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


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
        y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), axes=self.num_in)
        return y + self.bias[...].astype(self.dtype) if self.use_bias else y


class Embed(nnx.Module):
    def __init__(self, num_embeddings: int, features: int, axes: Sequence[str | None], std: float,
                 *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = normal_param(rngs, (num_embeddings, features), std, axes, param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Scores of x against every embedding row: the tied output projection."""
        return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; rng=None means evaluation (identity)."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_rng(rng: jax.Array | None, num: int) -> list:
    """`num` independent keys, or `num` Nones in evaluation."""
    return [None] * num if rng is None else list(jax.random.split(rng, num))


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}

NEG_INF = float(jnp.finfo(jnp.float32).min)


def padding_bias(mask: jax.Array) -> jax.Array:
    """[B, S] 1/0 mask -> additive float32 bias [B, 1, 1, S]."""
    return jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)


def causal_bias(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Additive float32 bias [1, 1, T, S] that hides keys after each query."""
    allowed = key_positions[None, :] <= query_positions[:, None]
    return jnp.where(allowed, 0.0, NEG_INF)[None, None].astype(jnp.float32)

