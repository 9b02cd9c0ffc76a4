"""fc1 + bias + exact GELU at LSG-BART-base's shape: lsg_jax.hopper_gemm's kernel against XLA's cuBLAS GEMM with
its bias followed by the GELU pass (what runs without the kernel), error against float32 accumulation and time.

    python bench/hopper_gemm.py [--rows 16448] [--out gemm.json]

Both take bf16 x [rows, 768], kernel [768, 3072] and bias; the figure is the mean of 50 calls dispatched back to
back (measure.time_jax: median of three blocks). Needs an H100 (sm90).
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from measure import time_jax  # bench/ on sys.path

from lsg_jax import hopper_gemm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16448)  # 16384 tokens + 64 global tokens
    parser.add_argument("--out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.rows, 768)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((768, 3072)) * 0.04, jnp.bfloat16)
    bias = jnp.asarray(rng.standard_normal(3072) * 0.1, jnp.bfloat16)
    assert hopper_gemm.kernel_applies(x, kernel), "needs an sm90 GPU"
    exact = jnp.dot(x, kernel, preferred_element_type=jnp.float32) + bias.astype(jnp.float32)
    want = np.asarray(0.5 * exact * (1 + jax.lax.erf(exact * 0.7071067811865476)), np.float32)
    programs = {"kernel": jax.jit(hopper_gemm.gemm_bias_gelu), "xla": jax.jit(hopper_gemm._xla_dense_gelu)}
    results = {"device": jax.devices()[0].device_kind, "rows": args.rows}
    for name, fn in programs.items():
        error = np.abs(np.asarray(fn(x, kernel, bias), np.float32) - want)
        ms = 1e3 * time_jax(lambda: fn(x, kernel, bias), 3, 50)["back_to_back"]
        results[name] = {"ms": ms, "max_error": float(error.max()),
                         "mean_error": float(error.mean())}
        print(f"{name:>6}: {results[name]['ms']:.4f} ms back to back; |error| vs float32 accumulation max "
              f"{results[name]['max_error']:.4f}, mean {results[name]['mean_error']:.6f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
