"""Which attention implementation runs, decided in one place, and the one entry point of each attention.

`resolve` turns LSGBartConfig.attn_implementation into an `Implementations` value for one forward pass, from the
config (sparsity, block size, head sizes, attention dropout), the compute dtype, whether the pass trains and the
platform; the encoder and decoder hand it down to their layers, which call `lsg_attention` / `padded_attention`
(or, for "pallas", the kernels on the encoder's packed projection). The formulations below this module - einsum
(lsg_jax.attention), cuDNN / XLA (lsg_jax.fused_attention), Triton (lsg_jax.pallas_attention) - decide nothing.
"""
from typing import NamedTuple

import jax.numpy as jnp

from jaxport import attention
from jaxport.attention import default_platform
from lsg_jax.attention import einsum_lsg_attention
from lsg_jax.fused_attention import fused_lsg_attention, fused_padded_attention
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


def resolve(config, dtype, *, training: bool, platform: str | None = None) -> Implementations:
    """config.attn_implementation for a forward pass of a model computing in `dtype`: jaxport.attention.resolve's
    choice (einsum in training with attention dropout; auto: cudnn where cudnn_supported, else einsum; cudnn off an
    NVIDIA GPU an error), with the Pallas kernels on top:

    - "auto" is "pallas" where jaxport's choice is "cudnn" and the kernels take the attention (LSG attention without
      sparse keys, cross-attention with a power-of-two head dim: both faster forward and backward on an H100,
      bench/RESULTS.md);
    - "pallas" is taken as given, except a cross-attention head dim that Triton's tiles do not take: the platform's
      dense fused attention then ("cudnn" on a GPU, "xla" elsewhere). A "pallas" the LSG kernels do not take is
      refused by pallas_lsg_attention.

    platform: jaxport.attention.default_platform()'s name, this process's by default."""
    platform = platform or default_platform()
    dropout = training and config.attention_dropout > 0
    name = config.attn_implementation

    def pick(head_dim: int, pallas_takes_it: bool, pallas_runs_it: bool) -> str:
        if name == "pallas" and not dropout:
            return "pallas" if pallas_runs_it else ("cudnn" if platform == "gpu" else "xla")
        chosen = attention.resolve(name, dtype, head_dim, dropout=dropout, platform=platform)
        return "pallas" if name == "auto" and chosen == "cudnn" and pallas_takes_it else chosen

    lsg_dim = config.d_model // config.encoder_attention_heads
    cross_dim = config.d_model // config.decoder_attention_heads
    cross_pallas = pallas_head_dim_supported(cross_dim)
    return Implementations(pick(lsg_dim, pallas_supported(config, lsg_dim) is None, True),
                           pick(cross_dim, cross_pallas, cross_pallas))


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
