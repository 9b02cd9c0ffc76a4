"""Tiny T5 folders written by the installed transformers, with the logits its PyTorch model computes: what
tests/test_t5_versions.py loads. Needs only torch, transformers and numpy, so it runs under any version:

    python tests/t5_reference/write_folders.py OUT_DIR

OUT_DIR/VARIANT/ gets save_pretrained's config.json and model.safetensors, and reference.npz: input_ids,
attention_mask, decoder_input_ids and the model's float32 logits on them. Variants:
  v1_0           relu, tying left at its default: every version ties the head and scales decoder outputs.
  v1_1           gated-gelu, tie_word_embeddings=False: transformers 4 gives the head weights of its own and does
                 not scale; transformers 5 ties the head all the same, and does not scale.
transformers 5 only (it unties a head only when a checkpoint holds lm_head.weight apart from shared.weight, as a
transformers 4 v1.1 checkpoint does; the model is then saved with the head apart):
  v1_1_own_head  v1_1 with a head of its own.
  v1_0_own_head  v1_0 with a head of its own (scaled, untied).

tests/data/t5_transformers_5.17 was written by transformers 5.17.0 with torch 2.13.0 (CPU):
    python -m venv /tmp/v517 && /tmp/v517/bin/pip install "transformers==5.17.*" "torch==2.13.0" numpy
    /tmp/v517/bin/python tests/t5_reference/write_folders.py tests/data/t5_transformers_5.17
"""
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

SHAPE = dict(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_decoder_layers=2, num_heads=2,
             relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
             decoder_start_token_id=0)
VARIANTS = {  # name -> (config fields, give the head weights of its own)
    "v1_0": (dict(feed_forward_proj="relu"), False),
    "v1_1": (dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False), False),
    "v1_1_own_head": (dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False), True),
    "v1_0_own_head": (dict(feed_forward_proj="relu"), True),
}
TRANSFORMERS_4_VARIANTS = ("v1_0", "v1_1")


def variants() -> tuple[str, ...]:
    """The variants the installed transformers writes."""
    return TRANSFORMERS_4_VARIANTS if transformers.__version__.startswith("4.") else tuple(VARIANTS)


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(2, SHAPE["vocab_size"], (2, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=rng.integers(2, SHAPE["vocab_size"], (2, 6)))


def write_variant(folder: Path, name: str, seed: int = 0) -> None:
    fields, own_head = VARIANTS[name]
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**SHAPE, **fields)).eval()
    if own_head:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(folder)
    batch = inputs()
    with torch.no_grad():
        logits = model(**{key: torch.as_tensor(value) for key, value in batch.items()}).logits
    np.savez(folder / "reference.npz", **batch, logits=logits.float().numpy())


def write_folders(out: Path) -> None:
    for name in variants():
        write_variant(Path(out) / name, name)


if __name__ == "__main__":
    write_folders(Path(sys.argv[1]))
