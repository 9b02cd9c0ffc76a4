"""GPT-2's causal attention alone, at the Backpack-GPT2 training shape: each implementation's error and time,
forward and backward, with and without attention dropout.

    python bench/causal_attention.py [--batch 32] [--length 512] [--tiles "64,4,2;128,8,2"] [--out attention.json]

12 heads of 64, bf16. With attention dropout 0.1 (the released config): the einsums (what `auto` runs in training)
and jaxport.causal_attention's Pallas kernels, both against float32 einsums with the same dropout key (the two
paths draw the same mask). Without dropout: cuDNN (what `auto` runs there), the Pallas kernels and the einsums,
against float32 einsums. Times forward and forward + backward (median synchronised call and mean of calls
dispatched back to back). On a GPU this is also the check that Triton compiles the kernels into what Pallas'
interpreter runs in the tests. --tiles: instead, the Pallas kernels with dropout for each TILE,NUM_WARPS,NUM_STAGES.
"""
import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from measure import measure_attention  # bench/ on sys.path

from backpack_jax.modeling import causal_weights
from jaxport import attention, causal_attention
from jaxport.layers import causal_mask

HEADS, HEAD_DIM, RATE = 12, 64, 0.1
SCALE = HEAD_DIM ** -0.5


def make(rate: float):
    """make(implementation, dtype) -> attention(q, k, v) as GPT2Attention runs it, dropping out at `rate`."""
    rng = jax.random.key(0) if rate else None

    def einsum(q, k, v):
        length = q.shape[1]
        probs = causal_weights(q, k, SCALE, causal_mask(jnp.arange(length), jnp.arange(length)), rate, rng)
        return jnp.einsum("bhts,bshd->bthd", probs.astype(v.dtype), v)

    def implementation(name, dtype):
        if name == "einsum":
            return einsum
        if name == "pallas":
            return lambda q, k, v: causal_attention.causal_attention(q, k, v, scale=SCALE, dropout_rate=rate,
                                                                     rng=rng)
        return lambda q, k, v: attention.fused_attention(q, k, v, None, None, name, scale=SCALE, is_causal=True)
    return implementation


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--tiles", help="instead: time the Pallas kernels with dropout for each of these settings, "
                                         "TILE,NUM_WARPS,NUM_STAGES;... (jaxport.causal_attention)")
    parser.add_argument("--out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    inputs = [jnp.asarray(rng.standard_normal((args.batch, args.length, HEADS, HEAD_DIM)), jnp.bfloat16)
              for _ in range(4)]
    shape = f"{args.batch} x {args.length}, {HEADS} heads of {HEAD_DIM}; {jax.devices()[0].device_kind}"
    if args.tiles:
        results = {}
        for setting in args.tiles.split(";"):
            constants = dict(zip(("TILE", "NUM_WARPS", "NUM_STAGES"), map(int, setting.split(",")), strict=True))
            for name, value in constants.items():
                setattr(causal_attention, name, value)
            results[setting] = measure_attention(f"causal attention, dropout {RATE}, {shape}, pallas with "
                                                 f"{constants}", make(RATE), inputs, ["pallas"], "einsum")["pallas"]
    else:
        fused = ["cudnn"] if attention.default_platform() == "gpu" else ["xla"]
        results = {"dropout": measure_attention(f"causal attention, dropout {RATE}, {shape}", make(RATE), inputs,
                                                ["einsum", "pallas"], "einsum"),
                   "no_dropout": measure_attention(f"causal attention, no dropout, {shape}", make(0.0), inputs,
                                                   [*fused, "pallas", "einsum"], "einsum")}
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
