"""Checkpointer: exact round trips (sharded too), pruning, async saves, crash/corruption
fallback and model/config mismatch errors. Expects 8 CPU devices (tests/conftest.py sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported)."""
import gc
import json
import re
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxport.checkpoint import CheckpointCorruptError, Checkpointer, CheckpointMismatchError, fingerprint

METADATA = {"family": "t5", "config": {"d_model": 64, "num_layers": 2}}


def train_state(seed: int = 0, d_model: int = 64) -> dict:
    kernel = jax.random.normal(jax.random.key(seed), (d_model, d_model))
    # NaN and -0.0 only survive a bit-level comparison if stored bit-exactly.
    kernel = kernel.at[0, 0].set(jnp.nan).at[0, 1].set(-0.0)
    params = {"dense": {"kernel": kernel, "bias": jnp.full((d_model,), seed + 0.5, jnp.bfloat16)},
              "scale": jnp.arange(8, dtype=jnp.int8)}
    return {"params": params, "opt": optax.adam(1e-3).init(params),
            "step": jnp.int32(seed), "rng": jax.random.key(seed)}


def shard_over_mesh(state):
    """2-D leaves split over both mesh axes, 1-D over "model", scalars replicated."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    specs = {2: P("data", "model"), 1: P("model")}
    return jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, specs.get(x.ndim, P()))), state)


def abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def host_copy(state):
    return jax.tree.map(lambda x: np.asarray(_raw(x)), state)


def assert_bit_identical(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        got, want = np.asarray(_raw(got)), np.asarray(_raw(want))
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()


def _raw(x):
    return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def save_steps(directory, steps, keep=3):
    """Saves train_state(step) with data position {"index": 10 * step} at each step."""
    with Checkpointer(directory, keep=keep, metadata=METADATA) as checkpointer:
        for step in steps:
            assert checkpointer.save(step, train_state(step), {"index": 10 * step, "epoch": 0})
        checkpointer.wait()


def test_round_trip_sharded_is_bit_identical(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)")
    state = shard_over_mesh(train_state(3))
    with Checkpointer(tmp_path, keep=2, metadata=METADATA) as checkpointer:
        checkpointer.save(7, state, {"index": 123, "shard_order": [3, 1, 2]})
        checkpointer.wait()
    target = abstract(state)
    with Checkpointer(tmp_path, keep=2, metadata=METADATA) as checkpointer:
        step, restored, data_state = checkpointer.restore_latest(target)
    assert step == 7 and data_state == {"index": 123, "shard_order": [3, 1, 2]}
    assert_bit_identical(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert got.sharding == want.sharding


def test_keeps_last_k(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4], keep=2)
    with Checkpointer(tmp_path, keep=2, metadata=METADATA) as checkpointer:
        assert checkpointer.all_steps() == [3, 4] and checkpointer.latest_step() == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4"]


def test_async_save_owns_its_copy_and_wait_makes_it_durable(tmp_path):
    state = train_state(1)
    expected = host_copy(state)
    with Checkpointer(tmp_path, keep=2, async_save=True, metadata=METADATA) as checkpointer:
        checkpointer.save(5, state, {"index": 50})
        # The training loop donates its buffers to the next step right after save().
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        checkpointer.wait()
        assert (tmp_path / "5").is_dir()
        step, restored, data_state = checkpointer.restore_latest(abstract(train_state(1)))
    assert (step, data_state) == (5, {"index": 50})
    assert_bit_identical(restored, expected)


def test_empty_directory_returns_none(tmp_path):
    with Checkpointer(tmp_path / "fresh", keep=2, metadata=METADATA) as checkpointer:
        assert checkpointer.restore_latest(abstract(train_state())) is None
        assert checkpointer.latest_step() is None


def test_half_written_checkpoint_is_ignored_then_deleted(tmp_path):
    save_steps(tmp_path, [1])
    # What a save killed before its final rename leaves behind.
    shutil.copytree(tmp_path / "1", tmp_path / "5.orbax-checkpoint-tmp")
    with Checkpointer(tmp_path, keep=3, metadata=METADATA) as checkpointer:
        step, restored, data_state = checkpointer.restore_latest(abstract(train_state()))
        assert (step, data_state) == (1, {"index": 10, "epoch": 0})
        assert_bit_identical(restored, train_state(1))
        assert checkpointer.save(2, train_state(2), {"index": 20})
        checkpointer.wait()
        assert checkpointer.restore_latest(abstract(train_state()))[0] == 2
    assert not (tmp_path / "5.orbax-checkpoint-tmp").exists()


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    # tensorstore does not checksum array data: this one restores silently wrong without ours.
    "flipped byte in array data": lambda step_dir: _flip_byte(_largest_file(step_dir / "state")),
    "truncated array data": lambda step_dir: _truncate(_largest_file(step_dir / "state")),
    "deleted array manifest": lambda step_dir: (step_dir / "state" / "manifest.ocdbt").unlink(),
    "data_state edited but valid JSON": lambda step_dir: (step_dir / "data_state" / "metadata")
        .write_text(json.dumps({"index": 999, "epoch": 0})),
    "record garbled": lambda step_dir: _truncate(step_dir / "record" / "metadata"),
    # Must read as corruption, not as a config mismatch.
    "record edited but valid JSON": lambda step_dir: _edit_record_d_model(step_dir / "record" / "metadata"),
}


def _edit_record_d_model(path):
    record = json.loads(path.read_text())
    record["body"]["metadata"]["config"]["d_model"] = 65
    path.write_text(json.dumps(record))


@pytest.fixture
def flush_unraisable():
    """Lets late exceptions of a failed read surface before this test ends, so they are
    filtered here rather than reported in whichever test runs next."""
    yield
    time.sleep(0.05)
    gc.collect()


# When one array fails to read, orbax closes its event loop while tensorstore callbacks for
# the other arrays are pending; they report "Event loop is closed" as unraisable exceptions, and
# the metadata read orbax had scheduled is collected unawaited (seen once in CI, at the gc above).
ignore_failed_read_noise = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning",
    "ignore:coroutine 'Store._get_array_metadatas' was never awaited:RuntimeWarning")


@ignore_failed_read_noise
@pytest.mark.usefixtures("flush_unraisable")
@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_newest_is_skipped_with_warning(tmp_path, corrupt):
    save_steps(tmp_path, [1, 2])
    corrupt(tmp_path / "2")
    with Checkpointer(tmp_path, keep=3, metadata=METADATA) as checkpointer:
        with pytest.warns(RuntimeWarning, match=re.escape(str(tmp_path / "2"))):
            step, restored, data_state = checkpointer.restore_latest(abstract(train_state()))
        assert (step, data_state) == (1, {"index": 10, "epoch": 0})
        assert_bit_identical(restored, train_state(1))
        # Moved aside, so the resumed run can save step 2 again.
        assert checkpointer.all_steps() == [1]
        assert [p.name.split("-")[0] for p in tmp_path.glob("2.corrupt-*")] == ["2.corrupt"]
        assert checkpointer.save(2, train_state(2), {"index": 20})


@ignore_failed_read_noise
@pytest.mark.usefixtures("flush_unraisable")
def test_all_corrupt_raises(tmp_path):
    save_steps(tmp_path, [1])
    (tmp_path / "1" / "state" / "manifest.ocdbt").unlink()
    with Checkpointer(tmp_path, keep=3, metadata=METADATA) as checkpointer:
        with pytest.warns(RuntimeWarning), pytest.raises(CheckpointCorruptError, match="No intact"):
            checkpointer.restore_latest(abstract(train_state()))


def test_other_model_or_config_raises_naming_differences(tmp_path):
    save_steps(tmp_path, [1])
    state = train_state(d_model=32)
    state["params"]["extra"] = jnp.zeros(3)
    del state["params"]["scale"]
    state["opt"] = optax.adam(1e-3).init(state["params"])
    metadata = {"family": "t5", "config": {"d_model": 32, "num_layers": 2, "dropout": 0.1}}
    with Checkpointer(tmp_path, keep=3, metadata=metadata) as checkpointer:
        with pytest.raises(CheckpointMismatchError) as raised:
            checkpointer.restore_latest(abstract(state))
        assert checkpointer.all_steps() == [1]  # a mismatch is not treated as corruption
    message = str(raised.value)
    assert str(tmp_path / "1") in message
    assert "metadata/config/d_model: checkpoint 64, now 32" in message
    assert "metadata/config/dropout: missing from checkpoint" in message
    assert "state/params/dense/kernel: checkpoint [[64, 64], 'float32'], now [[32, 32], 'float32']" in message
    assert "state/params/extra: missing from checkpoint" in message
    assert "state/params/scale: unexpected in checkpoint" in message
    assert "metadata/config/num_layers" not in message


def test_fingerprint_paths_follow_tree_flatten():
    prints = fingerprint(abstract(train_state()))
    assert prints["params/dense/kernel"] == [[64, 64], "float32"]
    assert prints["params/dense/bias"] == [[64], "bfloat16"]
    assert prints["opt/0/mu/dense/kernel"] == [[64, 64], "float32"]
    assert prints["rng"] == [[], "key<fry>"]
