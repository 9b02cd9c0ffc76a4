"""LayerNorm forward + backward alone, at Perceiver IO's latent shape (4096 x 1280) and Backpack-GPT2's
(16384 x 768), bf16: jaxport.layers.layer_norm (XLA's fusions), jaxport.layer_norm_kernels (what LayerNorm runs on
an NVIDIA GPU) and torch.nn.functional.layer_norm.

    python bench/layer_norm.py [--norms 8] [--out layer_norm.json]

Each call normalises --norms different inputs and takes the gradients of input, scale and bias (as a training step
does for its LayerNorms); the figures are per LayerNorm: the median synchronised call, the mean of calls dispatched
back to back, and for JAX the GPU kernel time from a profile. Also each implementation's largest error against
XLA's formulation in float32.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from measure import print_kernel_results, write_results  # bench/ on sys.path
from profiling import kernel_benchmark
from torch_measure import torch_call_ms

from jaxport import layer_norm_kernels, layers

SHAPES = {"perceiver latents": (4096, 1280), "backpack": (16384, 768)}
EPS = 1e-5


def jax_program(norm, dtype):
    def step(xs, scale, bias, cotangents):
        outs = []
        for x, cotangent in zip(xs, cotangents, strict=True):
            out, pullback = jax.vjp(lambda x, scale, bias: norm(x, scale, bias, EPS, dtype), x, scale, bias)
            outs.append((out, *pullback(cotangent)))
        return outs
    return jax.jit(step)


def torch_call(xs, scale, bias, cotangents):
    def call():
        outs = []
        for x, cotangent in zip(xs, cotangents, strict=True):
            out = torch.nn.functional.layer_norm(x, x.shape[-1:], scale, bias, EPS)
            outs.append((out, *torch.autograd.grad(out, (x, scale, bias), cotangent)))
        return outs
    return call


def max_error(got, want) -> float:
    return max(float(np.abs(np.asarray(g, np.float32) - np.asarray(w, np.float32)).max())
               for g, w in zip(got, want, strict=True))


def measure(rows: int, width: int, norms: int) -> dict:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((rows, width)).astype(np.float32) * 2 + 0.5 for _ in range(norms)]
    cotangents = [rng.standard_normal((rows, width)).astype(np.float32) for _ in range(norms)]
    scale, bias = (1 + 0.1 * rng.standard_normal((2, width))).astype(np.float32)
    to_jax = lambda arrays, dtype: [jnp.asarray(a, dtype) for a in arrays]
    jax_inputs = lambda dtype: (to_jax(xs, dtype), jnp.asarray(scale), jnp.asarray(bias), to_jax(cotangents, dtype))
    expected = jax.tree.leaves(jax_program(layers.layer_norm, jnp.float32)(*jax_inputs(jnp.float32)))
    results = {}
    for name, norm in (("xla", layers.layer_norm), ("pallas", layer_norm_kernels.layer_norm)):
        inputs = jax_inputs(jnp.bfloat16)
        timed = kernel_benchmark(jax_program(norm, jnp.bfloat16).lower(*inputs).compile(), inputs)
        results[name] = {key: timed[key] / norms for key in ("ms", "ms_back_to_back", "kernel_ms")}
        results[name]["max_error"] = max_error(jax.tree.leaves(timed["out"]), expected)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    to_torch = lambda arrays, grad: [torch.tensor(a, dtype=torch.bfloat16, device=device, requires_grad=grad)
                                     for a in arrays]
    t_scale, t_bias = (torch.tensor(a, device=device, requires_grad=True) for a in (scale, bias))
    timed = torch_call_ms(torch_call(to_torch(xs, True), t_scale.bfloat16(), t_bias.bfloat16(),
                                     to_torch(cotangents, False)), device)
    got = [t.detach().float().cpu().numpy() for pair in timed["out"] for t in pair]
    results["torch"] = {"ms": timed["ms"] / norms, "ms_back_to_back": timed["ms_back_to_back"] / norms,
                        "max_error": max_error(got, expected)}
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--norms", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke test)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    shapes = {name: (64, width) for name, (_, width) in SHAPES.items()} if args.tiny else SHAPES
    results = {}
    for title, (rows, width) in shapes.items():
        results[title] = measure(rows, width, args.norms)
        print_kernel_results(f"LayerNorm forward + backward, {title} {rows} x {width} bf16, per LayerNorm",
                             results[title])
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
