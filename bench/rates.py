"""Device rates the benchmarks measure their runs against."""
import time

import jax
import jax.numpy as jnp


def jax_matmul_peak(n: int, iters: int = 20, repeats: int = 3) -> float:
    """bf16 FLOP/s of an n x n x n matmul through JAX, best of `repeats` runs of `iters` back-to-back calls."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    matmul = jax.jit(jnp.matmul)
    for _ in range(3):
        matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):  # dispatched back to back, one sync at the end
            c = matmul(a, b)
        c.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 * iters / best
