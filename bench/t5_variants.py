"""Where the T5 training step's time goes: the JAX step of bench/t5.py timed with one piece swapped at a time.

    python bench/t5_variants.py [VARIANT ...]

Variants: baseline; embedding lookups as one-hot matmuls (their gradient becomes a matmul instead of a
scatter-add); attention through jax.nn.dot_product_attention (cuDNN fused kernel, XLA fallback).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time

import jax
import jax.numpy as jnp
import t5 as bench  # bench/t5.py: sets the memory fraction before jax allocates

from jaxport import layers
from t5_jax import T5Config, modeling

ORIGINAL_EMBED, ORIGINAL_ATTEND = layers.Embed.__call__, modeling.attend


def one_hot_embed(self, ids):
    table = self.embedding[...].astype(self.dtype)
    return jnp.dot(jax.nn.one_hot(ids, table.shape[0], dtype=self.dtype), table)


def fused_attend(implementation):
    def attend(q, k, v, bias, mask, dropout_rate, rng):
        bias = None if bias is None else bias.astype(q.dtype)
        return jax.nn.dot_product_attention(q, k.astype(q.dtype), v, bias=bias, mask=mask, scale=1.0,
                                            implementation=implementation)
    return attend


VARIANTS = {
    "baseline": (ORIGINAL_EMBED, ORIGINAL_ATTEND),
    "one_hot_embedding": (one_hot_embed, ORIGINAL_ATTEND),
    "dot_product_attention_xla": (ORIGINAL_EMBED, fused_attend("xla")),
    "dot_product_attention_cudnn": (ORIGINAL_EMBED, fused_attend("cudnn")),
}


def main():
    cfg = dict(bench.FULL, steps=10, warmup=3)
    model_config = T5Config.create(**cfg["model"])
    batch, _ = bench.make_batches(cfg, model_config.vocab_size)
    flops = bench.t5_train_flops(cfg["model"], cfg["train_batch"], cfg["train_inputs"], cfg["train_targets"])["total"]
    rows = []
    only = sys.argv[1:] or list(VARIANTS)
    for name in only:
        embed, attend = VARIANTS[name]
        layers.Embed.__call__, modeling.attend = embed, attend
        try:
            start = time.perf_counter()
            ms = bench.jax_train(cfg, model_config, None, batch)["ms"]
            print(f"  {name}: random init + compile + {cfg['warmup'] + cfg['steps']} steps took "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            rows.append(f"{name:30s} {ms:8.1f} ms  {flops / ms / 1e9:8.1f} TFLOP/s")
        except Exception as e:  # noqa: BLE001 - a variant the backend refuses is a result too
            rows.append(f"{name:30s} failed: {type(e).__name__}: {str(e)[:200]}")
        print(rows[-1], flush=True)
    print("\n".join(["", "variant                             step       model FLOP rate", *rows]))


if __name__ == "__main__":
    main()
