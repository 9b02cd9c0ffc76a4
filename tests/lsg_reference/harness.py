"""Helpers of the LSG parity tests: run the original PyTorch LSG-BART in its own environment (.venv-lsg,
made by make_env.sh) through reference.py, in one subprocess per batch of jobs. Without that environment the tests
skip, except under CI, where they fail."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import in_ci, skip_unless_ci

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PYTHON = Path(os.environ.get("LSG_REFERENCE_VENV", ROOT / ".venv-lsg")) / "bin" / "python"
SCRIPT = Path(__file__).with_name("reference.py")

MISSING = (f"reference environment {REFERENCE_PYTHON.parent.parent} is missing: run `bash tests/lsg_reference/"
           "make_env.sh` (lsg-converter 0.1.9 needs transformers 4.44.2)")
# Under CI the marked tests run, and run_reference fails them.
requires_reference = pytest.mark.skipif(not REFERENCE_PYTHON.exists() and not in_ci(), reason=MISSING)

VOCAB = 64


def tiny_config(**overrides) -> dict:
    """A tiny BART config (transformers' names); LSG fields are added by the caller."""
    config = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=256,
                  dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
                  eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, scale_embedding=True)
    config.update(overrides)
    return config


def run_reference(jobs: list[dict], workdir: Path, timeout: int = 900) -> None:
    """Run reference.py on `jobs` under the reference environment; raise with its output on failure. Without
    that environment: skip, or fail under CI."""
    if not REFERENCE_PYTHON.exists():
        skip_unless_ci(MISSING)
    path = Path(workdir) / f"jobs_{os.getpid()}_{id(jobs)}.json"
    path.write_text(json.dumps(jobs, default=str))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    result = subprocess.run([str(REFERENCE_PYTHON), str(SCRIPT), str(path)], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=workdir)
    if result.returncode:
        raise RuntimeError(f"reference run failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-6000:]}")
