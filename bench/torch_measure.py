"""What the benchmarks that run a PyTorch reference share: device sync, the bf16 matmul rate, the optimizer."""
import time

import torch


def torch_sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
