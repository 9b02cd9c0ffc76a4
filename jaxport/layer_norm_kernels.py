"""LayerNorm over the last axis as Pallas (Triton) kernels, forward and backward, each one pass over its rows.

XLA's fusions of the same arithmetic (jaxport.layers.layer_norm) read and write each [rows, width] tensor several
times: in the backward pass the scale's gradient goes through a float32 copy of grad * normalised input, and the
column sums over a few thousand rows are latency-bound (bench/RESULTS.md, Perceiver IO's and Backpack's profiles).
Here the forward kernel normalises a block of rows per program and keeps each row's mean and inverse deviation;
the backward kernel walks a group of row blocks per program, writes each row's input gradient and accumulates the
scale's and bias's gradients of its rows in registers, leaving one partial sum per program for a small XLA sum.

Rows are whole in a program: a width that is not a power of two (768, 1280) is read as the next power of two with
the lanes past it masked. Under a jit sharded over rows (the batch), each device runs the kernels on its own rows
and the parameter gradients are summed across devices. Compiled through Triton on an NVIDIA GPU, run by Pallas'
interpreter elsewhere (tests compare both with the XLA formulation).
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

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


def _block(width: int) -> int:
    return pl.next_power_of_2(width)


def _rows_per_block(width: int) -> int:
    return max(1, BLOCK_VALUES // _block(width))


def _warps(width: int) -> int:
    return min(max(_block(width) // 256, 1), 8)


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


@per_batch_and_head("bd, d, d -> bd, b, b", statics=2)
def _forward(x, scale, bias, eps, dtype):
    n, width = x.shape
    block_rows = _rows_per_block(width)
    return pl.pallas_call(
        functools.partial(_forward_kernel, eps=eps, block_rows=block_rows), grid=(pl.cdiv(n, block_rows),),
        out_shape=[jax.ShapeDtypeStruct((n, width), dtype), jax.ShapeDtypeStruct((n,), jnp.float32),
                   jax.ShapeDtypeStruct((n,), jnp.float32)],
        interpret=_interpret(), compiler_params=plgpu.CompilerParams(num_warps=_warps(width), num_stages=1),
        name="layer_norm_forward")(x, scale, bias)


@per_batch_and_head("bd, bd, b, b, d -> bd, +d, +d", statics=0)
def _backward(x, grad, mean, rstd, scale):
    """The input gradient and the parameters' gradients, summed over one device's rows."""
    n, width = x.shape
    block_rows = _rows_per_block(width)
    group = max(1, pl.cdiv(n, block_rows) // PROGRAMS)  # row blocks per program
    programs = pl.cdiv(n, block_rows * group)
    dx, dscale, dbias = pl.pallas_call(
        functools.partial(_backward_kernel, block_rows=block_rows, group=group), grid=(programs,),
        out_shape=[jax.ShapeDtypeStruct((n, width), x.dtype), jax.ShapeDtypeStruct((programs, width), jnp.float32),
                   jax.ShapeDtypeStruct((programs, width), jnp.float32)],
        interpret=_interpret(), compiler_params=plgpu.CompilerParams(num_warps=_warps(width), num_stages=1),
        name="layer_norm_backward")(x, grad, mean, rstd, scale)
    return dx, dscale.sum(0), dbias.sum(0)


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


def _forward_kernel(x_ref, scale_ref, bias_ref, out_ref, mean_ref, rstd_ref, *, eps, block_rows):
    n, width = x_ref.shape
    rows, columns, inside = _block_rows(pl.program_id(0) * block_rows, block_rows, n, width)
    x = _load(x_ref, rows, columns, inside)
    mean = x.sum(1) / width
    centred = jnp.where(inside, x - mean[:, None], 0.0)
    rstd = jax.lax.rsqrt((centred * centred).sum(1) / width + eps)
    scale = plgpu.load(scale_ref.at[columns], mask=columns < width, other=0.0)
    bias = plgpu.load(bias_ref.at[columns], mask=columns < width, other=0.0)
    out = centred * rstd[:, None] * scale[None, :] + bias[None, :]
    plgpu.store(out_ref.at[rows[:, None], columns[None, :]], out.astype(out_ref.dtype), mask=inside)
    plgpu.store(mean_ref.at[rows], mean, mask=rows < n)
    plgpu.store(rstd_ref.at[rows], rstd, mask=rows < n)


def _backward_kernel(x_ref, grad_ref, mean_ref, rstd_ref, scale_ref, dx_ref, dscale_ref, dbias_ref, *, block_rows,
                     group):
    n, width = x_ref.shape
    columns = jnp.arange(_block(width))
    scale = plgpu.load(scale_ref.at[columns], mask=columns < width, other=0.0)
    program = pl.program_id(0)

    def body(index, sums):
        rows, _, inside = _block_rows((program * group + index) * block_rows, block_rows, n, width)
        mean = plgpu.load(mean_ref.at[rows], mask=rows < n, other=0.0)
        rstd = plgpu.load(rstd_ref.at[rows], mask=rows < n, other=0.0)
        normed = jnp.where(inside, (_load(x_ref, rows, columns, inside) - mean[:, None]) * rstd[:, None], 0.0)
        grad = _load(grad_ref, rows, columns, inside)
        d_normed = grad * scale[None, :]
        dx = rstd[:, None] * (d_normed - d_normed.sum(1, keepdims=True) / width
                              - normed * ((d_normed * normed).sum(1, keepdims=True) / width))
        plgpu.store(dx_ref.at[rows[:, None], columns[None, :]], dx.astype(dx_ref.dtype), mask=inside)
        return sums[0] + (grad * normed).sum(0), sums[1] + grad.sum(0)

    zeros = jnp.zeros(columns.shape, jnp.float32)
    dscale, dbias = jax.lax.fori_loop(0, group, body, (zeros, zeros))
    plgpu.store(dscale_ref.at[program, columns], dscale, mask=columns < width)
    plgpu.store(dbias_ref.at[program, columns], dbias, mask=columns < width)
