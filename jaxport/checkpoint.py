"""Training checkpoints: a thin layer over `orbax.checkpoint.CheckpointManager`.

Orbax already guarantees (and this module relies on, rather than re-checks):
  * atomic finalization: a step is written to `<step>.orbax-checkpoint-tmp` and renamed
    (or, on GCS, gets a `commit_success.txt`) only when complete; unfinalized steps are
    never listed, and `cleanup_tmp_directories` deletes them when a run resumes;
  * strict restoration: shapes and dtypes must match the target, restored straight into
    the target's shardings;
  * keep-last-K pruning (`LatestN`) and asynchronous writes.

What orbax does not catch, and this module adds:
  * silent corruption inside a finalized step: tensorstore does not checksum array data,
    so a flipped byte restores as a wrong value. Each save records a per-leaf checksum
    computed on device, and a digest of the JSON items; restore verifies both, and any
    failure to read or verify makes `restore_latest` warn and fall back to the previous
    step (moving the bad one aside so the run can save that step number again);
  * resuming a different model: the saved record holds the caller's metadata (family,
    config) and a fingerprint of the state; any difference raises `CheckpointMismatchError`
    listing what differs, instead of surfacing as a shape error or a silent fallback.
"""
import hashlib
import json
import time
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxport.tree import SEP, flatten

STATE, DATA_STATE, RECORD = "state", "data_state", "record"
CORRUPT_SUFFIX = ".corrupt"


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for another model, config or train-state layout."""

    def __init__(self, directory, differences: list[str]):
        self.directory = str(directory)
        self.differences = differences
        lines = "\n  ".join(differences)
        super().__init__(
            f"Checkpoint {directory} was written for a different model, config or train state; "
            f"resume with the matching config or use a fresh directory:\n  {lines}")


class CheckpointCorruptError(RuntimeError):
    """A finalized checkpoint cannot be read back exactly as it was saved."""


def fingerprint(state) -> dict[str, list]:
    """{"params/dense/kernel": [[8, 16], "float32"], ...} for a pytree of arrays or ShapeDtypeStructs.

    Paths use `jaxport.tree`'s separator, so a plain nested dict gets the same keys as
    `tree.flatten`; optimizer states (tuples, namedtuples) get their index/field names.
    """
    return {path: [list(leaf.shape), str(leaf.dtype)] for path, leaf in _leaves_by_path(state).items()}


class Checkpointer:
    """Saves and restores (train state, data-iterator position) pairs under `directory`."""

    def __init__(self, directory, *, keep: int, async_save: bool = True, metadata: Mapping):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        # Compare what JSON gives back, so tuples vs lists or int keys never look like changes.
        self.metadata = _json_normalized(metadata)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=async_save,
            # A run killed mid-save leaves `<step>.orbax-checkpoint-tmp`. Orbax replaces it
            # only if that same step is saved again; otherwise it is never pruned.
            cleanup_tmp_directories=True,
            create=True,
        )
        # Absolute: newer orbax refuses relative paths (`--workdir runs/x` is relative).
        self._manager = ocp.CheckpointManager(
            epath.Path(directory).absolute(), options=options, item_names=(STATE, DATA_STATE, RECORD))

    @property
    def directory(self) -> epath.Path:
        return self._manager.directory

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data_state: Mapping, force: bool = False) -> bool:
        """Starts writing `state` and `data_state` as step `step`; returns False if skipped.

        Orbax skips a step not newer than the latest saved one (unless `force`). When this
        returns, the arrays have been copied off the device, so the caller may donate or
        overwrite them; the write itself continues in the background until `wait()`.
        """
        if not force and not self._manager.should_save(step):
            return False
        data_state = _json_normalized(data_state)
        record = _sealed({
            "metadata": self.metadata,
            "state": fingerprint(state),
            "checksums": _checksums(state),
            "data_state_sha256": _sha256_json(data_state),
        })
        return self._manager.save(step, force=force, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            DATA_STATE: ocp.args.JsonSave(data_state),
            RECORD: ocp.args.JsonSave(record),
        }))

    def restore_latest(self, abstract_state) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) from the newest intact checkpoint, or None if there is none.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding` set; arrays
        are read directly into those shardings. Corrupt steps newer than the one restored are
        warned about and renamed to `<step>.corrupt-<time>`. Raises `CheckpointMismatchError`
        if the newest readable checkpoint belongs to another model/config, and
        `CheckpointCorruptError` if checkpoints exist but none is intact.
        """
        self.wait()
        self._manager.reload()
        expected = {"metadata": self.metadata, "state": fingerprint(abstract_state)}
        corrupt = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state, data_state = self._restore_verified(step, abstract_state, expected)
            except CheckpointMismatchError:
                raise
            except Exception as error:  # any failure to read or verify means unusable
                path = self._step_path(step)
                warnings.warn(f"Skipping corrupt checkpoint {path}: {_brief(error)}", RuntimeWarning)
                corrupt.append(path)
                continue
            self._move_aside(corrupt)
            return step, state, data_state
        if corrupt:
            raise CheckpointCorruptError(
                f"No intact checkpoint in {self.directory}; corrupt: {', '.join(map(str, corrupt))}")
        return None

    def wait(self):
        """Blocks until every started save is durable on disk (re-raises write errors)."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _restore_verified(self, step: int, abstract_state, expected: dict):
        record = _unsealed(self._manager.restore(
            step, args=ocp.args.Composite(**{RECORD: ocp.args.JsonRestore()}))[RECORD])
        # Checked before reading arrays, so a layout change is reported as such rather
        # than as an orbax shape error that would look like corruption.
        differences = _differences(
            {"metadata": record["metadata"], "state": record["state"]}, expected)
        if differences:
            raise CheckpointMismatchError(self._step_path(step), differences)
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state, strict=True),
            DATA_STATE: ocp.args.JsonRestore(),
        }))
        state, data_state = restored[STATE], restored[DATA_STATE]
        bad_leaves = [path for path, value in _checksums(state).items()
                      if record["checksums"].get(path) != value]
        if bad_leaves:
            raise CheckpointCorruptError(f"checksum mismatch in {', '.join(bad_leaves)}")
        if _sha256_json(data_state) != record["data_state_sha256"]:
            raise CheckpointCorruptError(f"{DATA_STATE} does not match its recorded digest")
        return state, data_state

    def _step_path(self, step: int) -> epath.Path:
        # Steps are named by the bare number: no step_prefix or padding is configured.
        return self.directory / str(step)

    def _move_aside(self, paths: list[epath.Path]):
        """Renames skipped steps so orbax no longer lists them: a newer corrupt step would
        otherwise make orbax refuse to save the steps the resumed run is about to reach."""
        if not paths:
            return
        if jax.process_index() == 0:
            for path in paths:
                path.rename(path.parent / f"{path.name}{CORRUPT_SUFFIX}-{time.time_ns()}")
        self._manager.reload()


def _leaves_by_path(tree) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {SEP.join(_key_name(key) for key in keypath): leaf for keypath, leaf in leaves}


def _key_name(key) -> str:
    # DictKey.key, SequenceKey.idx, GetAttrKey.name, FlattenedIndexKey.key
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _checksums(state) -> dict[str, int]:
    sums = jax.device_get(_leaf_checksums(state))
    return {path: int(value) for path, value in _leaves_by_path(sums).items()}


@jax.jit
def _leaf_checksums(state):
    return jax.tree.map(_checksum, state)


def _checksum(array):
    """Position-weighted sum of the array's raw bits, mod 2**32.

    Computed on device over the sharded array (modular sums are exact in any reduction
    order). Weights are odd, so any single flipped bit changes the sum; position weighting
    catches swapped or shifted values. Not cryptographic: it guards against storage
    corruption, not tampering.
    """
    words = _as_uint32_words(array)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride % 2**32)
        stride *= words.shape[axis]
    weights = index * np.uint32(0x9E3779B1) * np.uint32(2) + np.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32)


def _as_uint32_words(array):
    if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
        array = jax.random.key_data(array)
    if array.dtype == jnp.bool_:
        return array.astype(jnp.uint32)
    itemsize = array.dtype.itemsize
    if itemsize > 4:  # 64-bit values become a trailing pair of words
        return jax.lax.bitcast_convert_type(array, jnp.uint32)
    unsigned = jnp.dtype(f"uint{8 * itemsize}")
    return jax.lax.bitcast_convert_type(array, unsigned).astype(jnp.uint32)


def _json_normalized(value):
    return json.loads(json.dumps(value))


def _sha256_json(value) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _sealed(body: dict) -> dict:
    # A garbled digit in the record would otherwise still parse, and could pose as a
    # config mismatch or hide a corrupt checksum.
    return {"body": body, "sha256": _sha256_json(body)}


def _unsealed(record: Mapping) -> dict:
    if _sha256_json(record["body"]) != record["sha256"]:
        raise CheckpointCorruptError(f"{RECORD} does not match its recorded digest")
    return record["body"]


def _differences(saved: Mapping, current: Mapping) -> list[str]:
    """One line per flat path ("metadata/config/d_model", "state/params/w") that differs."""
    saved, current = flatten(saved), flatten(current)
    lines = []
    for path in sorted(saved.keys() | current.keys()):
        if path not in current:
            lines.append(f"{path}: unexpected in checkpoint ({saved[path]})")
        elif path not in saved:
            lines.append(f"{path}: missing from checkpoint ({current[path]})")
        elif saved[path] != current[path]:
            lines.append(f"{path}: checkpoint {saved[path]}, now {current[path]}")
    return lines


def _brief(error: Exception, limit: int = 300) -> str:
    # tensorstore errors embed whole JSON specs; the head names the file and the problem.
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + "..."
