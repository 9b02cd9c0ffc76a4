"""LSG attention without sparse keys, and dense attention over padded keys, as Pallas (Triton) kernels that read
queries, keys and values in place.

The cuDNN formulation (lsg_jax.fused_attention) first copies every block's key set - global tokens, previous,
own and next block - into a [blocks, keys] batch, runs the global tokens' queries through XLA, and its backward
pass adds the key sets' gradients back. Here each (batch, head) keeps its rows where they are:

- `_local_kernel`, one program per local query tile: online softmax over the global keys and its block's
  neighbourhood; backward (flash attention's, from the forward's log-sum-exp): `_local_dq_kernel` per local query
  tile over the same keys, `_local_dkv_kernel` per local key tile over the queries of the three blocks that see
  it and the global queries;
- split kernels for a few queries over many keys (or a few keys under many queries): `_split_kernel` runs a query
  tile over one chunk of the keys, so that tiles x chunks x B x H programs share the work, the chunks merged by
  their log-sum-exp in JAX; `_split_dq_kernel` likewise; `_split_dkv_kernel` runs a key tile under one chunk of the
  queries, partials summed in JAX. They serve the G global queries and keys of LSG attention, and the decoder's
  cross-attention (`pallas_padded_attention`: a few hundred queries over the whole encoder output, where cuDNN's
  query tiles leave most of the GPU idle).

LSG attention takes q, k and v as one projection writes them, packed [B, L, 3, H, D] without biases, and reads
them in place: the forward kernels add the query bias to the query tiles they load and the value bias to the
output rows (a row's probabilities sum to 1); the key bias is left out, softmax cancels it. The local kernels
write their rows into whole-length outputs (the backward ones into one packed gradient, the dk/dv kernel in place
after the dq kernel), and the global rows are set in place after.

Padding comes in as a key-validity vector. LSG's global tokens are always valid keys, so no row of it is empty;
in `pallas_padded_attention` a row without a valid key averages all values (the einsum path's result) and gets
no gradient. Under a jit sharded over batch or heads (data or tensor parallelism), each device runs the kernels on
its own part (custom_partitioning). Compiled through Triton on an NVIDIA GPU, run by Pallas' interpreter elsewhere
(the tests check outputs and gradients against the einsum path there).
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxport.pallas_triton import MISSING, takes_head_dim
from jaxport.pallas_triton import triton as plgpu
from jaxport.sharding import per_batch_and_head

KEY_TILE = 64
QUERY_TILE = 64
FORWARD_QUERY_TILE = 128  # the forward local kernel's, where blocks hold whole tiles: each loaded key serves more rows
GLOBAL_CHUNKS = 16
FORWARD_GLOBAL_CHUNKS = 32  # for the global queries' forward: 64 of them over every key, more programs in flight
NUM_STAGES = 2
FORWARD_NUM_STAGES = 3  # the forward local kernel's pipeline depth (its 128-query tiles: 4% quicker on an H100)
NUM_WARPS = 4  # for head dims up to 64; twice as many above
LOG2E = math.log2(math.e)  # the kernels' scores are in base 2 (exp2 is one instruction, exp several)


pallas_head_dim_supported = takes_head_dim


def compute_dtype(dtype):
    """Triton's dots take half precision: on a GPU, other inputs are computed in bfloat16 (as cuDNN computes them);
    Pallas' interpreter, elsewhere, computes in their own dtype."""
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) not in map(jnp.dtype, (jnp.bfloat16, jnp.float16)):
        return jnp.bfloat16
    return dtype


def pallas_supported(cfg, head_dim: int) -> str | None:
    """None when the LSG kernels take the config, else why not."""
    if plgpu is None:
        return MISSING
    if cfg.has_sparse:
        return f"sparsity_type={cfg.sparsity_type!r} has sparse keys (the kernels cover global and local keys)"
    if not pallas_head_dim_supported(head_dim):
        return f"head dim {head_dim} is not a power of two >= 16"
    if cfg.block_size < KEY_TILE or cfg.block_size % KEY_TILE:
        return f"block_size {cfg.block_size} is not a multiple of {KEY_TILE}"
    return None


def _padded(n: int) -> int:
    """The smallest power of two >= n and >= 16: a Triton tile holding n rows."""
    return max(16, 1 << (n - 1).bit_length())


def _rows(ref, start, size, limit, other=0):
    """Rows start..start + size of ref (those at or past `limit` read as `other`) and which were in range."""
    in_range = start + jnp.arange(size) < limit
    mask = in_range if len(ref.shape) == 1 else in_range[:, None]
    return plgpu.load(ref.at[pl.dslice(start, size)], mask=mask, other=other), in_range


def _keys(k_ref, v_ref, valid_ref, start, size, limit):
    """A key tile: k, v and which keys count (valid and before `limit`)."""
    k, in_range = _rows(k_ref, start, size, limit)
    v, _ = _rows(v_ref, start, size, limit)
    valid, _ = _rows(valid_ref, start, size, limit)
    return k, v, in_range & (valid > 0)


def _forward_queries(q, bias_ref, scale):
    """A forward kernel's query tile: q plus the query bias (the first half of bias_ref, this head's [query bias,
    value bias], float32), times the softmax scale and log2(e) - once per query instead of once per score (BART
    also scales its queries before the product)."""
    D = q.shape[-1]
    biased = q.astype(jnp.float32) + plgpu.load(bias_ref.at[pl.dslice(0, D)])[None, :]
    return (biased * (scale * LOG2E)).astype(q.dtype)


def _queries(q_ref, do_ref, lse_ref, delta_ref, start, size, limit):
    """A query tile for the backward pass: q, the output's cotangent, the forward's log-sum-exp and the rows'
    sum(dO * O), and which rows are before `limit`."""
    q, in_range = _rows(q_ref, start, size, limit)
    do, _ = _rows(do_ref, start, size, limit)
    lse, _ = _rows(lse_ref, start, size, limit)
    delta, _ = _rows(delta_ref, start, size, limit)
    return q, do, lse, delta, in_range


def _scores(q, k, keys_on):
    """The scores of a _forward_queries tile: times log2(e), for exp2."""
    return jnp.where(keys_on[None, :], plgpu.dot(q, k.T).astype(jnp.float32), -jnp.inf)


def _online_update(carry, scores, v):
    out, m, l = carry
    m_new = jnp.maximum(m, scores.max(axis=-1))
    correction = jnp.exp2(m - m_new)
    p = jnp.exp2(scores - m_new[:, None])
    out = out * correction[:, None] + plgpu.dot(p.astype(v.dtype), v).astype(jnp.float32)
    return out, m_new, l * correction + p.sum(axis=-1)


def _neighbourhood(tile_start, G: int, block_size: int, length: int):
    """Rows G + tile_start.. belong to one block; the local rows of it and its neighbours: [first, last)."""
    block = jax.lax.div(tile_start, block_size)  # lax.div: Triton lowers it directly (jnp's // adds sign handling)
    blocks = (length - G) // block_size  # static
    first = G + jnp.maximum(block - 1, 0) * block_size
    last = G + (jnp.minimum(block + 1, blocks - 1) + 1) * block_size
    return first, last


def _tile_loop(first, last, tile: int, body, carry):
    """body(start, carry) for start = first, first + tile, ... < last."""
    count = jax.lax.div(last - first + tile - 1, tile)
    return jax.lax.fori_loop(0, count, lambda index, carry: body(first + index * tile, carry), carry)


# ------------------------------------------------------------------------------------------------------ kernels

def _first_tile(n: int, tile: int) -> int:
    """The tile for rows 0..n: `tile`, or the smallest power of two >= n (and >= 16) when n is smaller."""
    return min(tile, _padded(n))


def _start_online(rows: int, D: int):
    return (jnp.zeros((rows, D), jnp.float32), jnp.full((rows,), -jnp.inf, jnp.float32),
            jnp.zeros((rows,), jnp.float32))


def _local_kernel(q_ref, k_ref, v_ref, valid_ref, bias_ref, o_ref, lse_ref, *, G: int, block_size: int,
                  scale: float, tile: int):
    start = pl.program_id(0) * tile
    q = _forward_queries(plgpu.load(q_ref.at[pl.dslice(G + start, tile)]), bias_ref, scale)

    def visit(size, limit):
        def body(key_start, carry):
            k, v, keys_on = _keys(k_ref, v_ref, valid_ref, key_start, size, limit)
            return _online_update(carry, _scores(q, k, keys_on), v)
        return body

    # The global keys first: all valid, so every row's maximum is finite from the first tile on.
    carry = _tile_loop(0, G, _first_tile(G, KEY_TILE), visit(_first_tile(G, KEY_TILE), G),
                       _start_online(tile, q.shape[-1]))
    out, m, l = _tile_loop(*_neighbourhood(start, G, block_size, k_ref.shape[0]), KEY_TILE,
                           visit(KEY_TILE, k_ref.shape[0]), carry)
    rows = pl.dslice(G + start, tile)
    # The value bias once per row: the probabilities sum to 1.
    value_bias = plgpu.load(bias_ref.at[pl.dslice(q.shape[-1], q.shape[-1])])
    plgpu.store(o_ref.at[rows], (out / l[:, None] + value_bias[None, :]).astype(o_ref.dtype))
    plgpu.store(lse_ref.at[rows], (m + jnp.log2(l)) / LOG2E)


def _split_position(tile: int, splits: int, chunk: int, length: int):
    """A split kernel's program (id tile_index * splits + split): the first row of its tile, and the rows
    [first, last) of its chunk of the other side (`length` rows)."""
    index = pl.program_id(0)
    first = jax.lax.rem(index, splits) * chunk
    return jax.lax.div(index, splits) * tile, first, jnp.minimum(first + chunk, length)


def _split_kernel(q_ref, k_ref, v_ref, valid_ref, bias_ref, o_ref, m_ref, l_ref, *, queries: int, tile: int,
                  splits: int, chunk: int, scale: float):
    """Query rows tile * t.. (before `queries`) over key chunk `split` (program id tile * splits + split): the
    unnormalised output, running maximum (of the scores times log2(e)) and sum of the chunk."""
    tile_start, first, last = _split_position(tile, splits, chunk, k_ref.shape[0])
    q = _forward_queries(_rows(q_ref, tile_start, tile, queries)[0], bias_ref, scale)

    def visit(key_start, carry):
        k, v, keys_on = _keys(k_ref, v_ref, valid_ref, key_start, KEY_TILE, last)
        # A tile with no valid key would leave the running maximum at -inf: keep exp2() finite.
        return _online_update(carry, jnp.maximum(_scores(q, k, keys_on), -1e30), v)

    out, m, l = _tile_loop(first, last, KEY_TILE, visit, _start_online(tile, q.shape[-1]))
    plgpu.store(o_ref, out)
    plgpu.store(m_ref, m)
    plgpu.store(l_ref, l)


def _score_grads(q, k, v, do, lse, delta, on, scale):
    """Flash attention's backward for one (query tile, key tile): the probabilities p (0 where `on` is False) and
    the scores' gradient ds, from the forward's log-sum-exp (times log2(e), as _backward_inputs passes it)."""
    s = plgpu.dot(q, k.T).astype(jnp.float32) * (scale * LOG2E)
    p = jnp.where(on, jnp.exp2(s - lse[:, None]), 0.0)
    dp = plgpu.dot(do, v.T).astype(jnp.float32)
    return p, p * (dp - delta[:, None])


def _add_dq(dq, q, do, lse, delta, k_ref, v_ref, valid_ref, start, size, limit, scale):
    """dq (without the softmax scale) plus the contribution of key rows start..start + size (before `limit`)."""
    k, v, keys_on = _keys(k_ref, v_ref, valid_ref, start, size, limit)
    _, ds = _score_grads(q, k, v, do, lse, delta, keys_on[None, :], scale)
    return dq + plgpu.dot(ds.astype(k.dtype), k).astype(jnp.float32)


def _add_dkv(carry, k, v, keys_on, q_ref, do_ref, lse_ref, delta_ref, start, size, limit, scale):
    """(dk without the softmax scale, dv) of a key tile plus the contribution of query rows start..start + size
    (before `limit`)."""
    dk, dv = carry
    q, do, lse, delta, rows_on = _queries(q_ref, do_ref, lse_ref, delta_ref, start, size, limit)
    p, ds = _score_grads(q, k, v, do, lse, delta, rows_on[:, None] & keys_on[None, :], scale)
    return (dk + plgpu.dot(ds.T.astype(q.dtype), q).astype(jnp.float32),
            dv + plgpu.dot(p.T.astype(do.dtype), do).astype(jnp.float32))


def _slot(index: int):
    """A slot of a packed gradient block [rows, 3, D] as a ref index (plgpu.store takes array indices, not ints)."""
    return jnp.int32(index)


def _local_dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dqkv_ref, *, G: int,
                     block_size: int, scale: float):
    start = G + pl.program_id(0) * QUERY_TILE
    q, do, lse, delta, _ = _queries(q_ref, do_ref, lse_ref, delta_ref, start, QUERY_TILE, start + QUERY_TILE)
    add = functools.partial(_add_dq, q=q, do=do, lse=lse, delta=delta, k_ref=k_ref, v_ref=v_ref,
                            valid_ref=valid_ref, scale=scale)
    visit = lambda size, limit: lambda key_start, dq: add(dq, start=key_start, size=size, limit=limit)
    dq = _tile_loop(0, G, _first_tile(G, KEY_TILE), visit(_first_tile(G, KEY_TILE), G),
                    jnp.zeros(q.shape, jnp.float32))  # the global keys
    dq = _tile_loop(*_neighbourhood(start - G, G, block_size, k_ref.shape[0]), KEY_TILE,
                    visit(KEY_TILE, k_ref.shape[0]), dq)
    plgpu.store(dqkv_ref.at[pl.dslice(start, QUERY_TILE), _slot(0)], (dq * scale).astype(dqkv_ref.dtype))


def _local_dkv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, _, dqkv_ref, *,
                      G: int, block_size: int, scale: float):
    """dk and dv into slots 1 and 2 of the packed gradient that _local_dq_kernel wrote slot 0 of (aliased: `_`)."""
    start = G + pl.program_id(0) * KEY_TILE
    k, v, keys_on = _keys(k_ref, v_ref, valid_ref, start, KEY_TILE, start + KEY_TILE)
    add = functools.partial(_add_dkv, k=k, v=v, keys_on=keys_on, q_ref=q_ref, do_ref=do_ref, lse_ref=lse_ref,
                            delta_ref=delta_ref, scale=scale)
    visit = lambda size, limit: lambda query_start, carry: add(carry, start=query_start, size=size, limit=limit)
    zeros = jnp.zeros(k.shape, jnp.float32)
    carry = _tile_loop(0, G, _first_tile(G, QUERY_TILE), visit(_first_tile(G, QUERY_TILE), G),
                       (zeros, zeros))  # the global queries see every key
    dk, dv = _tile_loop(*_neighbourhood(start - G, G, block_size, q_ref.shape[0]), QUERY_TILE,
                        visit(QUERY_TILE, q_ref.shape[0]), carry)
    rows = pl.dslice(start, KEY_TILE)
    plgpu.store(dqkv_ref.at[rows, _slot(1)], (dk * scale).astype(dqkv_ref.dtype))
    plgpu.store(dqkv_ref.at[rows, _slot(2)], dv.astype(dqkv_ref.dtype))


def _split_dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dq_ref, *, queries: int,
                     tile: int, splits: int, chunk: int, scale: float):
    """dq of query rows tile * t.. (before `queries`) from key chunk `split` (program id tile * splits + split)."""
    tile_start, first, last = _split_position(tile, splits, chunk, k_ref.shape[0])
    q, do, lse, delta, _ = _queries(q_ref, do_ref, lse_ref, delta_ref, tile_start, tile, queries)
    add = functools.partial(_add_dq, q=q, do=do, lse=lse, delta=delta, k_ref=k_ref, v_ref=v_ref,
                            valid_ref=valid_ref, scale=scale)
    dq = _tile_loop(first, last, KEY_TILE, lambda key_start, dq: add(dq, start=key_start, size=KEY_TILE, limit=last),
                    jnp.zeros(q.shape, jnp.float32))
    plgpu.store(dq_ref, dq * scale)


def _split_dkv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, keys: int,
                      tile: int, splits: int, chunk: int, scale: float):
    """dk, dv of key rows tile * t.. (before `keys`) from query chunk `split` (program id tile * splits + split)."""
    tile_start, first, last = _split_position(tile, splits, chunk, q_ref.shape[0])
    k, v, keys_on = _keys(k_ref, v_ref, valid_ref, tile_start, tile, keys)
    add = functools.partial(_add_dkv, k=k, v=v, keys_on=keys_on, q_ref=q_ref, do_ref=do_ref, lse_ref=lse_ref,
                            delta_ref=delta_ref, scale=scale)
    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = _tile_loop(first, last, QUERY_TILE,
                        lambda query_start, carry: add(carry, start=query_start, size=QUERY_TILE, limit=last),
                        (zeros, zeros))
    plgpu.store(dk_ref, (dk * scale).astype(dk_ref.dtype))
    plgpu.store(dv_ref, dv.astype(dv_ref.dtype))


# ------------------------------------------------------------------------------------------------------ calling

class _Slot(NamedTuple):
    """q, k or v (slot 0, 1, 2) of a projection's packed [B, L, 3, H, D] output, read in place by the kernels."""
    packed: jax.Array
    slot: int

    @property
    def shape(self):
        B, L, _, H, D = self.packed.shape
        return B, L, H, D

    @property
    def dtype(self):
        return self.packed.dtype


def _slots(qkv):
    return tuple(_Slot(qkv, slot) for slot in range(3))


def _call(kernel, grid, inputs, out_specs, out_shape, head_dim: int, aliases=None, stages: int = NUM_STAGES):
    """pallas_call over grid (tiles or tiles x chunks, B, H); each program sees whole rows of its batch element and
    head of every input: [B, rows, H, D] (q, k, v, ...; or a _Slot of a packed projection), [B, L, 3, H, D] (a
    packed gradient, all three slots), [B, rows] (key validity) or [B, H, rows] (per-row statistics; the biases).
    `aliases`: {input index: output index} written in place; `stages`: Triton's software pipeline depth."""
    def whole(x):
        if isinstance(x, _Slot):
            B, L, H, D = x.shape
            return pl.BlockSpec((None, L, None, None, D), lambda i, b, h, slot=x.slot: (b, 0, slot, h, 0))
        if x.ndim == 5:
            return _packed_spec(x.shape)
        if x.ndim == 4:
            return pl.BlockSpec((None, x.shape[1], None, x.shape[3]), lambda i, b, h: (b, 0, h, 0))
        if x.ndim == 2:
            return pl.BlockSpec((None, x.shape[1]), lambda i, b, h: (b, 0))
        return pl.BlockSpec((None, None, x.shape[2]), lambda i, b, h: (b, h, 0))
    arrays = [x.packed if isinstance(x, _Slot) else x for x in inputs]
    return pl.pallas_call(kernel, grid=grid, in_specs=[whole(x) for x in inputs], out_specs=out_specs,
                          out_shape=out_shape, input_output_aliases=aliases or {},
                          interpret=jax.default_backend() != "gpu",
                          compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS * (1 if head_dim <= 64 else 2),
                                                               num_stages=stages))(*arrays)


def _local_outputs(B, H, L, D, dtype):
    """Out specs and shapes of the local forward kernel's results, out [B, L, H, D] and lse [B, H, L] float32: each
    program writes its own rows (after the G global ones) into whole-row blocks, so the global rows go in after
    with an in-place update instead of a concatenation copying every local row."""
    return ([pl.BlockSpec((None, L, None, D), lambda i, b, h: (b, 0, h, 0)),
             pl.BlockSpec((None, None, L), lambda i, b, h: (b, h, 0))],
            [jax.ShapeDtypeStruct((B, L, H, D), dtype), jax.ShapeDtypeStruct((B, H, L), jnp.float32)])


def _packed_spec(shape):
    """All three slots of a packed [B, L, 3, H, D] array, for the program's batch element and head."""
    B, L, slots, H, D = shape
    return pl.BlockSpec((None, L, slots, None, D), lambda i, b, h: (b, 0, 0, h, 0))


def _chunking(rows: int, chunks: int = GLOBAL_CHUNKS) -> tuple[int, int]:
    """(chunk, number of chunks) splitting `rows` for the split kernels: whole tiles, about `chunks`."""
    chunk = KEY_TILE * pl.cdiv(pl.cdiv(rows, chunks), KEY_TILE)
    return chunk, pl.cdiv(rows, chunk)


def _split_call(kernel, inputs, rows: int, tile: int, splits: int, chunk: int, outputs, D: int, scale: float,
                **count):
    """A split kernel over ceil(rows / tile) tiles x `splits` chunks: float32 per-chunk partials
    [splits, B, H, tiles * tile(, D)] for each output in `outputs` ("rows" or "matrix")."""
    B, H = inputs[0].shape[0], inputs[0].shape[2]
    tiles = pl.cdiv(rows, tile)
    specs, shapes = [], []
    for kind in outputs:
        cols = (D,) if kind == "matrix" else ()
        index = lambda i, b, h, cols=cols: (jax.lax.rem(i, splits), b, h, jax.lax.div(i, splits), *(0,) * len(cols))
        specs.append(pl.BlockSpec((None, None, None, tile, *cols), index))
        shapes.append(jax.ShapeDtypeStruct((splits, B, H, tiles * tile, *cols), jnp.float32))
    return _call(functools.partial(kernel, tile=tile, splits=splits, chunk=chunk, scale=scale, **count),
                 (tiles * splits, B, H), inputs, specs, shapes, D)


def _split_forward(q, k, v, valid, bias, queries: int, chunks: int = GLOBAL_CHUNKS):
    """Query rows 0..queries of q [B, *, H, D] over all keys in about `chunks` chunks: (out [B, queries, H, D],
    lse [B, H, queries])."""
    D = q.shape[-1]
    chunk, splits = _chunking(k.shape[1], chunks)
    partial, m, l = _split_call(_split_kernel, (q, k, v, valid, bias), queries, _first_tile(queries, QUERY_TILE),
                                splits, chunk, ("matrix", "rows", "rows"), D, 1.0 / math.sqrt(D), queries=queries)
    # Merge the chunks: each chunk's sums rescaled to the overall maximum.
    top = m.max(axis=0)
    weight = jnp.exp2(m - top)
    total = (l * weight).sum(0)
    out = (partial * weight[..., None]).sum(0) / total[..., None] + bias[:, :, None, D:]  # [B, H, rows, D]
    return jnp.swapaxes(out[:, :, :queries], 1, 2).astype(q.dtype), ((top + jnp.log2(total)) / LOG2E)[:, :, :queries]


def _split_dq(inputs, queries: int):
    """dq [B, queries, H, D] (float32) of query rows 0..queries over all keys."""
    q, k = inputs[0], inputs[1]
    D = q.shape[-1]
    chunk, splits = _chunking(k.shape[1])
    dq, = _split_call(_split_dq_kernel, inputs, queries, _first_tile(queries, QUERY_TILE), splits, chunk,
                      ("matrix",), D, 1.0 / math.sqrt(D), queries=queries)
    return jnp.swapaxes(dq.sum(0)[:, :, :queries], 1, 2)


def _split_dkv(inputs, keys: int, splits: int):
    """dk, dv [B, keys, H, D] of key rows 0..keys under all queries, in `splits` query chunks: float32 sums of the
    chunks' partials, or with one chunk, written by the kernel in q's dtype and this layout (the decoder's
    cross-attention: float32 partials [1, B, H, S, D] to transpose would double the size of what it keeps)."""
    q = inputs[0]
    B, _, H, D = q.shape
    chunk = QUERY_TILE * pl.cdiv(pl.cdiv(q.shape[1], splits), QUERY_TILE)
    tile, chunks = _first_tile(keys, KEY_TILE), pl.cdiv(q.shape[1], chunk)
    if chunks == 1:
        kernel = functools.partial(_split_dkv_kernel, tile=tile, splits=1, chunk=chunk, scale=1.0 / math.sqrt(D),
                                   keys=keys)
        spec = pl.BlockSpec((None, tile, None, D), lambda i, b, h: (b, i, h, 0))
        shape = jax.ShapeDtypeStruct((B, pl.cdiv(keys, tile) * tile, H, D), q.dtype)
        return tuple(x[:, :keys] for x in _call(kernel, (pl.cdiv(keys, tile), B, H), inputs, [spec] * 2,
                                                [shape] * 2, D))
    partials = _split_call(_split_dkv_kernel, inputs, keys, tile, chunks, chunk, ("matrix", "matrix"), D,
                           1.0 / math.sqrt(D), keys=keys)
    return tuple(jnp.swapaxes(x.sum(0)[:, :, :keys], 1, 2) for x in partials)


def _backward_inputs(q, k, v, valid, out, lse, d_out, value_bias=None):
    """The backward kernels' inputs: d_out in q's dtype, lse times log2(e) (the kernels' base-2 scores) and
    delta = sum(d_out * out) per row [B, H, rows]; with `value_bias` [B, H, D] (v came without it, out with it), of
    out - value_bias: the bias shifts every dP of a row by the same d_out . bias, as it shifted out."""
    attended = out.astype(jnp.float32) - (0 if value_bias is None else value_bias[:, None])
    d_out = d_out.astype(q.dtype)
    delta = jnp.swapaxes((d_out.astype(jnp.float32) * attended).sum(-1), 1, 2)
    return (q, k, v, valid, d_out, lse * LOG2E, delta)


@per_batch_and_head("bljhd, bl, bhe -> blhd, bhl", statics=2)
def pallas_lsg_forward(qkv, valid, bias, G: int, block_size: int):
    """Global-token-first qkv [B, L, 3, H, D] (q, k, v packed as one projection writes them, without biases; a
    half-precision dtype on GPU), valid [B, L] int32, bias [B, H, 2 * D] float32 (each head's query and value
    biases) -> (out [B, L, H, D], log-sum-exp of every row's scores [B, H, L] float32)."""
    q, k, v = _slots(qkv)
    B, L, H, D = q.shape
    tile = FORWARD_QUERY_TILE if block_size % FORWARD_QUERY_TILE == 0 else QUERY_TILE
    out, lse = _call(functools.partial(_local_kernel, G=G, block_size=block_size, scale=1.0 / math.sqrt(D),
                                       tile=tile),
                     ((L - G) // tile, B, H), (q, k, v, valid, bias), *_local_outputs(B, H, L, D, q.dtype), D,
                     stages=FORWARD_NUM_STAGES)
    glob, glob_lse = _split_forward(q, k, v, valid, bias, G, FORWARD_GLOBAL_CHUNKS)
    return out.at[:, :G].set(glob), lse.at[:, :, :G].set(glob_lse)


@per_batch_and_head("bljhd, bl, bhe, blhd, bhl, blhd -> bljhd, bhe", statics=2)
def pallas_lsg_backward(qkv, valid, bias, out, lse, d_out, G: int, block_size: int):
    """The gradients of qkv [B, L, 3, H, D] and bias [B, H, 2 * D] for pallas_lsg_forward's out and lse, given
    out's cotangent d_out. The dq kernel writes slot 0 of the packed gradient, the dk/dv kernel slots 1 and 2 of the
    same buffer, the global rows go in last: no copy of the local rows. The kernels here read q with its bias added
    by XLA (one pass): added to every query tile that they load, 13 per key tile, it cost more (+35%)."""
    _, k, v = _slots(qkv)
    B, L, H, D = k.shape
    q = (qkv[:, :, 0].astype(jnp.float32) + bias[:, None, :, :D]).astype(qkv.dtype)
    inputs = _backward_inputs(q, k, v, valid, out, lse, d_out, bias[..., D:])
    local = dict(G=G, block_size=block_size, scale=1.0 / math.sqrt(D))
    spec, shape = _packed_spec(qkv.shape), jax.ShapeDtypeStruct(qkv.shape, q.dtype)
    d_qkv, = _call(functools.partial(_local_dq_kernel, **local), ((L - G) // QUERY_TILE, B, H), inputs, [spec],
                   [shape], D)
    d_qkv, = _call(functools.partial(_local_dkv_kernel, **local), ((L - G) // KEY_TILE, B, H), (*inputs, d_qkv),
                   [spec], [shape], D, aliases={len(inputs): 0})
    d_glob = jnp.stack([_split_dq(inputs, G), *_split_dkv(inputs, G, GLOBAL_CHUNKS)], axis=2)
    d_qkv = d_qkv.at[:, :G].set(d_glob.astype(d_qkv.dtype))
    # The biases' gradients: the query bias's is dq summed over rows, the value bias's d_out summed over rows.
    d_bias = jnp.concatenate([d_qkv[:, :, 0].astype(jnp.float32).sum(1), d_out.astype(jnp.float32).sum(1)], -1)
    return d_qkv, d_bias


def _no_bias(q):
    """Zero query and value biases [B, H, 2 * D] for the split kernels (q, k and v come with theirs)."""
    B, _, H, D = q.shape
    return jnp.zeros((B, H, 2 * D), jnp.float32)


@per_batch_and_head("bthd, bshd, bshd, bs -> bthd, bht", statics=0)
def _padded_forward(q, k, v, valid):
    return _split_forward(q, k, v, valid, _no_bias(q), q.shape[1])


@per_batch_and_head("bthd, bshd, bshd, bs, bthd, bht, bthd -> bthd, bshd, bshd", statics=0)
def _padded_backward(q, k, v, valid, out, lse, d_out):
    inputs = _backward_inputs(q, k, v, valid, out, lse, d_out)
    dk, dv = _split_dkv(inputs, k.shape[1], 1)  # many key tiles: no need to split the queries
    return _split_dq(inputs, q.shape[1]).astype(q.dtype), dk, dv


def pallas_padded_attention(q, k, v, key_valid, dtype):
    """Dense attention of q [B, T, H, D] over the valid keys of k/v [B, S, H, D] (key_valid [B, S] bool), through
    the split kernels (the decoder's cross-attention over a long encoder output), computed in
    compute_dtype(q.dtype). Returns [B, T, H, D] in `dtype`."""
    q, k, v = (x.astype(compute_dtype(q.dtype)) for x in (q, k, v))
    return _padded_attention(q, k, v, key_valid.astype(jnp.int32)).astype(dtype)


@jax.custom_vjp
def _padded_attention(q, k, v, valid):
    return _padded_forward(q, k, v, valid)[0]


def _padded_fwd(q, k, v, valid):
    out, lse = _padded_forward(q, k, v, valid)
    return out, (q, k, v, valid, out, lse)


def _padded_bwd(residuals, d_out):
    return (*_padded_backward(*residuals, d_out), None)


_padded_attention.defvjp(_padded_fwd, _padded_bwd)


def pallas_lsg_attention(qkv, query_bias, value_bias, bias, cfg, dtype):
    """LSG attention through the kernels above, forward and backward, of a packed projection without biases, qkv
    [B, G + T, 3, H, D] (q, k, v in slots 0, 1, 2: one GEMM writes them and the kernels read them in place), and the
    projections' query and value biases [H, D] (or None), which the kernels add themselves: the query bias to each
    query tile they load, the value bias to each output row (each row's probabilities sum to 1). The key bias needs
    no place: it adds q . key_bias to every score of a row, which softmax cancels. bias [B, G + T]: 0 / NEG_INF over
    keys. Inputs short enough for full attention go through the split kernels over all keys. Computed in
    compute_dtype(qkv.dtype); returns [B, G + T, H, D] in `dtype`."""
    reason = pallas_supported(cfg, qkv.shape[-1])
    if reason:
        raise ValueError(f"attn_implementation='pallas' does not take this model: {reason}; use 'cudnn' or 'auto'")
    G, bs = cfg.num_global_tokens, cfg.block_size
    B, _, _, H, D = qkv.shape
    query_bias, value_bias = (jnp.zeros((H, D)) if b is None else b for b in (query_bias, value_bias))
    if qkv.shape[1] <= 2 * bs + G:  # short input: full attention, as every formulation does (the split kernels)
        return pallas_padded_attention(qkv[:, :, 0] + query_bias.astype(qkv.dtype), qkv[:, :, 1],
                                       qkv[:, :, 2] + value_bias.astype(qkv.dtype), bias == 0, dtype)
    biases = jnp.broadcast_to(jnp.concatenate([query_bias, value_bias], -1).astype(jnp.float32), (B, H, 2 * D))
    out = _attention(qkv.astype(compute_dtype(qkv.dtype)), biases, (bias == 0).astype(jnp.int32), G, bs)
    return out.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(qkv, biases, valid, G, block_size):
    return pallas_lsg_forward(qkv, valid, biases, G, block_size)[0]


def _attention_fwd(qkv, biases, valid, G, block_size):
    out, lse = pallas_lsg_forward(qkv, valid, biases, G, block_size)
    return out, (qkv, biases, valid, out, lse)


def _attention_bwd(G, block_size, residuals, d_out):
    qkv, biases, valid, out, lse = residuals
    return (*pallas_lsg_backward(qkv, valid, biases, out, lse, d_out, G, block_size), None)


_attention.defvjp(_attention_fwd, _attention_bwd)
