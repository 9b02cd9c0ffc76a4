"""LSG attention alone, at the LSG-BART-base shape: each implementation's error and time, forward and backward.

    python bench/lsg_attention.py [--attn-impl cudnn,pallas] [--length 16384] [--out attention.json]

Batch 1, 12 heads of 64, 64 global tokens, block 256, no sparse keys, the last 777 tokens padding. Each
implementation runs in bf16; its output and gradients (q, k, v for a random output cotangent) are compared with the
float32 "xla" formulation (max and mean absolute error over valid rows, next to the reference's mean magnitude), and
timed forward and forward + backward (median synchronised call and mean of calls dispatched back to back). On a GPU
this is the check that Triton compiles the Pallas kernels into what Pallas' interpreter runs in the tests.
"""
import argparse
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lsg import LSG_BART_BASE, time_jax  # bench/ on sys.path
from lsg_jax.attention import lsg_attention
from lsg_jax.configuration import LSGBartConfig
from jaxport.layers import NEG_INF

HEADS, HEAD_DIM, PADDING = 12, 64, 777


def forward_and_grads(config, dtype):
    def run(q, k, v, bias, cotangent):
        out, vjp = jax.vjp(lambda *qkv: lsg_attention(*qkv, bias, config, dtype), *(x.astype(dtype) for x in (q, k, v)))
        return out, *vjp(cotangent.astype(dtype))
    return jax.jit(run)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attn-impl", default="cudnn,pallas")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--out")
    args = parser.parse_args()
    config = lambda name: LSGBartConfig(**{**LSG_BART_BASE, "attn_implementation": name})
    G = LSG_BART_BASE["num_global_tokens"]
    L = G + args.length
    rng = np.random.default_rng(0)
    q, k, v, cotangent = (jnp.asarray(rng.standard_normal((1, HEADS, L, HEAD_DIM)), jnp.bfloat16) for _ in range(4))
    bias = jnp.zeros((1, L), jnp.float32).at[:, L - PADDING:].set(NEG_INF)
    inputs = (q, k, v, bias, cotangent)
    rows = np.asarray(bias[0] == 0)
    reference = [np.asarray(x, np.float32)[:, :, rows] for x in forward_and_grads(config("xla"), jnp.float32)(*inputs)]
    print(f"LSG attention, {args.length} tokens + {G} global, {HEADS} heads of {HEAD_DIM}, block "
          f"{LSG_BART_BASE['block_size']}, {PADDING} padding; {jax.devices()[0].device_kind}")
    results = {}
    for name in args.attn_impl.split(","):
        run = forward_and_grads(config(name), jnp.bfloat16)
        errors = {}
        for part, got, want in zip(("out", "dq", "dk", "dv"), run(*inputs), reference):
            diff = np.abs(np.asarray(got, np.float32)[:, :, rows] - want)
            errors[part] = {"max": float(diff.max()), "mean": float(diff.mean()), "scale": float(np.abs(want).mean())}
        forward = jax.jit(lambda q, k, v, bias: lsg_attention(q, k, v, bias, config(name), jnp.bfloat16))
        times = {"forward": time_jax(lambda: forward(q, k, v, bias), 3, 20), "forward_backward": time_jax(
            lambda: run(*inputs), 3, 20)}
        results[name] = {"errors": errors, **{what: {"ms": 1e3 * statistics.median(t["times"]),
                                                     "ms_back_to_back": 1e3 * t["back_to_back"]}
                                              for what, t in times.items()}}
        print(f"{name:>7}: forward {results[name]['forward']['ms']:.3f} ms (b2b "
              f"{results[name]['forward']['ms_back_to_back']:.3f}), forward + backward "
              f"{results[name]['forward_backward']['ms']:.3f} ms (b2b "
              f"{results[name]['forward_backward']['ms_back_to_back']:.3f}); |error| max / mean vs float32: "
              + ", ".join(f"{part} {e['max']:.4f} / {e['mean']:.5f} (scale {e['scale']:.4f})"
                          for part, e in errors.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
