"""Where the T5 training step's time goes: the JAX step of bench/t5.py timed with one piece swapped at a time.

    python bench/t5_variants.py [VARIANT ...]

Variants: baseline (the defaults: attn_implementation auto, cuDNN attention on the GPU); each other
attn_implementation (einsum, xla, cudnn); embedding lookups as one-hot matmuls (their gradient becomes a matmul
instead of a scatter-add).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataclasses
import time

import jax
import jax.numpy as jnp
import t5 as bench  # bench/t5.py: sets the memory fraction before jax allocates

from jaxport import layers
from t5_jax import T5Config

ORIGINAL_EMBED = layers.Embed.__call__


def one_hot_embed(self, ids):
    table = self.embedding[...].astype(self.dtype)
    return jnp.dot(jax.nn.one_hot(ids, table.shape[0], dtype=self.dtype), table)


VARIANTS = {  # name: (Embed.__call__, T5Config.attn_implementation)
    "baseline": (ORIGINAL_EMBED, "auto"),
    "attention_einsum": (ORIGINAL_EMBED, "einsum"),
    "attention_xla": (ORIGINAL_EMBED, "xla"),
    "attention_cudnn": (ORIGINAL_EMBED, "cudnn"),
    "one_hot_embedding": (one_hot_embed, "auto"),
}


def main():
    cfg = dict(bench.FULL, steps=10, warmup=3)
    model_config = T5Config.create(**cfg["model"])
    batch, _ = bench.make_batches(cfg, model_config.vocab_size)
    flops = bench.t5_train_flops(cfg["model"], cfg["train_batch"], cfg["train_inputs"], cfg["train_targets"])["total"]
    rows = []
    only = sys.argv[1:] or list(VARIANTS)
    for name in only:
        embed, attn_implementation = VARIANTS[name]
        layers.Embed.__call__ = embed
        try:
            start = time.perf_counter()
            config = dataclasses.replace(model_config, attn_implementation=attn_implementation)
            ms = bench.jax_train(cfg, config, None, batch)["ms"]
            print(f"  {name}: random init + compile + {cfg['warmup'] + cfg['steps']} steps took "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            rows.append(f"{name:30s} {ms:8.1f} ms  {flops / ms / 1e9:8.1f} TFLOP/s")
        except Exception as e:  # noqa: BLE001 - a variant the backend refuses is a result too
            rows.append(f"{name:30s} failed: {type(e).__name__}: {str(e)[:200]}")
        print(rows[-1], flush=True)
    print("\n".join(["", "variant                             step       model FLOP rate", *rows]))


if __name__ == "__main__":
    main()
