"""lsg_jax.hopper_gemm: fc1 + bias + exact GELU as one Hopper GEMM, run here in Pallas' Mosaic GPU interpreter
(shared memory, warpgroups, barriers and TMA simulated on the CPU), and dense_gelu's XLA route elsewhere."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lsg_jax import hopper_gemm
from jaxport.layers import gelu


def inputs(M=256, K=128, N=256):
    """Two row tiles x two column tiles x two K steps: each of the interpreter's two programs loops over tiles."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((M, K)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((K, N)) * 0.1, jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal(N), jnp.bfloat16)
    return x, kernel, bias


def float32_reference(x, kernel, bias):
    y = np.asarray(x, np.float32) @ np.asarray(kernel, np.float32) + np.asarray(bias, np.float32)
    return np.asarray(gelu(jnp.asarray(y)))


def test_kernel_equals_the_float32_formulation():
    x, kernel, bias = inputs()
    got = np.asarray(hopper_gemm.gemm_bias_gelu(x, kernel, bias, interpret=hopper_gemm.interpreter()), np.float32)
    want = float32_reference(x, kernel, bias)
    assert np.abs(want).mean() > 0.3  # GELU's both sides are exercised
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)  # bf16 output: 2**-8 relative rounding


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


def test_dense_gelu_off_hopper_is_xla_s_formulation_and_gradients():
    x, kernel, bias = (a.astype(jnp.float32) for a in inputs(M=6, K=8, N=16))
    x = x.reshape(2, 3, 8)
    assert not hopper_gemm.kernel_applies(x, kernel)
    plain = lambda x, kernel, bias: gelu(jnp.tensordot(x, kernel, axes=1) + bias)
    np.testing.assert_array_equal(hopper_gemm.dense_gelu(x, kernel, bias), plain(x, kernel, bias))
    loss = lambda f: lambda *a: (f(*a) ** 2).sum()
    for got, want in zip(jax.grad(loss(hopper_gemm.dense_gelu), argnums=(0, 1, 2))(x, kernel, bias),
                         jax.grad(loss(plain), argnums=(0, 1, 2))(x, kernel, bias)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
