"""One process per GPU on real GPUs (NCCL), as tests/test_multiprocess.py checks it on CPU processes (gloo): two
processes, one GPU each, train as one process over the same two GPUs; SIGKILL of one stops the other and the rerun
ends bit-identical to an uninterrupted run; the checkpoint restores onto one GPU. Needs 2 GPUs or more.

    JAX_PLATFORMS=cuda python -m pytest -q -s tests/gpu/test_multigpu.py
"""
import os
import signal
import time
import types

import jax
import pytest

from jaxport import config as config_lib
from jaxport import registry, trainer
from tests import helpers

pytestmark = pytest.mark.skipif(jax.device_count() < 2, reason="needs two GPUs")

CONFIG = str(helpers.CONFIGS / "t5_reverse.py")
STEPS = 12
# FSDP over both GPUs (the MLP kernels are above packing.SMALL_LEAF, so they are sharded); float32, as the CPU test.
OVERRIDES = [f"train.num_steps={STEPS}", "train.checkpoint_every=2", "train.log_every=1", f"train.eval_every={STEPS}",
             "eval.generate=False", "mesh.fsdp=2", "model.d_ff=2048"]
# Deterministic kernels (a scatter-add's atomics would otherwise differ from run to run); several processes share
# each GPU here, so none takes XLA's default pool of 75% of it.
ENV = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_gpu_deterministic_ops=true",
       "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def start(workdir, *extra, env=None):
    args = [f"--config.{o}" for o in OVERRIDES] + [f"--config.train.export_dir={workdir / 'export'}", *extra]
    return helpers.run_train(workdir, CONFIG, *args, env={**ENV, **(env or {})})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multigpu")
    two = start(root / "two", "--num-processes=2")
    one = start(root / "one", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    resumed = start(root / "resumed", "--num-processes=2")
    pids = [helpers.launched_pid(resumed, index) for index in range(2)]
    helpers.wait_for_checkpoint(resumed, root / "resumed")
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.time()
    killed = {"status": resumed.wait(timeout=120), "seconds": time.time() - killed_at,
              "survivor_running": helpers.is_running(pids[0]), "finalized": helpers.finalized_steps(root / "resumed")}
    rerun = start(root / "resumed", "--num-processes=2")
    for process in (two, one, rerun):
        assert process.wait(timeout=900) == 0, helpers.stderr_of(process)[-3000:]
    return types.SimpleNamespace(two=root / "two", one=root / "one", resumed=root / "resumed", killed=killed,
                                 rerun_log=helpers.stderr_of(rerun))


def test_two_gpu_processes_train_as_one_process(runs):
    two, one = helpers.read_metrics(runs.two), helpers.read_metrics(runs.one)
    assert two.keys() == one.keys() == set(range(1, STEPS + 1))
    for step, expected in one.items():
        for key, value in expected.items():
            assert two[step][key] == pytest.approx(value, rel=1e-5), f"{key}@{step}"
    exported, reference = helpers.folder_tensors(runs.two / "export"), helpers.folder_tensors(runs.one / "export")
    print("largest relative error of an exported parameter, two processes vs one:",
          max(helpers.rel_err(exported[key], value) for key, value in reference.items()))
    assert all(helpers.rel_err(exported[key], value) < 1e-5 for key, value in reference.items())


def test_sigkill_of_one_gpu_process_and_rerun(runs):
    killed = runs.killed
    assert killed["status"] == 128 + signal.SIGKILL and not killed["survivor_running"] and killed["seconds"] < 60
    assert STEPS not in killed["finalized"], "the run finished before the kill: nothing was tested"
    assert "resumed from step" in runs.rerun_log
    assert helpers.read_metrics(runs.resumed) == helpers.read_metrics(runs.two)
    helpers.assert_same_bits(helpers.folder_tensors(runs.resumed / "export"),
                             helpers.folder_tensors(runs.two / "export"))


def test_checkpoint_of_two_gpu_processes_restores_onto_one_gpu(runs):
    config = config_lib.load_config(CONFIG, [*OVERRIDES, "mesh.fsdp=1", "mesh.data=1"])
    model, step = trainer.model_from_checkpoint(config, registry.task("t5", config), runs.two,
                                                devices=jax.devices()[:1])
    assert step == STEPS
    helpers.assert_same_bits(helpers.flax_params(model), helpers.folder_tensors(runs.two / "export"))
