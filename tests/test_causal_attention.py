"""jaxport.causal_attention's Pallas kernels (Pallas' interpreter on the CPU; Triton on a GPU: tests/gpu) against
the einsum path GPT-2 takes otherwise: softmax, causal mask and attention dropout with the same key, outputs and
gradients, at lengths that fill the tiles and lengths that do not."""
import jax
import jax.numpy as jnp
import pytest

from backpack_jax.modeling import causal_weights
from jaxport import sharding
from jaxport.causal_attention import causal_attention
from jaxport.layers import causal_mask
from tests.helpers import rel_err

SCALE = 0.25


def einsum_attention(q, k, v, rate, rng):
    length = q.shape[1]
    probs = causal_weights(q, k, SCALE, causal_mask(jnp.arange(length), jnp.arange(length)), rate, rng)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


def outputs_and_grads(attend, q, k, v, cotangent):
    out, pullback = jax.vjp(attend, q, k, v)
    return out, pullback(cotangent)


@pytest.mark.parametrize(("length", "rate"), [(64, 0.0), (100, 0.1), (130, 0.3)])
def test_kernels_equal_the_einsums_with_the_same_dropout(length, rate):
    q, k, v, cotangent = (jax.random.normal(jax.random.key(i), (2, length, 3, 16)) for i in range(4))
    rng = jax.random.key(7)
    out, grads = outputs_and_grads(lambda q, k, v: causal_attention(q, k, v, scale=SCALE, dropout_rate=rate,
                                                                    rng=rng), q, k, v, cotangent)
    expected, expected_grads = outputs_and_grads(lambda q, k, v: einsum_attention(q, k, v, rate, rng), q, k, v,
                                                 cotangent)
    assert rel_err(out, expected) < 1e-5
    for name, grad, want in zip("qkv", grads, expected_grads, strict=True):
        assert rel_err(grad, want) < 1e-5, name


def test_dropout_needs_a_key_and_differs_between_keys():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 64, 2, 16)) for i in range(3))
    attend = lambda rng: causal_attention(q, k, v, scale=SCALE, dropout_rate=0.2, rng=rng)
    assert rel_err(attend(None), einsum_attention(q, k, v, 0.0, None)) < 1e-5  # no key: evaluation, no dropout
    assert rel_err(attend(jax.random.key(1)), attend(jax.random.key(2))) > 1e-2


def test_head_dims_triton_cannot_tile_are_refused():
    x = jnp.zeros((1, 8, 2, 24))
    with pytest.raises(ValueError, match="head dim 24 is not a power of two"):
        causal_attention(x, x, x, scale=SCALE)


def test_sharded_over_batch_and_heads_each_device_runs_its_own_part():
    """Under a jit sharded over batch (4 devices) and heads (2), the kernels run per device (no all-gather in the
    compiled program) and give the unsharded result, forward and backward, dropout included."""
    mesh = sharding.make_mesh(data=4, tensor=2)  # the trainer's mesh
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None, "tensor", None))
    q, k, v, cotangent = (jax.random.normal(jax.random.key(i), (4, 64, 2, 16)) for i in range(4))
    rng = jax.random.key(5)

    def run(q, k, v, cotangent):
        return outputs_and_grads(lambda q, k, v: causal_attention(q, k, v, scale=SCALE, dropout_rate=0.2, rng=rng),
                                 q, k, v, cotangent)

    expected = run(q, k, v, cotangent)
    sharded = jax.jit(run)
    arrays = [jax.device_put(x, spec) for x in (q, k, v, cotangent)]
    assert "all-gather" not in sharded.lower(*arrays).compile().as_text()
    for got, want in zip(jax.tree.leaves(sharded(*arrays)), jax.tree.leaves(expected), strict=True):
        assert rel_err(got, want) < 1e-5
