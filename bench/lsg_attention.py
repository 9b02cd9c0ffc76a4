"""LSG attention and the decoder's cross-attention alone, at the LSG-BART-base shape: each implementation's error
and time, forward and backward.

    python bench/lsg_attention.py [--attn-impl auto,cudnn] [--length 16384] [--targets 320] [--out attention.json]

Batch 1, 12 heads of 64, the last 777 of the `length` tokens padding. LSG attention: 64 global tokens, block 256,
no sparse keys. Cross-attention: `targets` decoder queries over the 64 + `length` encoder states. Each
implementation (LSGBartConfig.attn_implementation, resolved by lsg_jax.dispatch.resolve) runs in bf16; its output
and gradients (q, k, v for a random output cotangent) are compared with the float32 "xla" formulation (max and
mean absolute error, next to the reference's mean magnitude), and timed forward and forward + backward (median
synchronised call and mean of calls dispatched back to back). On a GPU this is the
check that Triton compiles the Pallas kernels into what Pallas' interpreter runs in the tests.
"""
import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from measure import LSG_BART_BASE, measure_attention  # bench/ on sys.path

from jaxport.layers import NEG_INF
from lsg_jax import pallas_attention
from lsg_jax.configuration import LSGBartConfig
from lsg_jax.dispatch import lsg_attention, padded_attention, resolve

HEADS, HEAD_DIM, PADDING = 12, 64, 777


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attn-impl", default="auto,cudnn", help="attn_implementation values (default: auto, what a "
                        "model gets, and cudnn)")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--targets", type=int, default=320)
    parser.add_argument("--tiles", help="instead: time pallas LSG attention for each of these kernel settings, "
                                         "QUERY_TILE,KEY_TILE,NUM_WARPS,NUM_STAGES;... (lsg_jax.pallas_attention)")
    parser.add_argument("--out")
    args = parser.parse_args()
    names = args.attn_impl.split(",")
    config = LSGBartConfig(**LSG_BART_BASE)
    implementations = lambda name, dtype: resolve(dataclasses.replace(config, attn_implementation=name), dtype,
                                                  training=False)
    lsg = lambda name, dtype: lambda q, k, v: lsg_attention(q, k, v, bias, config, dtype,
                                                            implementations(name, dtype).lsg)
    G = LSG_BART_BASE["num_global_tokens"]
    L = G + args.length
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    bias = jnp.zeros((1, L), jnp.float32).at[:, L - PADDING:].set(NEG_INF)
    device = jax.devices()[0].device_kind
    lsg_inputs = [normal(1, HEADS, L, HEAD_DIM) for _ in range(4)]
    if args.tiles:
        results = {}
        for setting in args.tiles.split(";"):
            names = ("QUERY_TILE", "KEY_TILE", "NUM_WARPS", "NUM_STAGES")
            constants = dict(zip(names, map(int, setting.split(",")), strict=True))
            for name, value in constants.items():
                setattr(pallas_attention, name, value)
            results[setting] = measure_attention(
                f"LSG attention, {args.length} tokens, pallas with {constants}", lsg, lsg_inputs, ["pallas"])["pallas"]
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        return
    results = {"lsg": measure_attention(
        f"LSG attention, {args.length} tokens + {G} global, {HEADS} heads of {HEAD_DIM}, block "
        f"{LSG_BART_BASE['block_size']}, {PADDING} padding; {device}", lsg, lsg_inputs, names)}
    results["cross"] = measure_attention(
        f"cross-attention, {args.targets} queries over {L} keys ({PADDING} padding), {HEADS} heads of {HEAD_DIM}; "
        f"{device}",
        lambda name, dtype: lambda q, k, v: padded_attention(q, k, v, bias == 0, dtype,
                                                             implementations(name, dtype).cross),
        [normal(1, args.targets, HEADS, HEAD_DIM), normal(1, L, HEADS, HEAD_DIM), normal(1, L, HEADS, HEAD_DIM),
         normal(1, args.targets, HEADS, HEAD_DIM)], names)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
