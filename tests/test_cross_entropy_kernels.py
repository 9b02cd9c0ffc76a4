"""jaxport.cross_entropy_kernels (in Pallas' interpreter here; compiled in tests/gpu) against optax's
cross-entropy on float32 logits: the per-token losses and the logits' gradient, with blocks small enough that rows
and the vocabulary both span several (the last ones short), and under a jit sharded over rows, the vocabulary or
both."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxport import config as config_lib
from jaxport import cross_entropy_kernels, registry, sharding, tasks, trainer
from tests.helpers import CONFIGS

ROWS, VOCAB = 22, 37


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(cross_entropy_kernels, "BLOCK_VALUES", 64)  # blocks of 4 rows x 16 columns
    monkeypatch.setattr(cross_entropy_kernels, "MAX_BLOCK_VOCAB", 16)


def inputs(dtype, rows=ROWS, vocab=VOCAB, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.standard_normal((rows, vocab)) * 4, dtype)
    labels = jnp.asarray(rng.integers(0, vocab, rows), jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal(rows), jnp.float32)
    return logits, labels, cotangent


def losses_and_gradient(cross_entropy, logits, labels, cotangent):
    losses, pullback = jax.vjp(lambda logits: cross_entropy(logits, labels), logits)
    return losses, pullback(cotangent)[0]


def optax_cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).astype(jnp.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_losses_and_gradient_equal_optax(dtype):
    logits, labels, cotangent = inputs(dtype)
    losses, gradient = losses_and_gradient(cross_entropy_kernels.cross_entropy, logits, labels, cotangent)
    want_losses, want_gradient = losses_and_gradient(optax_cross_entropy, logits, labels, cotangent)
    assert losses.dtype == jnp.float32 and gradient.dtype == logits.dtype
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6, atol=1e-5)
    tolerance = 1e-6 if dtype == jnp.float32 else 1e-2  # bf16: the gradient is rounded to bf16
    np.testing.assert_allclose(np.asarray(gradient, np.float32), np.asarray(want_gradient, np.float32),
                               rtol=tolerance, atol=tolerance)


def test_leading_axes_are_rows():
    logits, labels, _ = inputs(jnp.float32, rows=2 * 11)
    batched = cross_entropy_kernels.cross_entropy(logits.reshape(2, 11, VOCAB), labels.reshape(2, 11))
    np.testing.assert_allclose(batched.reshape(-1), optax_cross_entropy(logits, labels), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("spec", [("data", None), (None, "tensor"), ("data", "tensor"), (None, ("data", "tensor"))],
                         ids=["rows", "vocabulary", "both", "vocabulary-8"])
def test_sharded_over_rows_and_vocabulary(spec):
    """Each device reduces its own block of the logits (no all-gather in the compiled program); the statistics of
    rows split over the vocabulary are combined across devices, the labels shifted to each device's slice."""
    mesh = sharding.make_mesh(data=4, tensor=2)
    logits, labels, cotangent = inputs(jnp.float32, rows=24, vocab=48, seed=1)
    place = lambda *axes: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))
    run = jax.jit(functools.partial(losses_and_gradient, cross_entropy_kernels.cross_entropy),
                  in_shardings=(place(*spec), place(spec[0]), place(spec[0])))
    assert "all-gather" not in run.lower(logits, labels, cotangent).compile().as_text()
    losses, gradient = run(logits, labels, cotangent)
    want_losses, want_gradient = losses_and_gradient(optax_cross_entropy, logits, labels, cotangent)
    assert gradient.sharding.is_equivalent_to(place(*spec), 2)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(gradient, want_gradient, rtol=1e-6, atol=1e-6)


def test_a_vocabulary_split_unevenly_is_gathered():
    """37 columns constrained over 2 devices inside a jit (XLA pads the last slice): the kernels take the whole
    vocabulary rather than count the padding in the sums."""
    mesh = sharding.make_mesh(data=4, tensor=2)
    logits, labels, cotangent = inputs(jnp.float32, rows=24, vocab=37, seed=2)
    uneven = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "tensor"))
    split = lambda logits, labels: cross_entropy_kernels.cross_entropy(
        jax.lax.with_sharding_constraint(logits, uneven), labels)
    losses, gradient = jax.jit(functools.partial(losses_and_gradient, split))(logits, labels, cotangent)
    want_losses, want_gradient = losses_and_gradient(optax_cross_entropy, logits, labels, cotangent)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(gradient, want_gradient, rtol=1e-6, atol=1e-6)


def test_training_step_with_the_kernels_equals_optax(monkeypatch):
    """The kernels where the trainer runs them (its jitted step, gradient accumulation's scan, the batch over 4
    devices and the vocabulary over 2): one T5 step with the loss through the kernels, as on a GPU (Pallas'
    interpreter here), gives optax's loss and parameters."""
    config = config_lib.load_config(str(CONFIGS / "t5_reverse.py"), [
        "train.grad_accum_steps=2", "model.dropout_rate=0.0", "mesh.data=4", "mesh.tensor=2"])
    task = registry.task("t5", config)
    data = task.train_data(config)
    batches = [next(data) for _ in range(2)]
    results = {}
    for platform in ("cpu", "gpu"):
        platform_of = types.SimpleNamespace(default_platform=lambda platform=platform: platform)
        monkeypatch.setattr(tasks, "attention", platform_of)  # only the loss takes the GPU's path
        setup = trainer.build(config, task)
        step = jax.jit(trainer.make_train_step(setup, task, 2, 1), in_shardings=(setup.state_shardings,
                       setup.batch_sharding), out_shardings=setup.state_shardings)
        state = setup.state
        for batch in batches:  # two steps: Adam's first update is the gradient's sign, the second is not
            state = step(state, trainer.global_batch(batch, setup.batch_sharding))
        results[platform] = jax.device_get(state)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(results["gpu"].metric_sums[key], results["cpu"].metric_sums[key], rtol=1e-6)
    for got, want in zip(*(jax.tree.leaves(results[platform].params) for platform in ("gpu", "cpu")), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
