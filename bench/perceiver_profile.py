"""Where the Perceiver IO forward's (or training step's) GPU time goes, as bench/perceiver.py runs it:

    python bench/perceiver_profile.py [--part forward|train] [--batch 16] [--calls 5] [--top 40] [--out profile.json]

Random weights (the time does not depend on the values), configs/perceiver_mlm.py:paper's shape, batch x 2048 bytes
of bench/perceiver.py's masked windows; the forward is the model's jitted() bf16 call over float32 weights, the training
step the project's jitted, state-donating step (AdamW), chained over its own state. profiling.profile's figures:
compiled memory, synchronised and back-to-back times, GPU kernel time per call by source line and by kernel. Needs a
GPU.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project without installation

import argparse
import json

import jax.numpy as jnp
from flax import nnx
from measure import chained_steps
from perceiver import FULL, LEARNING_RATE, ROOT, WEIGHT_DECAY, BenchTask, make_batch
from profiling import profile
from project_train import train_setup

from jaxport import config as config_lib
from jaxport import trainer
from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM


def forward_call(config: PerceiverConfig, batch: dict):
    forward = PerceiverForMaskedLM(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)).jitted()
    inputs, mask = jnp.asarray(batch["inputs"]), jnp.asarray(batch["attention_mask"])
    compiled = forward.func.lower(*forward.args, inputs=inputs, attention_mask=mask).compile()
    return compiled, lambda: compiled(*forward.args, inputs=inputs, attention_mask=mask).logits


def train_call(config: PerceiverConfig, batch: dict):
    state, step, batch_sharding = train_setup(BenchTask(config), None, LEARNING_RATE, WEIGHT_DECAY)
    inputs = trainer.global_batch(batch, batch_sharding)
    compiled = step.lower(state, inputs).compile()
    return compiled, chained_steps(compiled, state, inputs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["forward", "train"], default="forward")
    parser.add_argument("--batch", type=int, default=FULL["batch"])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", help="write the profile as JSON here")
    args = parser.parse_args(argv)
    config = PerceiverConfig.create(**config_lib.load_config(str(ROOT / FULL["config"])).model.to_dict())
    batch = make_batch(args.batch, FULL["length"])
    compiled, call = {"forward": forward_call, "train": train_call}[args.part](config, batch)
    result = profile(f"{args.part} perceiver {args.batch}x{FULL['length']}", compiled, call, args.calls, args.top)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
