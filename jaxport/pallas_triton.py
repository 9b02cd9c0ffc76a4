"""Pallas' Triton backend, in which the GPU kernels here are written (causal attention, LayerNorm, cross-entropy,
LSG attention), or None where this JAX no longer has it: JAX 0.11 deprecated it for removal ("migrate to the Mosaic
GPU backend"). Without it each kernel family reports itself unsupported, the models run XLA's formulations of the
same computations (the same results, without the kernels' speed), and an explicit request for the kernels is
refused with MISSING."""
try:
    from jax.experimental.pallas import triton
except ImportError:
    triton = None


def takes_head_dim(head_dim: int) -> bool:
    """Whether attention kernels in this backend take heads of `head_dim`: Triton's tiles are powers of two of 16 or
    more (and this JAX has the backend)."""
    return triton is not None and head_dim >= 16 and not head_dim & (head_dim - 1)


MISSING = ("this JAX has no Pallas Triton backend (deprecated in JAX 0.11, since removed), in which the kernels "
           "are written: use attn_implementation='auto', or a JAX release that still has it")
