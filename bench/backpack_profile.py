"""Where the Backpack-GPT2 (or GPT-2 small) training step's GPU time goes, as bench/backpack.py runs it:

    python bench/backpack_profile.py [--model backpack|gpt2] [--batch 32] [--dropout 0.1]
                                     [--attn-implementation auto] [--calls 5] [--top 40] [--out profile.json]

Random weights (JAX's initialisation: the time does not depend on the values), the bench's shape, batch x 512
tokens, the project's jitted, state-donating training step (bf16 compute over float32 weights, AdamW), chained
over its own state. profiling.profile's figures: compiled memory, synchronised and back-to-back times, GPU kernel
time per call by source line and by kernel, where a synchronised call waits. Needs a GPU.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project without installation

import argparse
import json

import jax.numpy as jnp
from backpack import BACKPACK, GPT2_SMALL, LEARNING_RATE, WEIGHT_DECAY, FixedBatchLMTask, make_batch
from measure import chained_steps
from profiling import profile
from project_train import train_setup

from backpack_jax import BackpackGPT2Config, BackpackGPT2LMHeadModel, GPT2Config, GPT2LMHeadModel
from backpack_jax.configuration import ATTN_IMPLEMENTATIONS
from backpack_jax.modeling import attention_implementation
from jaxport import trainer

MODELS = {"backpack": (BackpackGPT2LMHeadModel, BackpackGPT2Config, BACKPACK),
          "gpt2": (GPT2LMHeadModel, GPT2Config, GPT2_SMALL)}
LENGTH = 512


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="backpack")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1, help="resid/embd/attn dropout (default 0.1)")
    parser.add_argument("--attn-implementation", default="auto", choices=ATTN_IMPLEMENTATIONS)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", help="write the profile as JSON here")
    args = parser.parse_args(argv)
    model_class, config_class, shape = MODELS[args.model]
    p = args.dropout
    config = config_class.create(**shape, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p,
                                 attn_implementation=args.attn_implementation)
    state, step, batch_sharding = train_setup(FixedBatchLMTask(model_class, config), None, LEARNING_RATE,
                                              WEIGHT_DECAY)
    np_batch = make_batch({"train_batch": args.batch, "train_length": LENGTH, "seed": 0}, shape["vocab_size"])
    batch = trainer.global_batch(np_batch, batch_sharding)
    compiled = step.lower(state, batch).compile()
    implementation = attention_implementation(config, jnp.bfloat16, LENGTH, training=True)
    title = f"train {args.model} {args.batch}x{LENGTH} dropout {p} attention {implementation}"
    result = profile(title, compiled, chained_steps(compiled, state, batch), args.calls, args.top)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
