"""lsg_jax.hopper_gemm: fc1 + bias + exact GELU as one Hopper GEMM, run here in Pallas' Mosaic GPU interpreter
(shared memory, warpgroups, barriers and TMA simulated on the CPU), dense_gelu's XLA route elsewhere, and which of
the two runs when."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lsg_jax import hopper_gemm


def inputs(M=256, K=128, N=256, dtype=jnp.bfloat16):
    """Two row tiles x two column tiles x two K steps: each of the interpreter's two programs loops over tiles."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((M, K)), dtype)
    kernel = jnp.asarray(rng.standard_normal((K, N)) * 0.1, dtype)
    bias = jnp.asarray(rng.standard_normal(N), dtype)
    return x, kernel, bias


def exact_gelu_and_slope(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GELU y * Phi(y) and its derivative Phi(y) + y * phi(y) in float64, through math.erf: independent of the
    code under test."""
    y = np.asarray(y, np.float64)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(y / math.sqrt(2.0)))
    return y * cdf, cdf + y * np.exp(-0.5 * y * y) / math.sqrt(2.0 * math.pi)


def tanh_gelu(y: np.ndarray) -> np.ndarray:
    return 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y ** 3)))


ATOL = 1e-5  # float32 rounding; tanh's GELU is up to ~4.7e-4 away


def float32_reference(x, kernel, bias):
    y = np.asarray(x, np.float32) @ np.asarray(kernel, np.float32) + np.asarray(bias, np.float32)
    return exact_gelu_and_slope(y)[0]


def test_kernel_equals_the_float32_formulation():
    x, kernel, bias = inputs()
    got = np.asarray(hopper_gemm.gemm_bias_gelu(x, kernel, bias, interpret=hopper_gemm.interpreter()), np.float32)
    want = float32_reference(x, kernel, bias)
    assert np.abs(want).mean() > 0.3  # GELU's both sides are exercised
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)  # bf16 output: 2**-8 relative rounding


def test_kernel_epilogue_is_the_exact_gelu():
    """Where 2.2 <= |pre-activation| <= 3.5, tanh's GELU lies 2e-4 to 4.5e-4 above the exact one (the difference is
    even in y); in float16 (rounding 8x finer than bf16, unbiased) the mean error over the ~8k such outputs is a few
    1e-6 for the exact GELU, so the kernel's epilogue cannot be the approximation."""
    x, kernel, bias = inputs(dtype=jnp.float16)
    got = np.asarray(hopper_gemm.gemm_bias_gelu(x, kernel, bias, interpret=hopper_gemm.interpreter()), np.float64)
    y = np.asarray(x, np.float32) @ np.asarray(kernel, np.float32) + np.asarray(bias, np.float32)
    region = (np.abs(y) >= 2.2) & (np.abs(y) <= 3.5)
    assert region.sum() > 5_000
    assert (tanh_gelu(y) - exact_gelu_and_slope(y)[0])[region].mean() > 2e-4
    assert abs((got - exact_gelu_and_slope(y)[0])[region].mean()) < 3e-5


def test_kernel_runs_on_each_devices_rows_under_a_sharded_jit():
    """Rows sharded over two devices: each runs its part on its own rows, nothing gathered (on CPU devices the part
    is XLA's formulation: the interpreter cannot run under custom_partitioning)."""
    x, kernel, bias = inputs()
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("data",))
    sharded = jax.jit(hopper_gemm._rows_gemm, in_shardings=(NamedSharding(mesh, PartitionSpec("data", None)),
                                                             NamedSharding(mesh, PartitionSpec()),
                                                             NamedSharding(mesh, PartitionSpec())))
    assert "all-gather" not in sharded.lower(x, kernel, bias).compile().as_text()
    got = sharded(x, kernel, bias)
    assert got.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(got, np.float32), float32_reference(x, kernel, bias), rtol=1e-2, atol=1e-2)


def test_kernel_epilogue_computes_the_exact_gelu():
    """The kernel's GELU (its own erf: Mosaic GPU has no erf) in float32 against math.erf's, tightly enough that the
    tanh approximation would fail."""
    y = np.linspace(-6.0, 6.0, 2001, dtype=np.float32)
    got = np.asarray(0.5 * y * (1.0 + hopper_gemm._erf(jnp.asarray(y) * np.float32(1 / math.sqrt(2.0)))))
    want, _ = exact_gelu_and_slope(y)
    assert np.abs(tanh_gelu(y) - want).max() > 10 * ATOL
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_dense_gelu_off_hopper_is_the_exact_gelu_and_its_gradients():
    """Off an H100 (this CPU) dense_gelu is XLA's formulation: float32 output and gradients of sum(out) against the
    float64 exact GELU and its derivative."""
    x, kernel, bias = (a.astype(jnp.float32) for a in inputs(M=6, K=8, N=16))
    x = x.reshape(2, 3, 8)
    assert not hopper_gemm.kernel_applies(x, kernel)
    y = np.tensordot(np.asarray(x, np.float64), np.asarray(kernel, np.float64), axes=1) + np.asarray(bias, np.float64)
    want, slope = exact_gelu_and_slope(y)
    assert np.abs(tanh_gelu(y) - want).max() > 10 * ATOL  # the inputs tell the two GELUs apart
    np.testing.assert_allclose(hopper_gemm.dense_gelu(x, kernel, bias), want, rtol=0, atol=ATOL)
    grads = jax.grad(lambda *a: hopper_gemm.dense_gelu(*a).sum(), argnums=(0, 1, 2))(x, kernel, bias)
    want_grads = (slope @ np.asarray(kernel, np.float64).T, np.tensordot(np.asarray(x, np.float64), slope,
                                                                          axes=((0, 1), (0, 1))), slope.sum((0, 1)))
    for name, got, want in zip(("x", "kernel", "bias"), grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=ATOL, err_msg=name)


@pytest.fixture
def kernel_applies_everywhere(monkeypatch):
    """hopper_gemm.kernel_applies faked True (this CPU has no H100); traces of dense_gelu made before and under the
    fake are dropped."""
    monkeypatch.setattr(hopper_gemm, "kernel_applies", lambda x, kernel: True)
    jax.clear_caches()
    yield
    jax.clear_caches()


@pytest.mark.usefixtures("kernel_applies_everywhere")
def test_one_gemm_kernel_outside_training_xla_under_differentiation():
    """Where the kernel applies, the forward pass is one call of the row-sharded kernel (custom_partitioning); under
    jax.grad the forward is XLA's formulation, whose backward is tested above."""
    x, kernel, bias = inputs()
    assert "custom_partitioning" in str(jax.make_jaxpr(hopper_gemm.dense_gelu)(x, kernel, bias))
    loss = lambda *a: hopper_gemm.dense_gelu(*a).astype(jnp.float32).sum()
    assert "custom_partitioning" not in str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, kernel, bias))
