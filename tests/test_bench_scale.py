"""bench/scale.py on the tests' 8 CPU devices at its tiny shapes: each measurement runs end to end, and what it
reports holds together (every mode starts from the same loss on the same batch; FSDP holds a fraction of the train
state per device; the JSON has what the run returned). The GPU figures come from the commands in bench/README.md."""
import importlib
import json

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # a dozen small compilations: CI runs it (-m "slow or not slow")


@pytest.fixture
def scale(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # how the bench scripts import their siblings
    return importlib.import_module("scale")


def measure(scale, tmp_path, *args) -> dict:
    out = tmp_path / "out.json"
    results = scale.main([*args, "--tiny", "--steps", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert not [r for r in results["runs"] if "error" in r] and not results["skipped"]
    return {(r["mode"], r["gpus"]): r for r in results["runs"]}


def test_t5_data_parallel_and_fsdp_scaling(scale, tmp_path):
    runs = measure(scale, tmp_path, "t5", "--gpus", "1,2")
    assert sorted(runs) == [("dp", 1), ("dp", 2), ("fsdp", 2)]
    assert runs["dp", 1]["efficiency"] == 1.0
    assert all(r["efficiency"] > 0 and 0 < r["mfu"] and r["tokens_per_sec"] > 0 for r in runs.values())
    assert runs["dp", 2]["rows"] == 2 * runs["dp", 1]["rows"]  # weak scaling: the batch per GPU is fixed
    assert runs["fsdp", 2]["first_loss"] == pytest.approx(runs["dp", 2]["first_loss"], rel=1e-5)
    # The MLP kernels and their Adam moments (most of the state) halve; the packed small leaves stay whole.
    assert runs["fsdp", 2]["state_bytes_per_gpu"] < 0.65 * runs["dp", 2]["state_bytes_per_gpu"]


def test_flipped_11b_fsdp_and_tensor_parallel(scale, tmp_path):
    runs = measure(scale, tmp_path, "flipped_11b", "--gpus", "2")
    assert sorted(runs) == [("fsdp", 2), ("fsdp_tp", 2)]
    assert runs["fsdp_tp", 2]["mesh"] == {"data": 1, "fsdp": 1, "tensor": 2}
    # bf16 compute: tensor parallelism sums the MLP's and attention's partial products in another order (float32
    # runs agree to 2e-5 on every mesh: test_sharding.py).
    assert runs["fsdp_tp", 2]["first_loss"] == pytest.approx(runs["fsdp", 2]["first_loss"], rel=1e-2)


def test_lsg_bart_data_parallel(scale, tmp_path):
    runs = measure(scale, tmp_path, "lsg", "--gpus", "2")
    assert sorted(runs) == [("dp", 2)] and runs["dp", 2]["tokens_per_step"] == 2 * (256 + 16)
