"""Shared layers: dropout's mask (rate, determinism, the same mask in the backward pass) and exact GELU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxport.layers import DROPOUT_BITS, dropout, gelu


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


def test_dropout_is_identity_in_evaluation():
    x = jnp.ones((3, 4))
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x


def test_gelu_matches_pytorch():
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 4
    np.testing.assert_allclose(gelu(jnp.asarray(x)), torch.nn.functional.gelu(torch.from_numpy(x)).numpy(),
                               atol=2e-6, rtol=1e-6)
    assert gelu(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16
