"""Several processes, one run: `python -m train --num-processes 2`, each process with 2 CPU devices and gloo
collectives over localhost, as one process per GPU runs on a multi-GPU host (jaxport.launch).

- Two processes train as one process over the same 4 devices: the same global batch (each process reads its own
  half), FSDP across the processes, the same losses, evaluation and exported parameters.
- SIGKILL of one process stops the other; rerunning the command resumes from the last complete checkpoint and ends
  exactly as the uninterrupted two-process run.
- The checkpoint those two processes wrote with fsdp=4 restores onto (data 4, fsdp 2) over 8 devices, and onto one
  device for inference, with the same values.
- The launcher alone (no JAX): one process failing stops the others and sets the exit status; signals reach every
  process; each process gets its rank, its GPU and NVLink multicast off.
"""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxport import config as config_lib
from jaxport import registry, sharding, trainer
from tests import helpers

CONFIG = str(helpers.CONFIGS / "t5_reverse.py")
STEPS, CHECKPOINT_EVERY = 12, 2
# d_ff 2048: the MLP kernels (64 x 2048) are above packing.SMALL_LEAF, so FSDP shards them across the processes
# (smaller leaves are packed into one replicated vector).
OVERRIDES = [f"train.num_steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1",
             f"train.eval_every={STEPS}", "eval.generate=False", "mesh.fsdp=4", "model.d_ff=2048"]
PROCESSES, DEVICES_PER_PROCESS = 2, 2
# The tests of the training runs share seven training processes (about 3 CPU minutes): CI runs them
# (-m "slow or not slow"), the default run leaves them out.
SLOW = pytest.mark.slow


def cpu_env(devices: int, cache) -> dict:
    """A CPU process with `devices` devices, compiled programs shared through XLA's persistent cache."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(), "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def start(workdir, env, *extra):
    args = [f"--config.{o}" for o in OVERRIDES] + [f"--config.train.export_dir={workdir / 'export'}", *extra]
    return helpers.run_train(workdir, CONFIG, *args, env=env)


def finish(process):
    assert process.wait(timeout=900) == 0, helpers.stderr_of(process)[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workdirs: `two` (2 processes x 2 devices), `one` (1 process x 4 devices), `resumed` (2 x 2, process 1
    SIGKILLed after the first checkpoint, then the same command again); `killed`: facts about the kill."""
    root = tmp_path_factory.mktemp("multiprocess")
    per_process, whole = cpu_env(DEVICES_PER_PROCESS, root / "xla_cache"), cpu_env(4, root / "xla_cache")
    procs = f"--num-processes={PROCESSES}"
    two, one, resumed = (start(root / "two", per_process, procs), start(root / "one", whole),
                         start(root / "resumed", per_process, procs))
    pids = [helpers.launched_pid(resumed, index) for index in range(PROCESSES)]
    helpers.wait_for_checkpoint(resumed, root / "resumed")
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.time()
    killed = {"status": resumed.wait(timeout=120), "seconds": time.time() - killed_at,
              "survivor_running": helpers.is_running(pids[0]), "log": helpers.stderr_of(resumed),
              "finalized": helpers.finalized_steps(root / "resumed")}
    rerun = start(root / "resumed", per_process, procs)
    for process in (two, one, rerun):
        finish(process)
    return types.SimpleNamespace(two=root / "two", one=root / "one", resumed=root / "resumed", killed=killed,
                                 rerun_log=helpers.stderr_of(rerun))


def test_fsdp_shards_parameters_over_the_devices_of_both_processes():
    """What the two-process runs shard: their fsdp axis spans [process 0's 2 devices, process 1's 2 devices]."""
    config = config_lib.load_config(CONFIG, OVERRIDES)
    setup = trainer.build(config, registry.task("t5", config), devices=jax.devices()[:4])
    specs = {leaf.spec for leaf in jax.tree.leaves(setup.state_shardings.params)}
    assert P("fsdp", None) in specs and P(None, "fsdp") in specs  # wi (embed, mlp) and wo (mlp, embed)


@SLOW
def test_two_processes_train_as_one_process_over_the_same_devices(runs):
    two, one = helpers.read_metrics(runs.two), helpers.read_metrics(runs.one)
    assert sorted(two) == list(range(1, STEPS + 1)) and "eval_loss" in two[STEPS]
    for step, expected in one.items():  # gloo's reductions add in another order: float32 rounding apart
        assert two[step].keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_allclose(two[step][key], value, rtol=1e-5, err_msg=f"{key}@{step}")
    exported, reference = helpers.folder_tensors(runs.two / "export"), helpers.folder_tensors(runs.one / "export")
    assert exported.keys() == reference.keys()
    for key, value in reference.items():
        assert helpers.rel_err(exported[key], value) < 1e-5, key


@SLOW
def test_sigkill_of_one_process_stops_the_run_and_the_rerun_ends_as_the_uninterrupted_one(runs):
    killed = runs.killed
    assert killed["status"] == 128 + signal.SIGKILL, killed["log"][-3000:]
    assert "process 1" in killed["log"] and "was killed by SIGKILL; stopping the others" in killed["log"]
    assert not killed["survivor_running"] and killed["seconds"] < 60
    assert STEPS not in killed["finalized"], "the run finished before the kill: nothing was tested"
    assert "resumed from step" in runs.rerun_log
    assert helpers.read_metrics(runs.resumed) == helpers.read_metrics(runs.two)
    helpers.assert_same_bits(helpers.folder_tensors(runs.resumed / "export"),
                             helpers.folder_tensors(runs.two / "export"))


@SLOW
@pytest.mark.parametrize("mesh, devices", [((4, 2, 1), 8), ((1, 1, 1), 1)], ids=["data4-fsdp2", "one-device"])
def test_checkpoint_of_two_processes_restores_onto_another_mesh(runs, mesh, devices):
    data, fsdp, tensor = mesh
    config = config_lib.load_config(CONFIG, [*OVERRIDES, f"mesh.data={data}", f"mesh.fsdp={fsdp}",
                                             f"mesh.tensor={tensor}"])
    model, step = trainer.model_from_checkpoint(config, registry.task("t5", config), runs.two,
                                                devices=jax.devices()[:devices])
    assert step == STEPS
    helpers.assert_same_bits(helpers.flax_params(model), helpers.folder_tensors(runs.two / "export"))


def test_mesh_that_does_not_split_the_batch_between_processes_is_refused():
    """Two processes of two devices each; the batch sharded over 2 of 4 devices on a tensor axis across them."""
    device = collections.namedtuple("Device", "process_index id")
    devices = [device(p, i) for p in range(2) for i in range(2)]
    mesh = types.SimpleNamespace(size=4, shape={"data": 1, "fsdp": 1, "tensor": 4})
    by_tensor = types.SimpleNamespace(mesh=mesh, spec=(None,),
                                      devices_indices_map=lambda shape: {d: (slice(None),) for d in devices})
    by_process = types.SimpleNamespace(mesh=mesh, spec=("fsdp",), devices_indices_map=lambda shape: {
        d: (slice(k * shape[0] // 4, (k + 1) * shape[0] // 4),) for k, d in enumerate(devices)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jax, "process_count", lambda: 2)
        sharding.check_process_rows(by_process)
        with pytest.raises(ValueError, match="process 0 would hold rows 0-7 of 8, but reads rows 0-3.*tensor=1"):
            sharding.check_process_rows(by_tensor)


# ---------------------------------------------------------------------------------------------------------------
# The launcher alone, as `python -m jaxport.launch` (a launcher forked from this process, where JAX runs, would
# draw JAX's warning about fork)

def launcher(num_processes: int, code: str, *args: str) -> subprocess.Popen:
    """`python -m jaxport.launch` running `python -c CODE ARGS` as `num_processes` processes; stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "jaxport.launch", f"--num-processes={num_processes}", "--",
                             sys.executable, "-c", code, *args], cwd=helpers.ROOT, stderr=subprocess.PIPE, text=True)


def test_each_process_gets_its_rank_its_gpu_and_multicast_off(tmp_path):
    code = ("import json, os, sys; "
            f"open(os.path.join({str(tmp_path)!r}, os.environ['JAXPORT_PROCESS_ID']), 'w')"
            ".write(json.dumps([os.environ[k] for k in sys.argv[1:]]))")
    keys = ["JAX_COORDINATOR_ADDRESS", "JAXPORT_NUM_PROCESSES", "JAX_LOCAL_DEVICE_IDS", "NCCL_NVLS_ENABLE"]
    run = launcher(3, code, *keys)
    assert run.wait(timeout=60) == 0, run.stderr.read()
    seen = {int(path.name): json.loads(path.read_text()) for path in tmp_path.iterdir()}
    assert sorted(seen) == [0, 1, 2]
    assert len({values[0] for values in seen.values()}) == 1 and seen[0][0].startswith("127.0.0.1:")
    assert [values[1:] for _, values in sorted(seen.items())] == [["3", str(i), "0"] for i in range(3)]


def test_one_failing_process_stops_the_others_with_its_status(tmp_path):
    code = ("import os, time, pathlib; i = os.environ['JAXPORT_PROCESS_ID']; "
            f"pathlib.Path({str(tmp_path)!r}, i).write_text(str(os.getpid())); "
            "time.sleep(0.5) if i == '1' else time.sleep(600); raise SystemExit(3)")
    started = time.time()
    run = launcher(3, code)
    assert run.wait(timeout=60) == 3
    assert time.time() - started < 30 and "process 1 (pid" in run.stderr.read()
    pids = [int(path.read_text()) for path in tmp_path.iterdir()]
    assert len(pids) == 3 and not any(helpers.is_running(pid) for pid in pids)


def test_signals_reach_every_process_and_end_the_run(tmp_path):
    code = ("import os, signal, time, pathlib; i = os.environ['JAXPORT_PROCESS_ID']; "
            f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(tmp_path)!r}, i).touch(), os._exit(0))); "
            f"pathlib.Path({str(tmp_path)!r}, 'ready' + i).touch(); time.sleep(600)")
    run = launcher(2, code)
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert run.poll() is None and time.time() < deadline
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 0
    assert "forwarding SIGTERM" in run.stderr.read()
    assert {path.name for path in tmp_path.iterdir()} >= {"0", "1"}


def test_processes_die_with_the_launcher(tmp_path):
    code = (f"import os, time, pathlib; pathlib.Path({str(tmp_path)!r}, os.environ['JAXPORT_PROCESS_ID'])"
            ".write_text(str(os.getpid())); time.sleep(600)")
    run = launcher(2, code)
    deadline = time.time() + 60
    while len(list(tmp_path.iterdir())) < 2 or not all(path.read_text() for path in tmp_path.iterdir()):
        assert run.poll() is None and time.time() < deadline
        time.sleep(0.05)
    run.kill()
    run.wait()
    pids = [int(path.read_text()) for path in tmp_path.iterdir()]
    deadline = time.time() + 10
    while any(helpers.is_running(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(helpers.is_running(pid) for pid in pids)
