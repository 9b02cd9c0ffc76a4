"""The dropout mask every dropout in the project uses (jaxport.layers.dropout, and the Pallas kernels that drop
out inside): 32 random bits per element from a counter-based hash of its row, its column and two words of the
PRNG key, so any kernel can compute the mask of the elements it holds, and compute it again in the backward pass.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

DROPOUT_BITS = 32  # the keep mask compares 32-bit random integers with a threshold: rate is quantised to 2**-32


def dropout_words(rng: jax.Array) -> jax.Array:
    """The two uint32 words of a dropout mask's hash, folded from any PRNG implementation's key data."""
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    data = data.astype(jnp.uint32).reshape(-1)
    return jax.lax.reduce(jnp.pad(data, (0, data.size % 2)).reshape(-1, 2), np.uint32(0), jax.lax.bitwise_xor, (0,))


def _mix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijection of uint32 in which every output bit depends on every input bit."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(shape, words: jax.Array, rate: float) -> jax.Array:
    """Where dropout keeps x: 32 random bits per element, a hash of its row (all axes but the last, flattened), its
    column and the two key words, compared with the rate's threshold. Elementwise integer arithmetic on iotas, so
    XLA fuses it into the kernels that consume the mask."""
    rows, cols = (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)
    _check_size(rows, cols, shape)
    row, col = (jax.lax.broadcasted_iota(jnp.uint32, (rows, cols), axis) for axis in (0, 1))
    return dropout_keep(dropout_row_hash(row, words), dropout_col_hash(col, words), rate).reshape(shape)


def _check_size(rows: int, cols: int, shape) -> None:
    if rows >= 2 ** 32 or cols >= 2 ** 32:
        raise ValueError(f"dropout over {tuple(shape)}: more than 2**32 rows or columns")


def dropout_hashes(shape, words: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The row hashes [rows] and column hashes [columns] of keep_mask(shape, ...), for kernels that take them."""
    rows, cols = math.prod(shape[:-1]), shape[-1]
    _check_size(rows, cols, shape)
    return (dropout_row_hash(jnp.arange(rows, dtype=jnp.uint32), words),
            dropout_col_hash(jnp.arange(cols, dtype=jnp.uint32), words))


def dropout_row_hash(row: jax.Array, words: jax.Array) -> jax.Array:
    """The part of an element's hash its row (uint32) decides: kernels that tile the mask take it per row."""
    return _mix(row ^ words[0])


def dropout_col_hash(col: jax.Array, words: jax.Array) -> jax.Array:
    """The part of an element's hash its column (uint32) decides."""
    return col * jnp.uint32(0x9E3779B9) + words[1]


def dropout_keep(row_hash: jax.Array, col_hash: jax.Array, rate: float) -> jax.Array:
    """Where dropout keeps the elements of these (broadcast) row and column hashes."""
    return _mix(row_hash ^ col_hash) >= jnp.uint32(_threshold(rate))


def _threshold(rate: float) -> int:
    return min(round(rate * 2 ** DROPOUT_BITS), 2 ** DROPOUT_BITS - 1)


def dropout_scale(rate: float) -> float:
    """What kept elements are multiplied by: 1 / the exact keep probability."""
    return 2 ** DROPOUT_BITS / (2 ** DROPOUT_BITS - _threshold(rate))
