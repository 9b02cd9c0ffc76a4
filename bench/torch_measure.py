"""What the benchmarks that run a PyTorch reference share: device sync, freeing memory, the bf16 matmul rate, the
optimizer, timed calls and training steps."""
import gc
import time

import torch
from measure import median_ms


def torch_sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_free(device):
    """Collect what Python no longer holds and, on a GPU, give the cached blocks back (for the next side's run)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def torch_matmul_peak(n: int, device, iters: int = 20, repeats: int = 3) -> float:
    """bf16 FLOP/s of an n x n x n matmul through torch, best of `repeats` runs of `iters` back-to-back calls."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        torch_sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            c = a @ b
        torch_sync(device)
        best = min(best, time.perf_counter() - start)
    del a, b, c
    return 2 * n ** 3 * iters / best


def torch_adamw(params, learning_rate: float, weight_decay: float):
    """(AdamW, "fused") where the device has the fused kernel, else (AdamW, "foreach")."""
    try:
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, foreach=True), "foreach"


def torch_back_to_back_ms(call, device, runs: int) -> float:
    """The mean ms of `runs` calls of call() queued back to back (as a stream of batches runs), synchronised once."""
    torch_sync(device)
    start = time.perf_counter()
    for _ in range(runs):
        call()
    torch_sync(device)
    return 1e3 * (time.perf_counter() - start) / runs


def torch_call_ms(call, device, warmup: int = 3, runs: int = 20) -> dict:
    """call() timed: the median ms of `runs` synchronised calls after `warmup`, the mean ms of `runs` back to back,
    and the last call's result ("out")."""
    times = []
    for i in range(warmup + runs):
        torch_sync(device)
        start = time.perf_counter()
        out = call()
        torch_sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"ms": median_ms(times), "ms_back_to_back": torch_back_to_back_ms(call, device, runs), "out": out}


def timed_torch_steps(step, device, warmup: int, steps: int, label: str) -> dict:
    """`warmup` + `steps` calls of step() (one training step, returning its loss tensor), each synchronised and
    timed: median ms, every timed step's ms, the first and the last loss; then `steps` more back to back."""
    first_loss, times = None, []
    for i in range(warmup + steps):
        torch_sync(device)
        start = time.perf_counter()
        loss = step()
        torch_sync(device)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        if i == 0:
            first_loss = loss.item()
            print(f"   torch {label} first step {elapsed:.1f}s, loss {first_loss:.6f}", flush=True)
    record = {"ms": median_ms(times), "times_ms": [1e3 * t for t in times], "first_loss": first_loss,
              "last_loss": loss.item()}
    return {**record, "back_to_back_ms": torch_back_to_back_ms(step, device, steps)}
