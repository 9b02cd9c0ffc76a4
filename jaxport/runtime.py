"""Process-wide JAX settings of the fast path, applied once by each entry point (train.py, convert.py, the bench
scripts, the notebooks) and by users who write their own loop: `jaxport.runtime.configure()`.

Library functions never change process-wide state themselves; this is the one documented place that does.
"""
import contextlib
import os

import jax

from jaxport.launch import NO_MULTICAST


def configure() -> None:
    """Apply the settings the fast path needs. Idempotent.

    - jax_threefry_gpu_kernel_lowering: XLA's default threefry lowering made the random-init jit of a
      300M-parameter T5 compile for over 200 s on an H100, and generating dropout or init bits with it is slow;
      the GPU kernel lowering brings init + first step to ~40 s (bench/RESULTS.md). No effect off the GPU.
    - NVLink multicast off (NCCL_NVLS_ENABLE=0, NVSHMEM_DISABLE_NVLS=1), for the collectives between this
      process's GPUs too: on shared hosts a program using it can take the GPUs out of service. Read when NCCL
      starts, i.e. at the first collective, after this.
    """
    jax.config.update("jax_threefry_gpu_kernel_lowering", True)
    os.environ.update(NO_MULTICAST)


def matmul_precision(name: str):
    """A context in which matmuls run at `name` (jax.default_matmul_precision's names: "tensorfloat32", "highest",
    ...); "" leaves each model's own choice (jaxport.layers.float32_matmuls)."""
    return jax.default_matmul_precision(name) if name else contextlib.nullcontext()
