"""Which attention implementation runs, decided in one place, and the one entry point of each attention.

`resolve` turns LSGBartConfig.attn_implementation into an `Implementations` value for one forward pass, from the
config (sparsity, block size, head sizes, attention dropout), the compute dtype, whether the pass trains and the
platform; the encoder and decoder hand it down to their layers, which call `lsg_attention` / `padded_attention`
(or, for "pallas", the kernels on the encoder's packed projection). The formulations below this module - einsum
(lsg_jax.attention), cuDNN / XLA (lsg_jax.fused_attention), Triton (lsg_jax.pallas_attention) - decide nothing.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lsg_jax.attention import einsum_lsg_attention
from lsg_jax.fused_attention import HALF, fused_lsg_attention, fused_padded_attention
from lsg_jax.pallas_attention import (
    pallas_head_dim_supported,
    pallas_lsg_attention,
    pallas_padded_attention,
    pallas_supported,
)


class Implementations(NamedTuple):
    """What one forward pass runs, each "einsum", "xla", "cudnn" or "pallas"."""
    lsg: str  # the encoder's LSG self-attention
    cross: str  # the decoder's cross-attention over the whole encoder output (teacher forcing)


def default_platform() -> str:
    """JAX's default backend, where "gpu" means an NVIDIA GPU (cuDNN, the Triton kernels as tested): "rocm" else."""
    backend = jax.default_backend()
    if backend == "gpu" and "cuda" not in jax.devices()[0].client.platform_version.lower():
        return "rocm"
    return backend


def cudnn_supported(dtype, head_dim: int, platform: str) -> bool:
    """Whether cuDNN flash attention takes this attention: an NVIDIA GPU, half-precision compute and a head dim that
    is a multiple of 8 up to 128 (256 on Hopper and later; 128 holds everywhere)."""
    return (platform == "gpu" and jnp.dtype(dtype) in map(jnp.dtype, HALF) and head_dim % 8 == 0
            and head_dim <= 128)


def _auto(dtype, head_dim: int, platform: str, pallas_takes_it: bool) -> str:
    if not cudnn_supported(dtype, head_dim, platform):
        return "einsum"
    return "pallas" if pallas_takes_it else "cudnn"


def resolve(config, dtype, *, training: bool, platform: str | None = None) -> Implementations:
    """config.attn_implementation for a forward pass of a model computing in `dtype`:

    - "einsum" for both in training with attention dropout (fused attention has none);
    - "auto": "einsum" where cudnn_supported is False (CPU, TPU, float32 models: their attention stays float32),
      else "pallas" where its kernels take the attention (LSG attention without sparse keys, cross-attention with a
      power-of-two head dim: both faster forward and backward on an H100, bench/RESULTS.md), else "cudnn";
    - another name as given, except a cross-attention head dim that Triton's tiles do not take under "pallas":
      the platform's dense fused attention then ("cudnn" on a GPU, "xla" elsewhere).

    platform: default_platform()'s name, this process's by default. "cudnn" off an NVIDIA GPU is an error; a
    "pallas" the LSG kernels do not take is refused by pallas_lsg_attention."""
    platform = platform or default_platform()
    if training and config.attention_dropout > 0:
        return Implementations("einsum", "einsum")
    name = config.attn_implementation
    lsg_dim = config.d_model // config.encoder_attention_heads
    cross_dim = config.d_model // config.decoder_attention_heads
    if name == "auto":
        return Implementations(_auto(dtype, lsg_dim, platform, pallas_supported(config, lsg_dim) is None),
                               _auto(dtype, cross_dim, platform, pallas_head_dim_supported(cross_dim)))
    if name == "cudnn" and platform != "gpu":
        raise ValueError("attn_implementation='cudnn' needs an NVIDIA GPU as JAX's default backend; use 'xla' (the "
                         "same formulation through XLA), 'einsum' or 'auto'")
    if name == "pallas" and not pallas_head_dim_supported(cross_dim):
        return Implementations(name, "cudnn" if platform == "gpu" else "xla")
    return Implementations(name, name)


def lsg_attention(q, k, v, bias, cfg, dtype, implementation: str, lsh_projections=None, rng=None):
    """LSG self-attention through `implementation` (resolve's `lsg`). q/k/v [B, H, G + T, D] (G = num_global_tokens
    first), bias [B, G + T] additive float32 (0 for the global tokens); lsh_projections: sparsity_type "lsh"'s; rng:
    attention dropout in training (einsum only, which resolve picks for it). Returns [B, H, G + T, D] in `dtype`."""
    if implementation == "einsum":
        return einsum_lsg_attention(q, k, v, bias, cfg, dtype, lsh_projections, rng)
    if implementation == "pallas":  # the kernels read q, k and v packed as one projection writes them
        qkv = jnp.stack([jnp.swapaxes(x, 1, 2) for x in (q, k, v)], axis=2)
        return jnp.swapaxes(pallas_lsg_attention(qkv, None, None, bias, cfg, dtype), 1, 2)
    return fused_lsg_attention(q, k, v, bias, cfg, dtype, implementation, lsh_projections)


def padded_attention(q, k, v, key_valid, dtype, implementation: str):
    """Dense attention of q [B, T, H, D] over the valid keys of k/v [B, S, H, D] (key_valid [B, S]) through a fused
    `implementation` (resolve's `cross` other than "einsum": the caller's masked softmax). Returns [B, T, H, D] in
    `dtype`."""
    if implementation == "pallas":
        return pallas_padded_attention(q, k, v, key_valid, dtype)
    return fused_padded_attention(q, k, v, key_valid, dtype, implementation)
