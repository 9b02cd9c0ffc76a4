"""T5 folders written by the transformers versions that differ in how T5 ties and scales its head load with the
logits of the PyTorch model that wrote them (float32, relative error < 1e-4), and export back into the installed
transformers with the same logits.

- 4.44.2: tie_word_embeddings decides both tying and scaling. Run in the test-only environment .venv-lsg (see
  tests/lsg_reference/make_env.sh); skipped when it is missing, a failure when the environment variable CI is set.
- 5.17: writes tie_word_embeddings=True for every T5 and scale_decoder_outputs; a head is untied only when the
  checkpoint holds it apart. A committed fixture, tests/data/t5_transformers_5.17 (tests/t5_reference/write_folders.py).
- the installed transformers (5.24 or newer), in process.
"""
import os
import subprocess
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5_jax import T5ForConditionalGeneration  # noqa: E402
from tests.t5_reference import write_folders  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMERS_4_PYTHON = Path(os.environ.get("LSG_REFERENCE_VENV", ROOT / ".venv-lsg")) / "bin" / "python"
FIXTURE_5_17 = ROOT / "tests" / "data" / "t5_transformers_5.17"

# variant -> (tied, scaled) as the writer's PyTorch model has them; the own-head variants exist from transformers 5.
TRANSFORMERS_4 = {"v1_0": (True, True), "v1_1": (False, False)}
TRANSFORMERS_5 = {"v1_0": (True, True), "v1_1": (True, False), "v1_1_own_head": (False, False),
                  "v1_0_own_head": (False, True)}


def rel_err(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def flax_logits(model, reference) -> np.ndarray:
    batch = {key: jnp.asarray(reference[key]) for key in ("input_ids", "attention_mask", "decoder_input_ids")}
    return np.asarray(model(**batch).logits)


def torch_logits(model, reference) -> np.ndarray:
    batch = {key: torch.as_tensor(reference[key]) for key in ("input_ids", "attention_mask", "decoder_input_ids")}
    with torch.no_grad():
        return model.eval()(**batch).logits.numpy()


@pytest.fixture(scope="module")
def transformers_4_folders(tmp_path_factory) -> Path:
    if not TRANSFORMERS_4_PYTHON.exists():
        message = (f"{TRANSFORMERS_4_PYTHON} is missing: run `bash tests/lsg_reference/make_env.sh` "
                   "(transformers 4.44.2)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("transformers_4")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    result = subprocess.run([str(TRANSFORMERS_4_PYTHON), str(Path(write_folders.__file__)), str(out)],
                            capture_output=True, text=True, timeout=600, env={**env, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-4000:]
    version = subprocess.run([str(TRANSFORMERS_4_PYTHON), "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "4.44.2"
    return out


@pytest.fixture(scope="module")
def installed_transformers_folders(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("installed_transformers")
    write_folders.write_folders(out)
    return out


def check_folder(folder: Path, tied: bool, scaled: bool, tmp_path: Path) -> None:
    reference = np.load(folder / "reference.npz")
    model = T5ForConditionalGeneration.from_pretrained(folder)
    assert (model.config.tie_word_embeddings, model.config.scale_decoder_outputs) == (tied, scaled)
    assert rel_err(flax_logits(model, reference), reference["logits"]) < 1e-4
    # Export: the installed transformers reads it back to the same model.
    model.save_pretrained(tmp_path / "export", pytorch=True)
    exported = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "export")
    assert rel_err(torch_logits(exported, reference), reference["logits"]) < 1e-4


@pytest.mark.parametrize("variant", sorted(TRANSFORMERS_4))
def test_folders_of_transformers_4_44(transformers_4_folders, variant, tmp_path):
    check_folder(transformers_4_folders / variant, *TRANSFORMERS_4[variant], tmp_path)


@pytest.mark.parametrize("variant", sorted(TRANSFORMERS_5))
def test_folders_of_transformers_5_17(variant, tmp_path):
    assert '"transformers_version": "5.17.0"' in (FIXTURE_5_17 / variant / "config.json").read_text()
    check_folder(FIXTURE_5_17 / variant, *TRANSFORMERS_5[variant], tmp_path)


@pytest.mark.parametrize("variant", sorted(TRANSFORMERS_5))
def test_folders_of_the_installed_transformers(installed_transformers_folders, variant, tmp_path):
    check_folder(installed_transformers_folders / variant, *TRANSFORMERS_5[variant], tmp_path)

