"""Causal self-attention with attention dropout as Pallas (Triton) kernels: flash attention's tiling, so the
[batch, heads, queries, keys] probabilities are never written to memory, with the dropout mask of
jaxport.layers.dropout computed inside the kernels from each element's row and column.

cuDNN's flash attention has no dropout that XLA can run (bench/RESULTS.md, Backpack-GPT2), so models trained with
attention dropout (GPT-2, attn_pdrop 0.1) fall back to einsums that materialise the probabilities, their dropout
and their gradients. Here the forward kernel runs one query tile over the key tiles up to the diagonal with an
online softmax; dropout multiplies the probabilities after the softmax (the normaliser counts every key, as the
einsum path's softmax-then-dropout does). The backward pass is flash attention's from the forward's log-sum-exp:
one kernel per query tile for dq, one per key tile for dk and dv, both recomputing the mask. The mask equals the
einsum path's for the same rng, element for element, so the two implementations give the same result up to
rounding.

q, k, v are [B, T, H, D] as a projection writes them; each program reads its batch element's and head's rows in
place, and under a jit sharded over batch or heads each device runs the kernels on its own part (the mask's row
hashes, computed outside, travel with their rows). Lengths that are not a multiple of the tile are padded
(causality keeps padded keys out of real rows). Compiled through Triton on an NVIDIA GPU, run by Pallas'
interpreter elsewhere (tests check the outputs and gradients against the einsum path there).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxport.dropout_mask import dropout_col_hash, dropout_keep, dropout_row_hash, dropout_scale, dropout_words
from jaxport.pallas_triton import MISSING, takes_head_dim
from jaxport.pallas_triton import triton as plgpu
from jaxport.sharding import per_batch_and_head

TILE = 64  # query and key rows per tile
NUM_STAGES = 2
NUM_WARPS = 4  # for head dims up to 64; twice as many above
LOG2E = math.log2(math.e)  # the kernels' scores are in base 2 (exp2 is one instruction, exp several)


supported = takes_head_dim


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, dropout_rate: float = 0.0,
                     rng: jax.Array | None = None) -> jax.Array:
    """softmax(scale * q k^T, causal) v with the probabilities dropped out at `dropout_rate` (rng None: none), for q,
    k, v [B, T, H, D]; [B, T, H, D] in q's dtype."""
    if plgpu is None:
        raise RuntimeError(MISSING)
    if not supported(q.shape[-1]):
        raise ValueError(f"head dim {q.shape[-1]} is not a power of two >= 16")
    B, T, H, _ = q.shape
    rate = dropout_rate if rng is not None else 0.0
    words = dropout_words(rng) if rate else jnp.zeros((2,), jnp.uint32)
    # The mask's row and column hashes: row (b * H + h) * T + t of the einsum path's [B, H, T, T] probabilities.
    rows = jnp.arange(B * H * T, dtype=jnp.uint32).reshape(B, H, T)
    row_hash, col_hash = dropout_row_hash(rows, words), dropout_col_hash(jnp.arange(T, dtype=jnp.uint32), words)
    padded = pl.cdiv(T, TILE) * TILE
    pad = lambda x, axis: jnp.pad(x, [(0, padded - T if i == axis else 0) for i in range(x.ndim)])
    q, k, v = (pad(x, 1) for x in (q, k, v))
    out = _attention(q, k, v, pad(row_hash, 2), pad(col_hash, 0), scale, rate)
    return out[:, :T]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, row_hash, col_hash, scale, rate):
    return _forward(q, k, v, row_hash, col_hash, scale, rate)[0]


def _attention_fwd(q, k, v, row_hash, col_hash, scale, rate):
    out, lse = _forward(q, k, v, row_hash, col_hash, scale, rate)
    return out, (q, k, v, row_hash, col_hash, out, lse)


def _attention_bwd(scale, rate, residuals, d_out):
    q, k, v, row_hash, col_hash, out, lse = residuals
    # sum_j p_ij dp_ij = dO_i . O_i, dropout included (O sums the dropped-out probabilities times v).
    delta = jnp.einsum("bthd,bthd->bht", d_out.astype(jnp.float32), out.astype(jnp.float32))
    inputs = (q, k, v, d_out.astype(q.dtype), lse, delta, row_hash, col_hash)
    return *_backward(*inputs, scale, rate), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


@per_batch_and_head("bthd, bthd, bthd, bht, t -> bthd, bht", statics=2)
def _forward(q, k, v, row_hash, col_hash, scale, rate):
    return tuple(_call(functools.partial(_forward_kernel, scale=scale, rate=rate), (q, k, v, row_hash, col_hash),
                       ["rows", "stats"], [q.dtype, jnp.float32]))


@per_batch_and_head("bthd, bthd, bthd, bthd, bht, bht, bht, t -> bthd, bthd, bthd", statics=2)
def _backward(q, k, v, d_out, lse, delta, row_hash, col_hash, scale, rate):
    inputs = (q, k, v, d_out, lse, delta, row_hash, col_hash)
    dq = _call(functools.partial(_dq_kernel, scale=scale, rate=rate), inputs, ["rows"], [q.dtype])[0]
    dk, dv = _call(functools.partial(_dkv_kernel, scale=scale, rate=rate), inputs, ["rows", "rows"],
                   [k.dtype, v.dtype])
    return dq, dk, dv


def _call(kernel, inputs, outputs, dtypes):
    """pallas_call over (query or key tiles, B, H); each program sees its batch element's and head's whole rows of
    every input: [B, T, H, D] (q, k, v, dO), [B, H, T] (row statistics and hashes) or [T] (column hashes).
    outputs: "rows" ([B, T, H, D]) or "stats" ([B, H, T]), each written a tile per program."""
    B, T, H, D = inputs[0].shape

    def whole(x):
        if x.ndim == 4:
            return pl.BlockSpec((None, T, None, D), lambda i, b, h: (b, 0, h, 0))
        if x.ndim == 3:
            return pl.BlockSpec((None, None, T), lambda i, b, h: (b, h, 0))
        return pl.BlockSpec((T,), lambda i, b, h: (0,))

    specs = {"rows": pl.BlockSpec((None, TILE, None, D), lambda i, b, h: (b, i, h, 0)),
             "stats": pl.BlockSpec((None, None, TILE), lambda i, b, h: (b, h, i))}
    shapes = {"rows": (B, T, H, D), "stats": (B, H, T)}
    return pl.pallas_call(kernel, grid=(T // TILE, B, H), in_specs=[whole(x) for x in inputs],
                          out_specs=[specs[o] for o in outputs],
                          out_shape=[jax.ShapeDtypeStruct(shapes[o], d) for o, d in zip(outputs, dtypes, strict=True)],
                          interpret=jax.default_backend() != "gpu",
                          compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS * (1 if D <= 64 else 2),
                                                               num_stages=NUM_STAGES))(*inputs)


# ------------------------------------------------------------------------------------------------------ kernels

def _tile(ref, start):
    return plgpu.load(ref.at[pl.dslice(start, TILE)])


def _dropped(p, row_hash, col_hash, rate):
    """p with the dropout mask of these rows and columns applied (kept elements scaled up)."""
    if not rate:
        return p
    return jnp.where(dropout_keep(row_hash[:, None], col_hash[None, :], rate), p * dropout_scale(rate), 0.0)


def _causal_scores(q, k, query_start, key_start, scale):
    """scale * q k^T times log2(e), -inf above the diagonal."""
    s = plgpu.dot(q, k.T).astype(jnp.float32) * (scale * LOG2E)
    rows = query_start + jnp.arange(TILE)
    cols = key_start + jnp.arange(TILE)
    return jnp.where(cols[None, :] <= rows[:, None], s, -jnp.inf)


def _forward_kernel(q_ref, k_ref, v_ref, row_hash_ref, col_hash_ref, o_ref, lse_ref, *, scale, rate):
    start = pl.program_id(0) * TILE
    q, row_hash = _tile(q_ref, start), _tile(row_hash_ref, start)

    def body(index, carry):
        out, m, l = carry
        key_start = index * TILE
        v = _tile(v_ref, key_start)
        s = _causal_scores(q, _tile(k_ref, key_start), start, key_start, scale)
        m_new = jnp.maximum(m, s.max(axis=-1))  # finite: every row sees key 0 in the first tile
        correction = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        kept = _dropped(p, row_hash, _tile(col_hash_ref, key_start), rate)
        out = out * correction[:, None] + plgpu.dot(kept.astype(v.dtype), v).astype(jnp.float32)
        return out, m_new, l * correction + p.sum(axis=-1)

    init = (jnp.zeros((TILE, q.shape[-1]), jnp.float32), jnp.full((TILE,), -jnp.inf, jnp.float32),
            jnp.zeros((TILE,), jnp.float32))
    out, m, l = jax.lax.fori_loop(0, pl.program_id(0) + 1, body, init)  # the key tiles up to the diagonal
    plgpu.store(o_ref, (out / l[:, None]).astype(o_ref.dtype))
    plgpu.store(lse_ref, m + jnp.log2(l))  # base 2, times log2(e): what the backward kernels subtract


def _score_grads(q, k, v, do, lse, delta, row_hash, col_hash, query_start, key_start, scale, rate):
    """One (query tile, key tile) of the backward pass: the probabilities p, as dropped out (what multiplied v), and
    the scores' gradient ds."""
    p = jnp.exp2(_causal_scores(q, k, query_start, key_start, scale) - lse[:, None])
    dp = _dropped(plgpu.dot(do, v.T).astype(jnp.float32), row_hash, col_hash, rate)
    return _dropped(p, row_hash, col_hash, rate), p * (dp - delta[:, None])


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, row_hash_ref, col_hash_ref, dq_ref, *, scale,
               rate):
    start = pl.program_id(0) * TILE
    q, do, lse, delta, row_hash = (_tile(r, start) for r in (q_ref, do_ref, lse_ref, delta_ref, row_hash_ref))

    def body(index, dq):
        key_start = index * TILE
        k = _tile(k_ref, key_start)
        _, ds = _score_grads(q, k, _tile(v_ref, key_start), do, lse, delta, row_hash,
                             _tile(col_hash_ref, key_start), start, key_start, scale, rate)
        return dq + plgpu.dot(ds.astype(k.dtype), k).astype(jnp.float32)

    dq = jax.lax.fori_loop(0, pl.program_id(0) + 1, body, jnp.zeros(q.shape, jnp.float32))
    plgpu.store(dq_ref, (dq * scale).astype(dq_ref.dtype))


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, row_hash_ref, col_hash_ref, dk_ref, dv_ref, *,
                scale, rate):
    start = pl.program_id(0) * TILE
    k, v, col_hash = _tile(k_ref, start), _tile(v_ref, start), _tile(col_hash_ref, start)

    def body(index, carry):
        dk, dv = carry
        query_start = index * TILE
        q, do = _tile(q_ref, query_start), _tile(do_ref, query_start)
        kept, ds = _score_grads(q, k, v, do, _tile(lse_ref, query_start), _tile(delta_ref, query_start),
                                _tile(row_hash_ref, query_start), col_hash, query_start, start, scale, rate)
        return (dk + plgpu.dot(ds.T.astype(q.dtype), q).astype(jnp.float32),
                dv + plgpu.dot(kept.T.astype(do.dtype), do).astype(jnp.float32))

    zeros = jnp.zeros(k.shape, jnp.float32)
    # The query tiles from the diagonal down: the ones that see this key tile.
    dk, dv = jax.lax.fori_loop(pl.program_id(0), q_ref.shape[0] // TILE, body, (zeros, zeros))
    plgpu.store(dk_ref, (dk * scale).astype(dk_ref.dtype))
    plgpu.store(dv_ref, dv.astype(dv_ref.dtype))
