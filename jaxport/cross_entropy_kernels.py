"""Softmax cross-entropy with integer labels as Pallas (Triton) kernels, forward and backward, each one pass over
the logits in their own dtype.

XLA's formulation (optax on float32 logits) writes a float32 copy of the [tokens, vocab] logits and a float32
gradient that it then casts back to the compute dtype: four passes over Backpack-GPT2's 1.6 GB of bf16 logits per
step (bench/RESULTS.md). Here the forward kernel reduces each block of rows x columns to its maximum, the sum of
exponentials below it and the label's logit (a small XLA reduction combines the blocks of a row); the backward
kernel writes (softmax - one_hot) * grad straight in the logits' dtype from the saved log-sum-exp.

Under a sharded jit, rows (the batch) and the vocabulary (tensor parallelism) can both be split: each device reduces
its own slice, with the labels shifted to that slice, and the per-row statistics are combined across the devices
that share the rows. Compiled through Triton on an NVIDIA GPU, run by Pallas' interpreter elsewhere (tests compare
both with optax).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jaxport.pallas_triton import triton as plgpu
from jaxport.sharding import operand_spec, spec_axes

# Measured on an H200 at Backpack-GPT2's 16384 x 50264 (bench/cross_entropy.py, RESULTS.md):
BLOCK_VALUES = 4096  # a program reads blocks of this many logits (rows x vocabulary columns)
MAX_BLOCK_VOCAB = 4096  # ... at most this many columns wide: a small vocabulary takes more rows per block
WARPS = 4


def supported() -> bool:
    return plgpu is not None


@jax.custom_vjp
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(logits)[label] per token, float32 [...], from logits [..., V] in any float dtype and integer
    labels [...] in [0, V): optax.softmax_cross_entropy_with_integer_labels on float32 logits, up to float32
    rounding. (A label outside [0, V) selects no logit: its loss is the log-sum-exp.)"""
    return _cross_entropy_fwd(logits, labels)[0]


def _cross_entropy_fwd(logits, labels):
    rows, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).astype(jnp.int32)
    losses, log_sum_exp = _forward(rows, flat_labels)
    return losses.reshape(labels.shape), (rows, flat_labels, log_sum_exp)


def _cross_entropy_bwd(residuals, grad):
    rows, labels, log_sum_exp = residuals
    d_logits = _backward(rows, labels, log_sum_exp, grad.reshape(-1).astype(jnp.float32))
    return d_logits.reshape(*grad.shape, rows.shape[1]), None


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _block_shape(vocab: int) -> tuple[int, int]:
    """(rows, columns) of one block."""
    columns = min(MAX_BLOCK_VOCAB, pl.next_power_of_2(vocab))
    return max(1, BLOCK_VALUES // columns), columns


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def _compiler_params():
    return plgpu.CompilerParams(num_warps=WARPS, num_stages=2)


def _statistics(logits, labels):
    """Per row of one device's slice and block of columns, [rows, blocks] each: (maximum, sum of exp(logit -
    maximum), the label's logit or 0)."""
    n, vocab = logits.shape
    block_rows, block_vocab = _block_shape(vocab)
    grid = (pl.cdiv(n, block_rows), pl.cdiv(vocab, block_vocab))
    per_block = jax.ShapeDtypeStruct((n, grid[1]), jnp.float32)
    return pl.pallas_call(
        functools.partial(_forward_kernel, block_rows=block_rows, block_vocab=block_vocab), grid=grid,
        out_shape=[per_block] * 3, interpret=_interpret(), compiler_params=_compiler_params(),
        name="cross_entropy_forward")(logits, labels)


def _combine(maximum, total, picked, reduce_max, reduce_sum):
    """The statistics of parts of each row (blocks of columns, or devices' slices) as those of the whole rows."""
    shared = reduce_max(maximum)
    return shared, reduce_sum(total * jnp.exp(maximum - shared)), reduce_sum(picked)


def _gradient(logits, labels, log_sum_exp, grad):
    n, vocab = logits.shape
    block_rows, block_vocab = _block_shape(vocab)
    return pl.pallas_call(
        functools.partial(_backward_kernel, block_rows=block_rows, block_vocab=block_vocab),
        grid=(pl.cdiv(n, block_rows), pl.cdiv(vocab, block_vocab)),
        out_shape=jax.ShapeDtypeStruct(logits.shape, logits.dtype), interpret=_interpret(),
        compiler_params=_compiler_params(), name="cross_entropy_backward")(logits, labels, log_sum_exp, grad)


def _local_labels(labels, vocab_axes, local_vocab: int):
    """The labels relative to this device's slice of the vocabulary (outside it where another device has them)."""
    return labels if vocab_axes is None else labels - jax.lax.axis_index(vocab_axes) * local_vocab


def _forward_local(logits, labels, vocab_axes=None):
    blocks = _statistics(logits, _local_labels(labels, vocab_axes, logits.shape[1]))
    maximum, total, picked = _combine(*blocks, lambda x: x.max(1, keepdims=True), lambda x: x.sum(1, keepdims=True))
    if vocab_axes is not None:  # each device saw part of every row
        maximum, total, picked = _combine(maximum, total, picked, lambda x: jax.lax.pmax(x, vocab_axes),
                                          lambda x: jax.lax.psum(x, vocab_axes))
    log_sum_exp = (maximum + jnp.log(total))[:, 0]
    return log_sum_exp - picked[:, 0], log_sum_exp


def _backward_local(logits, labels, log_sum_exp, grad, vocab_axes=None):
    return _gradient(logits, _local_labels(labels, vocab_axes, logits.shape[1]), log_sum_exp, grad)


@custom_partitioning
def _forward(logits, labels):
    return _forward_local(logits, labels)


@custom_partitioning
def _backward(logits, labels, log_sum_exp, grad):
    return _backward_local(logits, labels, log_sum_exp, grad)


def _shardings(mesh, arg_shapes):
    """(the logits' sharding, the rows' sharding, the vocabulary's mesh axes) from the logits' operand. A vocabulary
    that its devices would split unevenly is gathered: a padded slice's columns would count in the sums."""
    rows, vocab = operand_spec(arg_shapes, 2)
    devices = math.prod(mesh.shape[axis] for axis in spec_axes(vocab))
    vocab = vocab if arg_shapes[0].shape[1] % devices == 0 else None
    place = lambda *spec: NamedSharding(mesh, PartitionSpec(*spec))
    return place(rows, vocab), place(rows), vocab


def _forward_partition(mesh, arg_shapes, result_shape):
    logits, rows, vocab = _shardings(mesh, arg_shapes)
    return mesh, functools.partial(_forward_local, vocab_axes=vocab), (rows, rows), (logits, rows)


def _backward_partition(mesh, arg_shapes, result_shape):
    logits, rows, vocab = _shardings(mesh, arg_shapes)
    return mesh, functools.partial(_backward_local, vocab_axes=vocab), logits, (logits, rows, rows, rows)


_forward.def_partition(
    partition=_forward_partition,
    infer_sharding_from_operands=lambda mesh, arg_shapes, result_shape: (_shardings(mesh, arg_shapes)[1],) * 2,
    sharding_rule="b v, b -> b, b", reduction_factors=("v",))
_backward.def_partition(
    partition=_backward_partition,
    infer_sharding_from_operands=lambda mesh, arg_shapes, result_shape: _shardings(mesh, arg_shapes)[0],
    sharding_rule="b v, b, b, b -> b v")


# ------------------------------------------------------------------------------------------------------ kernels

def _rows(block_rows: int, n: int):
    rows = pl.program_id(0) * block_rows + jnp.arange(block_rows)
    return rows, rows < n


def _load_block(logits_ref, labels_ref, rows, real, block_vocab: int):
    """This program's block of logits (its `rows`, `real` where inside the array) in float32 (0 outside the array),
    its columns, its rows' labels and the mask of the block inside the array."""
    vocab = logits_ref.shape[1]
    columns = pl.program_id(1) * block_vocab + jnp.arange(block_vocab)
    inside = real[:, None] & (columns < vocab)[None, :]
    x = plgpu.load(logits_ref.at[rows[:, None], columns[None, :]], mask=inside, other=0.0).astype(jnp.float32)
    return x, columns, plgpu.load(labels_ref.at[rows], mask=real, other=-1), inside


def _forward_kernel(logits_ref, labels_ref, maximum_ref, total_ref, picked_ref, *, block_rows, block_vocab):
    rows, real = _rows(block_rows, logits_ref.shape[0])
    x, columns, labels, inside = _load_block(logits_ref, labels_ref, rows, real, block_vocab)
    picked = jnp.where(columns[None, :] == labels[:, None], x, 0.0).sum(1)  # 0 past the vocabulary
    x = jnp.where(inside, x, -jnp.inf)
    maximum = x.max(1)
    total = jnp.exp(x - maximum[:, None]).sum(1)
    for ref, value in ((maximum_ref, maximum), (total_ref, total), (picked_ref, picked)):
        plgpu.store(ref.at[rows, pl.program_id(1)], value, mask=real)


def _backward_kernel(logits_ref, labels_ref, log_sum_exp_ref, grad_ref, out_ref, *, block_rows, block_vocab):
    rows, real = _rows(block_rows, logits_ref.shape[0])
    x, columns, labels, inside = _load_block(logits_ref, labels_ref, rows, real, block_vocab)
    log_sum_exp = plgpu.load(log_sum_exp_ref.at[rows], mask=real, other=0.0)
    grad = plgpu.load(grad_ref.at[rows], mask=real, other=0.0)
    one_hot = (columns[None, :] == labels[:, None]).astype(jnp.float32)
    d_logits = (jnp.exp(x - log_sum_exp[:, None]) - one_hot) * grad[:, None]
    plgpu.store(out_ref.at[rows[:, None], columns[None, :]], d_logits.astype(out_ref.dtype), mask=inside)
