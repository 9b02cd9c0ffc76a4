"""Shared layers: dropout's mask (rate, determinism, the same mask in the backward pass); exact GELU and LayerNorm,
whose hand-written backward passes must equal autodiff of the plain formulas."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxport import layer_norm_kernels, layers, sharding
from jaxport.dropout_mask import DROPOUT_BITS, dropout_hashes, dropout_scale, dropout_words
from jaxport.layers import dropout, gelu
from tests.helpers import rel_err


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_mask_rate_scale_and_gradient(rate):
    x = jax.random.normal(jax.random.key(1), (400, 300)) + 3.0  # no zeros before dropout
    key = jax.random.key(7)
    y = dropout(x, rate, key)
    kept = y != 0
    assert abs(1 - kept.mean() - rate) < 0.01
    threshold = round(rate * 2 ** DROPOUT_BITS)
    scale = 2 ** DROPOUT_BITS / (2 ** DROPOUT_BITS - threshold)
    np.testing.assert_allclose(y[kept], x[kept] * scale, rtol=1e-6)
    np.testing.assert_array_equal(jax.jit(lambda x: dropout(x, rate, key))(x), y)  # deterministic, jit or not
    np.testing.assert_array_equal(dropout(x, rate, jax.random.key_data(key)), y)  # raw key data: the same mask
    assert (dropout(x, rate, jax.random.key(8)) != y).any()
    grad = jax.grad(lambda x: (dropout(x, rate, key) * jnp.arange(300.0)).sum())(x)
    np.testing.assert_allclose(grad, np.where(kept, scale * np.arange(300.0), 0), rtol=1e-6)


def test_dropout_scales_half_precision_values_in_float32():
    """Kept bf16 values are x / keep probability rounded once, as torch computes them: with the scale rounded to bf16
    first (1.109375 for 1 / 0.9), some would come out a step smaller."""
    x = jax.random.normal(jax.random.key(1), (64, 64), jnp.bfloat16)
    y = dropout(x, 0.1, jax.random.key(2))
    kept = y != 0
    scale = dropout_scale(0.1)  # its value is checked above
    np.testing.assert_array_equal(y[kept], (x[kept].astype(jnp.float32) * scale).astype(jnp.bfloat16))
    assert (y[kept] != x[kept] * jnp.asarray(scale, jnp.bfloat16)).any()


def test_dropout_masks_look_independent():
    """The hashed mask has no visible structure: neighbouring columns and rows, two keys, and the same positions of
    arrays of other shapes are uncorrelated, and the keep rate holds in every row and column block."""
    x = jnp.ones((512, 1024))
    mask = lambda key, x=x: np.asarray(dropout(x, 0.5, key) != 0, np.float32)
    a, b = mask(jax.random.key(3)), mask(jax.random.key(4))
    corr = lambda u, v: np.corrcoef(u.ravel(), v.ravel())[0, 1]
    bound = 4 / np.sqrt(a.size // 2)  # four standard deviations of a correlation estimate under independence
    assert abs(corr(a[:, 1:], a[:, :-1])) < bound and abs(corr(a[1:], a[:-1])) < bound
    assert abs(corr(a, b)) < bound
    assert abs(corr(a, mask(jax.random.key(3), jnp.ones((1024, 512))).reshape(512, 1024))) < bound
    blocks = a.reshape(16, 32, 16, 64).mean(axis=(1, 3))
    assert np.abs(blocks - 0.5).max() < 4 * 0.5 / np.sqrt(32 * 64)


def test_dropout_is_identity_in_evaluation():
    x = jnp.ones((3, 4))
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x


def test_gelu_matches_pytorch():
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 4
    np.testing.assert_allclose(gelu(jnp.asarray(x)), torch.nn.functional.gelu(torch.from_numpy(x)).numpy(),
                               atol=2e-6, rtol=1e-6)
    assert gelu(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_gelu_gradient_equals_autodiff():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((64, 48)) * 3, jnp.float32)
    plain = lambda x: 0.5 * x * (1 + jax.lax.erf(x / np.sqrt(2)))
    weights = jnp.asarray(np.random.default_rng(2).standard_normal((64, 48)), jnp.float32)
    grad, expected = (jax.grad(lambda x: (f(x) * weights).sum())(x) for f in (gelu, plain))
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    assert jax.grad(lambda x: gelu(x).astype(jnp.float32).sum())(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_layer_norm_value_and_gradients_equal_autodiff(dtype, implementation, monkeypatch):
    """Both implementations (the Pallas kernels in Pallas' interpreter here; compiled in tests/gpu), at a width that
    is not a power of two and with the backward kernel's rows in groups of 3 (the last one short)."""
    layer_norm = {"xla": layers.layer_norm, "pallas": layer_norm_kernels.layer_norm}[implementation]
    monkeypatch.setattr(layer_norm_kernels, "PROGRAMS", 3)
    monkeypatch.setattr(layer_norm_kernels, "BLOCK_VALUES", 128)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 5, 40)) * 2 + 1, dtype)
    scale, bias = (jnp.asarray(rng.standard_normal(40), jnp.float32) for _ in range(2))
    weights = jnp.asarray(rng.standard_normal((2, 5, 40)), jnp.float32)

    def plain(x, scale, bias):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        normed = (x32 - mean) / jnp.sqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + 1e-5)
        return (normed * scale + bias).astype(dtype)

    loss = lambda f: lambda *args: (f(*args).astype(jnp.float32) * weights).sum()
    custom = lambda x, scale, bias: layer_norm(x, scale, bias, 1e-5, dtype)
    np.testing.assert_allclose(custom(x, scale, bias).astype(jnp.float32), plain(x, scale, bias).astype(jnp.float32),
                               rtol=1e-5, atol=1e-5)
    tolerance = 1e-5 if dtype == jnp.float32 else 1e-2  # bf16: the input gradient is rounded to bf16
    for got, want in zip(jax.grad(loss(custom), argnums=(0, 1, 2))(x, scale, bias),
                         jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tolerance,
                                   atol=tolerance)


def test_layer_norm_kernels_sharded_over_rows_sum_the_parameter_gradients_across_devices():
    """Under a jit sharded over the batch (4 devices; the trainer's mesh), each device normalises its own rows (no
    all-gather in the compiled program) and the scale's and bias's gradients are summed over devices."""
    mesh = sharding.make_mesh(data=4, tensor=2)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None, None))
    x, cotangent = (jax.random.normal(jax.random.key(i), (8, 6, 40)) for i in range(2))
    scale, bias = jnp.linspace(0.5, 1.5, 40), jnp.linspace(-0.1, 0.1, 40)

    def run(norm, x, cotangent):
        out, pullback = jax.vjp(lambda x, scale, bias: norm(x, scale, bias, 1e-5, jnp.float32), x, scale, bias)
        return out, pullback(cotangent)

    expected = run(layers.layer_norm, x, cotangent)
    sharded = jax.jit(functools.partial(run, layer_norm_kernels.layer_norm))
    arrays = [jax.device_put(a, rows) for a in (x, cotangent)]
    assert "all-gather" not in sharded.lower(*arrays).compile().as_text()
    for got, want in zip(jax.tree.leaves(sharded(*arrays)), jax.tree.leaves(expected), strict=True):
        assert rel_err(got, want) < 1e-5


def _add_and_norm_inputs(dtype, shape=(2, 5, 40)):
    rng = np.random.default_rng(5)
    normal = lambda *shape: rng.standard_normal(shape)
    residual = jnp.asarray(normal(*shape) * 2 + 1, jnp.float32)
    branch = jnp.asarray(normal(*shape), dtype)
    branch_bias, scale, bias = (jnp.asarray(normal(shape[-1]), jnp.float32) for _ in range(3))
    cotangents = (jnp.asarray(normal(*shape), jnp.float32), jnp.asarray(normal(*shape), dtype))
    return (residual, branch, branch_bias, scale, bias), cotangents


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("kernels", [False, True])
def test_add_and_norm_equals_dropout_add_then_layer_norm(dtype, rate, kernels, monkeypatch):
    """LayerNorm.add_and_norm (the Pallas kernels in Pallas' interpreter, or XLA's formulation) against its plain
    composition: layers.dropout of the branch plus its bias in float32 (the same mask), added to the residual, then
    the LayerNorm; values and the gradients of every input, the backward kernel's rows in groups of 3."""
    monkeypatch.setattr(layer_norm_kernels, "PROGRAMS", 3)
    monkeypatch.setattr(layer_norm_kernels, "BLOCK_VALUES", 128)
    monkeypatch.setattr(layers.LayerNorm, "_fused", staticmethod(lambda x: kernels))
    (residual, branch, branch_bias, scale, bias), cotangents = _add_and_norm_inputs(dtype)
    key = jax.random.key(11)

    def fused(residual, branch, branch_bias, scale, bias):
        norm = layers.LayerNorm(40, rngs=nnx.Rngs(0), dtype=dtype)
        norm.scale[...], norm.bias[...] = scale, bias
        return norm.add_and_norm(residual, layers.Branch(branch, branch_bias), rate, key)

    def plain(residual, branch, branch_bias, scale, bias):
        total = residual + dropout(branch.astype(jnp.float32) + branch_bias, rate, key)
        return total, layers.layer_norm(total, scale, bias, 1e-5, dtype)

    inputs = (residual, branch, branch_bias, scale, bias)
    (got, pull_got), (want, pull_want) = jax.vjp(fused, *inputs), jax.vjp(plain, *inputs)
    tolerance = 1e-5 if dtype == jnp.float32 else 1e-2  # bf16: outputs and the branch's gradient rounded to bf16
    for name, g, w in zip(["total", "normalised", "d_residual", "d_branch", "d_branch_bias", "d_scale", "d_bias"],
                          [*got, *pull_got(cotangents)], [*want, *pull_want(cotangents)], strict=True):
        assert g.dtype == w.dtype, name
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=tolerance,
                                   atol=tolerance, err_msg=name)
    if rate:  # the mask dropped some of the branch, and its gradient
        assert (pull_got(cotangents)[1] == 0).mean() > 0.2


def test_add_and_norm_without_a_branch_is_the_layer_norm():
    x = jax.random.normal(jax.random.key(0), (3, 8))
    norm = layers.LayerNorm(8, rngs=nnx.Rngs(0))
    total, out = norm.add_and_norm(x, None, 0.5, jax.random.key(1))
    assert total is x and (out == norm(x)).all()


def test_add_layer_norm_kernels_sharded_over_rows_sum_the_parameter_gradients_across_devices():
    """As the LayerNorm kernels: each device adds and normalises its own rows (no all-gather), the dropout mask is
    the rows' global one, and the parameters' and the branch bias's gradients are summed over devices."""
    mesh = sharding.make_mesh(data=4, tensor=2)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    (residual, branch, *params), cotangents = _add_and_norm_inputs(jnp.float32, (48, 40))
    hashes = dropout_hashes(residual.shape, dropout_words(jax.random.key(2)))

    def run(add, residual, branch, cotangents):
        out, pullback = jax.vjp(lambda *a: add(*a, *hashes, 1e-5, jnp.float32, 0.3), residual, branch, *params)
        return out, pullback(cotangents)

    expected = run(layers.add_layer_norm, residual, branch, cotangents)
    sharded = jax.jit(functools.partial(run, layer_norm_kernels.add_layer_norm))
    arrays = [jax.device_put(a, rows) for a in (residual, branch, cotangents)]
    assert "all-gather" not in sharded.lower(*arrays).compile().as_text()
    for got, want in zip(jax.tree.leaves(sharded(*arrays)), jax.tree.leaves(expected), strict=True):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rate", [0.0, 0.2])
def test_dot_product_attention_gradients_equal_autodiff(dtype, rate):
    """The hand-written backward pass (probabilities kept in v's dtype, the dropout mask computed again) against
    autodiff of the plain formulation with the same mask, padded keys and different query/key and value widths."""
    rng = np.random.default_rng(4)
    q, k = (jnp.asarray(rng.standard_normal((2, length, 3, 8)), dtype) for length in (5, 6))  # 5 queries, 6 keys
    v = jnp.asarray(rng.standard_normal((2, 6, 3, 12)), dtype)
    cotangent = jnp.asarray(rng.standard_normal((2, 5, 3, 12)), dtype)
    mask = layers.padding_mask(jnp.array([[1] * 6, [1] * 4 + [0] * 2]))
    key = jax.random.key(3)

    def plain(q, k, v):
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / np.sqrt(8)
        probs = jax.nn.softmax(scores + layers.mask_bias(mask), axis=-1).astype(v.dtype)
        return jnp.einsum("bhts,bshd->bthd", dropout(probs, rate, key), v)

    custom = lambda q, k, v: layers.dot_product_attention(q, k, v, mask, dropout_rate=rate, rng=key)
    (out, pullback), (want, want_pullback) = (jax.vjp(f, q, k, v) for f in (custom, plain))
    assert out.dtype == want.dtype and rel_err(out, want) < 1e-6
    tolerance = 1e-6 if dtype == jnp.float32 else 2e-2  # bf16: the kept probabilities rounded
    for got, expected in zip(pullback(cotangent), want_pullback(cotangent), strict=True):
        assert got.dtype == expected.dtype and rel_err(got, expected) < tolerance
