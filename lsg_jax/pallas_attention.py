"""LSG attention without sparse keys as two Pallas (Triton) kernels that read keys and values in place.

The cuDNN formulation (lsg_jax.fused_attention) first copies every block's key set - global tokens, previous,
own and next block - into a [blocks, keys] batch, and runs the global tokens' queries through XLA. Here:
- `_local_kernel`: one program per (query tile, batch, head) loops over the global keys and then its block's
  neighbourhood, loading each key tile straight from k and v (online softmax, float32 statistics);
- `_global_kernel`: the G global queries over all keys, split into chunks so that B * H * chunks programs share
  the work; the chunks' partial results are merged with their log-sum-exp in JAX.
Padding comes in as a key-validity vector; nothing is permuted.

Forward only: the backward pass (training) recomputes through the cuDNN / XLA formulation's vector-Jacobian
product. Compiled through Triton on an NVIDIA GPU, run by Pallas' interpreter elsewhere (the tests check it
against the einsum path there). Not yet compiled or timed on a GPU: written to remove the key-set gathers, the
global queries' XLA passes and the concatenations that bench/RESULTS.md measures (about 1.9 ms of the 5.6 ms
encoder forward); `python3 bench/lsg_profile.py --attn-impl pallas` measures it.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

KEY_TILE = 64
QUERY_TILE = 64
GLOBAL_CHUNKS = 16


def pallas_supported(cfg, head_dim: int) -> str | None:
    """None when these kernels take the config, else why not (Triton tiles are powers of two of 16 or more)."""
    if cfg.has_sparse:
        return f"sparsity_type={cfg.sparsity_type!r} has sparse keys (the kernels cover global and local keys)"
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"head dim {head_dim} is not a power of two >= 16"
    if cfg.block_size < KEY_TILE or cfg.block_size % KEY_TILE:
        return f"block_size {cfg.block_size} is not a multiple of {KEY_TILE}"
    return None


def _padded(n: int) -> int:
    """The smallest power of two >= n and >= 16: a Triton tile holding n rows."""
    return max(16, 1 << (n - 1).bit_length())


def _tile_scores(q, k_ref, valid_ref, start, size, limit, scale):
    """Scores [queries, size] of q against keys start..start + size (those at or past `limit` or not valid masked
    to -inf), and which of the tile's keys are before `limit` (the others are not loaded)."""
    positions = start + jnp.arange(size)
    in_range = positions < limit
    k = plgpu.load(k_ref.at[pl.dslice(start, size), :], mask=in_range[:, None], other=0.0)
    valid = plgpu.load(valid_ref.at[pl.dslice(start, size)], mask=in_range, other=0) > 0
    scores = plgpu.dot(q, k.T).astype(jnp.float32) * scale
    return jnp.where((valid & in_range)[None, :], scores, -jnp.inf), in_range


def _online_update(carry, scores, v):
    out, m, l = carry
    m_new = jnp.maximum(m, scores.max(axis=-1))
    correction = jnp.exp(m - m_new)
    p = jnp.exp(scores - m_new[:, None])
    out = out * correction[:, None] + plgpu.dot(p.astype(v.dtype), v).astype(jnp.float32)
    return out, m_new, l * correction + p.sum(axis=-1)


def _local_kernel(q_ref, k_ref, v_ref, valid_ref, o_ref, *, G: int, block_size: int, scale: float):
    tile = pl.program_id(0)
    length = k_ref.shape[0]
    q = plgpu.load(q_ref.at[pl.dslice(G + tile * QUERY_TILE, QUERY_TILE), :])
    D = q.shape[-1]
    carry = (jnp.zeros((QUERY_TILE, D), jnp.float32), jnp.full((QUERY_TILE,), -jnp.inf, jnp.float32),
             jnp.zeros((QUERY_TILE,), jnp.float32))
    GP = _padded(G)
    scores, in_range = _tile_scores(q, k_ref, valid_ref, 0, GP, G, scale)
    v = plgpu.load(v_ref.at[pl.dslice(0, GP), :], mask=in_range[:, None], other=0.0)
    carry = _online_update(carry, scores, v)

    # lax.div on program ids: Triton lowers it directly (jnp's floor division adds sign handling).
    block = jax.lax.div(tile * QUERY_TILE, block_size)
    blocks = (length - G) // block_size  # static
    first = G + jnp.maximum(block - 1, 0) * block_size
    last = G + (jnp.minimum(block + 1, blocks - 1) + 1) * block_size

    def body(index, carry):
        start = first + index * KEY_TILE
        scores, _ = _tile_scores(q, k_ref, valid_ref, start, KEY_TILE, last, scale)
        v = plgpu.load(v_ref.at[pl.dslice(start, KEY_TILE), :])
        return _online_update(carry, scores, v)

    out, m, l = jax.lax.fori_loop(0, jax.lax.div(last - first, KEY_TILE), body, carry)
    plgpu.store(o_ref, (out / l[:, None]).astype(o_ref.dtype))


def _global_kernel(q_ref, k_ref, v_ref, valid_ref, o_ref, m_ref, l_ref, *, G: int, chunk: int, scale: float):
    split = pl.program_id(0)
    length = k_ref.shape[0]
    GP = _padded(G)
    q = plgpu.load(q_ref.at[pl.dslice(0, GP), :], mask=(jnp.arange(GP) < G)[:, None], other=0.0)
    D = q.shape[-1]
    carry = (jnp.zeros((GP, D), jnp.float32), jnp.full((GP,), -jnp.inf, jnp.float32), jnp.zeros((GP,), jnp.float32))
    first = split * chunk
    last = jnp.minimum(first + chunk, length)

    def body(index, carry):
        start = first + index * KEY_TILE
        scores, in_range = _tile_scores(q, k_ref, valid_ref, start, KEY_TILE, last, scale)
        v = plgpu.load(v_ref.at[pl.dslice(start, KEY_TILE), :], mask=in_range[:, None], other=0.0)
        # A tile with no valid key leaves the running maximum at -inf: keep exp() finite.
        return _online_update(carry, jnp.maximum(scores, -1e30), v)

    out, m, l = jax.lax.fori_loop(0, jax.lax.div(last - first + KEY_TILE - 1, KEY_TILE), body, carry)
    plgpu.store(o_ref, out)
    plgpu.store(m_ref, m)
    plgpu.store(l_ref, l)


def _call(kernel, grid, in_specs, out_specs, out_shape, head_dim: int):
    on_gpu = jax.default_backend() == "gpu"
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                          interpret=not on_gpu,
                          compiler_params=plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2))


def pallas_lsg_forward(q, k, v, valid, G: int, block_size: int):
    """Global-token-first q/k/v [B, L, H, D] (a half-precision dtype on GPU), valid [B, L] -> [B, L, H, D]."""
    B, L, H, D = q.shape
    T, GP = L - G, _padded(G)
    scale = 1.0 / math.sqrt(D)
    valid = valid.astype(jnp.int32)
    whole = lambda: pl.BlockSpec((None, L, None, D), lambda i, b, h: (b, 0, h, 0))
    valid_spec = pl.BlockSpec((None, L), lambda i, b, h: (b, 0))
    local = _call(functools.partial(_local_kernel, G=G, block_size=block_size, scale=scale),
                  (T // QUERY_TILE, B, H), [whole(), whole(), whole(), valid_spec],
                  pl.BlockSpec((None, QUERY_TILE, None, D), lambda i, b, h: (b, i, h, 0)),
                  jax.ShapeDtypeStruct((B, T, H, D), q.dtype), D)(q, k, v, valid)
    chunk = KEY_TILE * pl.cdiv(pl.cdiv(L, GLOBAL_CHUNKS), KEY_TILE)
    splits = pl.cdiv(L, chunk)
    partial, m, l = _call(
        functools.partial(_global_kernel, G=G, chunk=chunk, scale=scale), (splits, B, H),
        [whole(), whole(), whole(), valid_spec],
        [pl.BlockSpec((None, None, None, GP, D), lambda i, b, h: (i, b, h, 0, 0)),
         pl.BlockSpec((None, None, None, GP), lambda i, b, h: (i, b, h, 0)),
         pl.BlockSpec((None, None, None, GP), lambda i, b, h: (i, b, h, 0))],
        [jax.ShapeDtypeStruct((splits, B, H, GP, D), jnp.float32),
         jax.ShapeDtypeStruct((splits, B, H, GP), jnp.float32),
         jax.ShapeDtypeStruct((splits, B, H, GP), jnp.float32)], D)(q, k, v, valid)
    # Merge the chunks: each chunk's sums rescaled to the overall maximum.
    top = m.max(axis=0)
    weight = jnp.exp(m - top)
    glob = (partial * weight[..., None]).sum(0) / (l * weight).sum(0)[..., None]  # [B, H, GP, D]
    glob = jnp.swapaxes(glob[:, :, :G], 1, 2).astype(q.dtype)
    return jnp.concatenate([glob, local], axis=1)


def pallas_lsg_attention(q, k, v, bias, cfg, dtype):
    """lsg_attention's contract (q/k/v [B, H, G + T, D], bias [B, G + T] of 0 / NEG_INF; returns [B, H, G + T, D]
    in `dtype`) through the kernels above; its vector-Jacobian product is the cuDNN formulation's (XLA's off a
    GPU), recomputed from q, k and v."""
    reason = pallas_supported(cfg, q.shape[-1])
    if reason:
        raise ValueError(f"attn_implementation='pallas' does not take this model: {reason}; use 'cudnn' or 'auto'")
    return _pallas_attention(q, k, v, bias, cfg, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _pallas_attention(q, k, v, bias, cfg, dtype):
    # Imported here: fused_attention imports attention.py, which imports this module.
    from lsg_jax.fused_attention import compute_dtype, dense_implementation, fused_lsg_attention
    G, bs = cfg.num_global_tokens, cfg.block_size
    if q.shape[2] <= 2 * bs + G:  # short input: full attention, as every formulation does
        return fused_lsg_attention(q, k, v, bias, cfg, dtype, dense_implementation())
    compute = compute_dtype(q.dtype, dense_implementation())  # half precision on a GPU, as cuDNN's
    q, k, v = (jnp.swapaxes(x, 1, 2).astype(compute) for x in (q, k, v))
    return jnp.swapaxes(pallas_lsg_forward(q, k, v, bias == 0, G, bs), 1, 2).astype(dtype)


def _pallas_attention_fwd(q, k, v, bias, cfg, dtype):
    return _pallas_attention(q, k, v, bias, cfg, dtype), (q, k, v, bias)


def _pallas_attention_bwd(cfg, dtype, residuals, g):
    from lsg_jax.fused_attention import dense_implementation, fused_lsg_attention
    q, k, v, bias = residuals
    _, vjp = jax.vjp(lambda q, k, v: fused_lsg_attention(q, k, v, bias, cfg, dtype, dense_implementation()), q, k, v)
    return (*vjp(g), jnp.zeros_like(bias))


_pallas_attention.defvjp(_pallas_attention_fwd, _pallas_attention_bwd)
