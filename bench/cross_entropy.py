"""Softmax cross-entropy forward + backward alone, at Backpack-GPT2's training step (16384 tokens x 50264, bf16
logits) and a byte vocabulary (Perceiver IO's 32768 x 262): optax on float32 logits (XLA's fusions, what
jaxport.tasks.token_cross_entropy runs off the GPU), jaxport.cross_entropy_kernels (what it runs on an NVIDIA GPU)
and torch.nn.functional.cross_entropy.

    python bench/cross_entropy.py [--sweep] [--out cross_entropy.json]

Each call takes the per-token losses of the logits and their gradient (as a training step does); the figures are
the median synchronised call, the mean of calls dispatched back to back and for JAX the GPU kernel time from a
profile; also each implementation's largest gradient error against optax in float32. --sweep also times the
kernels over block sizes and warps (how BLOCK_VALUES, MAX_BLOCK_VOCAB and WARPS were chosen).
"""
import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from measure import print_kernel_results, write_results  # bench/ on sys.path
from profiling import kernel_benchmark
from torch_measure import torch_call_ms

from jaxport import cross_entropy_kernels

SHAPES = {"backpack": (16384, 50264), "bytes": (32768, 262)}
SWEEP = {"BLOCK_VALUES": (4096, 8192, 16384), "MAX_BLOCK_VOCAB": (1024, 2048, 4096), "WARPS": (4, 8)}


def optax_cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def jax_program(cross_entropy):
    def step(logits, labels, cotangent):
        losses, pullback = jax.vjp(lambda logits: cross_entropy(logits, labels), logits)
        return losses, pullback(cotangent)[0]
    return jax.jit(step)


def time_jax_program(cross_entropy, inputs, expected) -> dict:
    timed = kernel_benchmark(jax_program(cross_entropy).lower(*inputs).compile(), inputs)
    gradient = np.asarray(timed.pop("out")[1], np.float32)
    return {**timed, "max_error": float(np.abs(gradient - expected).max())}


def time_torch(logits, labels, cotangent, expected) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.tensor(logits, dtype=torch.bfloat16, device=device, requires_grad=True)
    y, g = torch.tensor(labels, device=device).long(), torch.tensor(cotangent, device=device)

    def call():
        losses = torch.nn.functional.cross_entropy(x, y, reduction="none")
        return torch.autograd.grad(losses, x, g)[0]
    timed = torch_call_ms(call, device)
    gradient = timed.pop("out").float().cpu().numpy()
    return {**timed, "max_error": float(np.abs(gradient - expected).max())}


def measure(rows: int, vocab: int, sweep: bool) -> dict:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((rows, vocab), np.float32) * 3).astype(np.float32)
    labels = rng.integers(0, vocab, rows).astype(np.int32)
    cotangent = rng.standard_normal(rows).astype(np.float32)
    expected = np.asarray(jax_program(optax_cross_entropy)(logits, labels, cotangent)[1])
    inputs = (jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels), jnp.asarray(cotangent))
    results = {name: time_jax_program(fn, inputs, expected)
               for name, fn in (("xla", optax_cross_entropy), ("pallas", cross_entropy_kernels.cross_entropy))}
    results["torch"] = time_torch(logits, labels, cotangent, expected)
    if sweep:
        defaults = {name: getattr(cross_entropy_kernels, name) for name in SWEEP}
        for values in itertools.product(*SWEEP.values()):
            for name, value in zip(SWEEP, values, strict=True):
                setattr(cross_entropy_kernels, name, value)
            jax.clear_caches()  # the custom partitioning's HLO does not show the block sizes: compile afresh
            key = "pallas " + " ".join(f"{name}={value}" for name, value in zip(SWEEP, values, strict=True))
            results[key] = time_jax_program(cross_entropy_kernels.cross_entropy, inputs, expected)
        for name, value in defaults.items():
            setattr(cross_entropy_kernels, name, value)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="also time the kernels over block sizes and warps")
    parser.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke test)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    shapes = {name: (64, min(vocab, 300)) for name, (_, vocab) in SHAPES.items()} if args.tiny else SHAPES
    results = {}
    for title, (rows, vocab) in shapes.items():
        results[title] = measure(rows, vocab, args.sweep)
        print_kernel_results(f"cross-entropy forward + backward, {title} {rows} x {vocab} bf16 logits (largest "
                             "error: the gradient's)", results[title])
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
