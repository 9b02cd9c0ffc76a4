"""LayerNorm over the last axis as Pallas (Triton) kernels, forward and backward, each one pass over its rows.

XLA's fusions of the same arithmetic (jaxport.layers.layer_norm) read and write each [rows, width] tensor several
times: in the backward pass the scale's gradient goes through a float32 copy of grad * normalised input, and the
column sums over a few thousand rows are latency-bound (bench/RESULTS.md, Perceiver IO's and Backpack's profiles).
Here the forward kernel normalises a block of rows per program and keeps each row's mean and inverse deviation;
the backward kernel walks a group of row blocks per program, writes each row's input gradient and accumulates the
scale's and bias's gradients of its rows in registers, leaving one partial sum per program for a small XLA sum.
`add_layer_norm` is flash-attention's "dropout, add, LayerNorm" of a pre-LN residual stream: the forward kernel also
adds a branch's bias, drops the branch out and adds it to the residual, writing the sum beside its normalisation;
the backward kernel also adds the sum's own incoming gradient and writes the branch's gradient under the same mask,
with its bias's gradient summed like the LayerNorm parameters'. XLA ran those adds, selects and reductions as passes
of their own over the [rows, width] tensors.

Rows are whole in a program: a width that is not a power of two (768, 1280) is read as the next power of two with
the lanes past it masked. Under a jit sharded over rows (the batch), each device runs the kernels on its own rows
and the parameter gradients are summed across devices. Compiled through Triton on an NVIDIA GPU, run by Pallas'
interpreter elsewhere (tests compare both with the XLA formulation).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxport.dropout_mask import dropout_keep, dropout_scale
from jaxport.pallas_triton import triton as plgpu
from jaxport.sharding import per_batch_and_head

MAX_WIDTH = 8192  # a row is read whole: wider ones would spill registers
# Measured on an H200 at 4096 x 1280 and 16384 x 768 against 4096-16384 values and 128-1024 programs (RESULTS.md):
BLOCK_VALUES = 2048  # a program reads rows in blocks of this many values (rows x the width's power of two)
PROGRAMS = 512  # the backward pass aims at this many programs, each summing the parameter gradients of its blocks


def supported(width: int) -> bool:
    return plgpu is not None and width <= MAX_WIDTH


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, dtype) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over x's last axis, statistics in float32, output in `dtype`:
    jaxport.layers.layer_norm's result (up to float32 rounding) from the kernels."""
    return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, dtype):
    rows = x.reshape(-1, x.shape[-1])
    out, mean, rstd = _forward(rows, scale.astype(jnp.float32), bias.astype(jnp.float32), eps, jnp.dtype(dtype))
    return out.reshape(x.shape), (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, dtype, residuals, grad):
    x, mean, rstd, scale, bias = residuals
    rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, x.shape[-1])
    dx, dscale, dbias = _backward(rows, grad_rows, mean, rstd, scale.astype(jnp.float32))
    return dx.reshape(x.shape), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def add_layer_norm(residual: jax.Array, branch: jax.Array, branch_bias: jax.Array, scale: jax.Array,
                   bias: jax.Array, row_hash: jax.Array, col_hash: jax.Array, eps: float, dtype, rate: float):
    """(total, normalised): total = residual + dropout(branch + branch_bias) and its LayerNorm, as
    jaxport.layers.add_layer_norm (whose docstring lists the arguments) computes them, up to float32 rounding, from
    the kernels. The branch's gradient comes back in `dtype`."""
    return _add_layer_norm(residual, branch.astype(dtype), branch_bias, scale, bias, row_hash, col_hash, eps,
                           jnp.dtype(dtype), rate)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _add_layer_norm(residual, branch, branch_bias, scale, bias, row_hash, col_hash, eps, dtype, rate):
    return _add_layer_norm_fwd(residual, branch, branch_bias, scale, bias, row_hash, col_hash, eps, dtype, rate)[0]


def _add_layer_norm_fwd(residual, branch, branch_bias, scale, bias, row_hash, col_hash, eps, dtype, rate):
    params = [p.astype(jnp.float32) for p in (branch_bias, scale, bias)]
    total, out, mean, rstd = _add_forward(residual, branch, *params, row_hash, col_hash, eps, dtype, rate)
    return (total, out), (total, mean, rstd, scale, row_hash, col_hash, branch_bias, bias)


def _add_layer_norm_bwd(eps, dtype, rate, residuals, grads):
    total, mean, rstd, scale, row_hash, col_hash, branch_bias, bias = residuals
    d_total, d_out = grads
    d_residual, d_branch, dscale, dbias, d_branch_bias = _add_backward(
        total, d_total.astype(total.dtype), d_out, mean, rstd, scale.astype(jnp.float32), row_hash, col_hash, dtype,
        rate)
    return (d_residual, d_branch, d_branch_bias.astype(branch_bias.dtype), dscale.astype(scale.dtype),
            dbias.astype(bias.dtype), None, None)


_add_layer_norm.defvjp(_add_layer_norm_fwd, _add_layer_norm_bwd)


def _block(width: int) -> int:
    return pl.next_power_of_2(width)


def _rows_per_block(width: int) -> int:
    return max(1, BLOCK_VALUES // _block(width))


def _warps(width: int) -> int:
    return min(max(_block(width) // 256, 1), 8)


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def _call(kernel, inputs, out_shape, grid, width, name):
    return pl.pallas_call(kernel, grid=grid, out_shape=out_shape, interpret=_interpret(),
                          compiler_params=plgpu.CompilerParams(num_warps=_warps(width), num_stages=1),
                          name=name)(*inputs)


def _rows(n, width, dtype):
    return jax.ShapeDtypeStruct((n, width), dtype)


def _stats(n):
    return [jax.ShapeDtypeStruct((n,), jnp.float32)] * 2


@per_batch_and_head("bd, d, d -> bd, b, b", statics=2)
def _forward(x, scale, bias, eps, dtype):
    n, width = x.shape
    block_rows = _rows_per_block(width)
    return _call(functools.partial(_forward_kernel, eps=eps, block_rows=block_rows), (x, scale, bias),
                 [_rows(n, width, dtype), *_stats(n)], (pl.cdiv(n, block_rows),), width, "layer_norm_forward")


@per_batch_and_head("bd, bd, d, d, d, b, d -> bd, bd, b, b", statics=3)
def _add_forward(residual, branch, branch_bias, scale, bias, row_hash, col_hash, eps, dtype, rate):
    n, width = residual.shape
    block_rows = _rows_per_block(width)
    return _call(functools.partial(_add_forward_kernel, eps=eps, block_rows=block_rows, rate=rate),
                 (residual, branch, branch_bias, scale, bias, row_hash, col_hash),
                 [_rows(n, width, residual.dtype), _rows(n, width, dtype), *_stats(n)], (pl.cdiv(n, block_rows),),
                 width, "add_layer_norm_forward")


def _backward_grid(n, width):
    """(row blocks per program, programs) of a backward kernel."""
    group = max(1, pl.cdiv(n, _rows_per_block(width)) // PROGRAMS)
    return group, pl.cdiv(n, _rows_per_block(width) * group)


def _partial_sums(count, programs, width):
    return [jax.ShapeDtypeStruct((programs, width), jnp.float32)] * count


@per_batch_and_head("bd, bd, b, b, d -> bd, +d, +d", statics=0)
def _backward(x, grad, mean, rstd, scale):
    """The input gradient and the parameters' gradients, summed over one device's rows."""
    n, width = x.shape
    group, programs = _backward_grid(n, width)
    dx, dscale, dbias = _call(
        functools.partial(_backward_kernel, block_rows=_rows_per_block(width), group=group),
        (x, grad, mean, rstd, scale), [_rows(n, width, x.dtype), *_partial_sums(2, programs, width)], (programs,),
        width, "layer_norm_backward")
    return dx, dscale.sum(0), dbias.sum(0)


@per_batch_and_head("bd, bd, bd, b, b, d, b, d -> bd, bd, +d, +d, +d", statics=2)
def _add_backward(total, d_total, grad, mean, rstd, scale, row_hash, col_hash, branch_dtype, rate):
    """The residual's and the branch's gradients, and the LayerNorm parameters' and the branch bias's gradients
    summed over one device's rows."""
    n, width = total.shape
    group, programs = _backward_grid(n, width)
    d_residual, d_branch, *sums = _call(
        functools.partial(_add_backward_kernel, block_rows=_rows_per_block(width), group=group, rate=rate),
        (total, d_total, grad, mean, rstd, scale, row_hash, col_hash),
        [_rows(n, width, total.dtype), _rows(n, width, branch_dtype), *_partial_sums(3, programs, width)],
        (programs,), width, "add_layer_norm_backward")
    return d_residual, d_branch, *(s.sum(0) for s in sums)


# ------------------------------------------------------------------------------------------------------ kernels

def _block_rows(rows_start, block_rows: int, n: int, width: int):
    """The indices and in-bounds mask of a block of rows from rows_start, each read whole (padded to a power of
    two)."""
    rows = rows_start + jnp.arange(block_rows)
    columns = jnp.arange(_block(width))
    inside = (rows < n)[:, None] & (columns < width)[None, :]
    return rows, columns, inside


def _load(ref, rows, columns, inside):
    return plgpu.load(ref.at[rows[:, None], columns[None, :]], mask=inside, other=0.0).astype(jnp.float32)


def _vector(ref, columns, width):
    return plgpu.load(ref.at[columns], mask=columns < width, other=0.0).astype(jnp.float32)


def _normalise(x, inside, scale, bias, eps, width):
    """(LayerNorm of the rows x, their means, their inverse deviations)."""
    mean = x.sum(1) / width
    centred = jnp.where(inside, x - mean[:, None], 0.0)
    rstd = jax.lax.rsqrt((centred * centred).sum(1) / width + eps)
    return centred * rstd[:, None] * scale[None, :] + bias[None, :], mean, rstd


def _store_rows(ref, rows, columns, inside, value):
    plgpu.store(ref.at[rows[:, None], columns[None, :]], value.astype(ref.dtype), mask=inside)


def _store_stats(mean_ref, rstd_ref, rows, n, mean, rstd):
    plgpu.store(mean_ref.at[rows], mean, mask=rows < n)
    plgpu.store(rstd_ref.at[rows], rstd, mask=rows < n)


def _dropped(x, row_hash_ref, col_hash_ref, rows, columns, n, width, rate):
    """x where dropout (the rows' and columns' hashes) keeps it, times the scale; 0 elsewhere."""
    if rate == 0.0:
        return x
    row_hash = plgpu.load(row_hash_ref.at[rows], mask=rows < n, other=0)
    col_hash = plgpu.load(col_hash_ref.at[columns], mask=columns < width, other=0)
    return jnp.where(dropout_keep(row_hash[:, None], col_hash[None, :], rate), x * dropout_scale(rate), 0.0)


def _forward_kernel(x_ref, scale_ref, bias_ref, out_ref, mean_ref, rstd_ref, *, eps, block_rows):
    n, width = x_ref.shape
    rows, columns, inside = _block_rows(pl.program_id(0) * block_rows, block_rows, n, width)
    out, mean, rstd = _normalise(_load(x_ref, rows, columns, inside), inside, _vector(scale_ref, columns, width),
                                 _vector(bias_ref, columns, width), eps, width)
    _store_rows(out_ref, rows, columns, inside, out)
    _store_stats(mean_ref, rstd_ref, rows, n, mean, rstd)


def _add_forward_kernel(residual_ref, branch_ref, branch_bias_ref, scale_ref, bias_ref, row_hash_ref, col_hash_ref,
                        total_ref, out_ref, mean_ref, rstd_ref, *, eps, block_rows, rate):
    n, width = residual_ref.shape
    rows, columns, inside = _block_rows(pl.program_id(0) * block_rows, block_rows, n, width)
    branch = _load(branch_ref, rows, columns, inside) + _vector(branch_bias_ref, columns, width)[None, :]
    branch = _dropped(branch, row_hash_ref, col_hash_ref, rows, columns, n, width, rate)
    total = jnp.where(inside, _load(residual_ref, rows, columns, inside) + branch, 0.0)
    _store_rows(total_ref, rows, columns, inside, total)
    out, mean, rstd = _normalise(total, inside, _vector(scale_ref, columns, width), _vector(bias_ref, columns, width),
                                 eps, width)
    _store_rows(out_ref, rows, columns, inside, out)
    _store_stats(mean_ref, rstd_ref, rows, n, mean, rstd)


def _input_gradient(x_ref, grad_ref, mean_ref, rstd_ref, scale, rows, columns, inside, n, width):
    """(the LayerNorm's input gradient, its output gradient, the normalised rows) of a block of rows."""
    mean = plgpu.load(mean_ref.at[rows], mask=rows < n, other=0.0)
    rstd = plgpu.load(rstd_ref.at[rows], mask=rows < n, other=0.0)
    normed = jnp.where(inside, (_load(x_ref, rows, columns, inside) - mean[:, None]) * rstd[:, None], 0.0)
    grad = _load(grad_ref, rows, columns, inside)
    d_normed = grad * scale[None, :]
    dx = rstd[:, None] * (d_normed - d_normed.sum(1, keepdims=True) / width
                          - normed * ((d_normed * normed).sum(1, keepdims=True) / width))
    return dx, grad, normed


def _summed_over_row_blocks(block_gradients, sum_refs, *, block_rows, group, n, width):
    """Runs block_gradients(rows, columns, inside) -> per-column sums over this program's `group` row blocks and
    stores their totals, one row of each sum_ref per program."""
    columns = jnp.arange(_block(width))
    program = pl.program_id(0)

    def body(index, sums):
        rows, _, inside = _block_rows((program * group + index) * block_rows, block_rows, n, width)
        return tuple(total + part for total, part in zip(sums, block_gradients(rows, columns, inside), strict=True))

    zeros = tuple(jnp.zeros(columns.shape, jnp.float32) for _ in sum_refs)
    for ref, total in zip(sum_refs, jax.lax.fori_loop(0, group, body, zeros), strict=True):
        plgpu.store(ref.at[program, columns], total, mask=columns < width)


def _backward_kernel(x_ref, grad_ref, mean_ref, rstd_ref, scale_ref, dx_ref, dscale_ref, dbias_ref, *, block_rows,
                     group):
    n, width = x_ref.shape
    scale = _vector(scale_ref, jnp.arange(_block(width)), width)

    def block_gradients(rows, columns, inside):
        dx, grad, normed = _input_gradient(x_ref, grad_ref, mean_ref, rstd_ref, scale, rows, columns, inside, n,
                                           width)
        _store_rows(dx_ref, rows, columns, inside, dx)
        return (grad * normed).sum(0), grad.sum(0)

    _summed_over_row_blocks(block_gradients, (dscale_ref, dbias_ref), block_rows=block_rows, group=group, n=n,
                            width=width)


def _add_backward_kernel(total_ref, d_total_ref, grad_ref, mean_ref, rstd_ref, scale_ref, row_hash_ref, col_hash_ref,
                         d_residual_ref, d_branch_ref, dscale_ref, dbias_ref, d_branch_bias_ref, *, block_rows, group,
                         rate):
    n, width = total_ref.shape
    scale = _vector(scale_ref, jnp.arange(_block(width)), width)

    def block_gradients(rows, columns, inside):
        dx, grad, normed = _input_gradient(total_ref, grad_ref, mean_ref, rstd_ref, scale, rows, columns, inside, n,
                                           width)
        d_residual = dx + _load(d_total_ref, rows, columns, inside)
        d_branch = _dropped(d_residual, row_hash_ref, col_hash_ref, rows, columns, n, width, rate)
        _store_rows(d_residual_ref, rows, columns, inside, d_residual)
        _store_rows(d_branch_ref, rows, columns, inside, d_branch)
        return (grad * normed).sum(0), grad.sum(0), d_branch.sum(0)

    _summed_over_row_blocks(block_gradients, (dscale_ref, dbias_ref, d_branch_bias_ref), block_rows=block_rows,
                            group=group, n=n, width=width)
