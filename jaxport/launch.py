"""One process per GPU on one host: start N copies of a command that join one JAX run.

    python -m train --config configs/t5_reverse.py --workdir runs/x --num-processes 4
    python -m jaxport.launch --num-processes 4 -- python my_script.py ARGS

Process i gets the environment `jaxport.sharding.maybe_initialize_distributed` reads to call
`jax.distributed.initialize(coordinator_address="127.0.0.1:PORT", num_processes=N, process_id=i,
local_device_ids=[i])`: it drives GPU i, and process 0 serves the coordinator on a free local port. Every process
gets NCCL_NVLS_ENABLE=0 (and NVSHMEM_DISABLE_NVLS=1): NVLink multicast stays off, since on shared hosts a program
using it can take the GPUs out of service.

The launcher forwards SIGINT, SIGTERM and SIGHUP to every process. When one process fails (a non-zero exit, or
killed), it stops the others, which would otherwise wait in their next collective, and exits with the failed
one's status (128 + signal for a signal). The processes die with the launcher, even when it is SIGKILLed, so a
rerun never races a leftover writing to the same workdir.

Imports nothing from JAX: the launcher itself touches no device.
"""
import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger(__name__)

# Read by jaxport.sharding.maybe_initialize_distributed (JAX reads the other two itself).
COORDINATOR, NUM_PROCESSES, PROCESS_ID, LOCAL_DEVICE_IDS = (
    "JAX_COORDINATOR_ADDRESS", "JAXPORT_NUM_PROCESSES", "JAXPORT_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")
# NVLink multicast off: in NCCL (XLA's GPU collectives) and in NVSHMEM, which XLA can use too.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "NVSHMEM_DISABLE_NVLS": "1"}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, port: int, num_processes: int, process_id: int) -> dict:
    """The environment of process `process_id`: `base` plus where to find the others and its GPU."""
    return {**base, **NO_MULTICAST, COORDINATOR: f"127.0.0.1:{port}", NUM_PROCESSES: str(num_processes),
            PROCESS_ID: str(process_id), LOCAL_DEVICE_IDS: str(process_id),
            # The coordinator listens on loopback only (JAX's default binds every interface).
            "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"}


def _dies_with(parent: int):
    """What a child runs before exec: SIGKILL when the launcher dies (Linux prctl PR_SET_PDEATHSIG), or exit now if
    it already has."""
    def preexec():
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def exit_status(returncode: int) -> int:
    """A shell's exit status for a child's Popen returncode (-N: killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def launch(command: list[str], num_processes: int, *, grace_seconds: float = 30.0) -> int:
    """Run `command` as processes 0..num_processes-1 of one JAX run; the exit status of the run (0 if all
    succeeded, else the first failure's). `grace_seconds`: how long stopped processes get before SIGKILL."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    port = free_port()
    preexec = _dies_with(os.getpid()) if sys.platform.startswith("linux") else None
    processes = []
    received = []
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in FORWARDED}
    try:
        for index in range(num_processes):
            processes.append(subprocess.Popen(command, env=process_env(dict(os.environ), port, num_processes, index),
                                              preexec_fn=preexec,
                                              # Own process group: a terminal's Ctrl-C reaches the launcher only,
                                              # which forwards it once.
                                              process_group=0))
            log.info("process %d of %d: pid %d", index, num_processes, processes[-1].pid)
        return _supervise(processes, received, grace_seconds)
    finally:
        _stop(processes, signal.SIGTERM, grace_seconds)  # only those still running (an error above)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(processes: list[subprocess.Popen], received: list, grace_seconds: float) -> int:
    forwarded = 0
    while True:
        for sig in received[forwarded:]:
            log.warning("forwarding %s to every process", signal.Signals(sig).name)
            for process in processes:
                if process.poll() is None:
                    process.send_signal(sig)
        forwarded = len(received)
        codes = [process.poll() for process in processes]
        failed = [(index, code) for index, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            index, code = failed[0]
            log.error("process %d (pid %d) %s; stopping the others", index, processes[index].pid,
                      f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}")
            _stop(processes, signal.SIGTERM, grace_seconds)
            return exit_status(code)
        if all(code == 0 for code in codes):
            return 0
        time.sleep(POLL_SECONDS)


def _stop(processes: list[subprocess.Popen], sig: int, grace_seconds: float) -> None:
    """`sig` to the processes still running; SIGKILL to those still running `grace_seconds` later."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(sig)
    deadline = time.monotonic() + grace_seconds
    for process in running:
        try:
            process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxport.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, required=True, help="processes to start: one per GPU")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return launch(command, args.num_processes)


if __name__ == "__main__":
    sys.exit(main())
