"""Where the LSG-BART-base encoder's and training step's GPU time goes:

    python bench/lsg_profile.py [--what encode,grad,train] [--attn-impl auto] [--length N] [--set KEY=VALUE ...]

Random weights (the bench/lsg.py shape), batch 1. For each program, profiling.profile's figures: its compiled
memory, synchronised and back-to-back times, GPU kernel time per call by source line and by kernel, where a
synchronised call waits. encode: the encoder forward (bf16 weights, the encoder's as the argument:
lsg.encoder_program); grad: its forward + backward (gradient of the summed states for those weights); train: one
step of the project's training path (bench/lsg.py's train_setup: bf16 compute over float32 weights, AdamW, 320
target tokens).
--set overrides LSGBartConfig fields for A/B runs (e.g. --set dropout=0 --set remat=true). Needs a GPU.
"""
import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from lsg import encoder_program, train_batch, train_setup  # bench/ on sys.path
from measure import LSG_BART_BASE, chained_steps
from profiling import profile

from jaxport import runtime
from lsg_jax.configuration import LSGBartConfig
from lsg_jax.modeling import LSGBartForConditionalGeneration

TARGET_TOKENS = 320


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", default="encode,grad,train")
    parser.add_argument("--attn-impl", default=LSGBartConfig.attn_implementation,
                        help="LSGBartConfig.attn_implementation (default: its default)")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an LSGBartConfig field for this run (JSON value), e.g. dropout=0")
    parser.add_argument("--out", help="write the profiles as JSON here")
    parser.add_argument("--hlo", help="write each program's optimised HLO here, as PROGRAM.hlo.txt.gz")
    args = parser.parse_args()
    runtime.configure()  # before the random weights are drawn
    overrides = dict(item.split("=", 1) for item in args.set)
    fields = {**LSG_BART_BASE, "attn_implementation": args.attn_impl,
              **{k: parse_value(v) for k, v in overrides.items()}}
    config = LSGBartConfig.from_dict(fields)
    label = f"{args.length} {args.attn_impl}" + "".join(f" {k}={v}" for k, v in overrides.items())
    ids = np.random.default_rng(1).integers(3, config.vocab_size, (1, args.length))
    results = []
    what = args.what.split(",")
    if "encode" in what or "grad" in what:
        model = LSGBartForConditionalGeneration(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                rngs=nnx.Rngs(0))
        encode, weights = encoder_program(model)
        del model
        x, mask = jnp.asarray(ids, jnp.int32), jnp.ones(ids.shape, jnp.int32)
        programs = {
            "encode": lambda weights: encode(weights, x, mask),
            "grad": jax.grad(lambda weights: encode(weights, x, mask).astype(jnp.float32).sum()),
        }
        for name in ("encode", "grad"):
            if name in what:
                compiled = jax.jit(programs[name]).lower(weights).compile()
                results.append(profile(f"{name} {label}", compiled, lambda: compiled(weights), args.calls, args.top,
                                       args.hlo))
        del weights
    if "train" in what:
        state, step, batch_sharding = train_setup(config)
        labels = np.random.default_rng(2).integers(3, config.vocab_size, (1, TARGET_TOKENS))
        batch = train_batch(ids, labels, config.decoder_start_token_id, batch_sharding)
        compiled = step.lower(state, batch).compile()
        train_call = chained_steps(compiled, state, batch)
        results.append(profile(f"train {label} + {TARGET_TOKENS}", compiled, train_call, args.calls, args.top,
                               args.hlo))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
