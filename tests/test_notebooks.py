"""The Colab notebooks in notebooks/ run end to end in tiny mode: each is executed with nbclient (kernel python3 of
this interpreter, working directory the repository root, hub access off) after a cell that sets its parameters
(TINY = True, WORKDIR in tmp_path) is inserted after the cell tagged "parameters", as papermill would. A cell appended
at the end prints the notebook's `summary` dict as JSON, and the tests check its values and the files it names."""
import json
import math
import os
from pathlib import Path

import pytest

from jaxport.records import read_tsv

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MARKER = "NOTEBOOK_SUMMARY "
CELL_TIMEOUT = 600


def kernel_env() -> dict:
    """The test process's environment with the Hugging Face hub made unreachable, and one CPU device rather than
    conftest's eight (compiling for eight costs time these tests do not have; tests/test_sharding.py covers them)."""
    env = dict(os.environ)
    flags = [flag for flag in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in flag]
    env["XLA_FLAGS"] = " ".join(flags)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="ignore", JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"))
    return env


def run_notebook(name: str, parameters: dict, out_dir: Path) -> tuple[dict, nbformat.NotebookNode]:
    """Execute notebooks/NAME with `parameters` injected; returns (its `summary`, the executed notebook)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters', found {len(tagged)}"
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    report = nbformat.v4.new_code_cell(f"import json\nprint({MARKER!r} + json.dumps(summary, default=str))")
    for cell in (injected, report):
        cell.pop("id", None)  # the notebooks are nbformat 4.4, whose cells have no ids
    notebook.cells.insert(tagged[0] + 1, injected)
    notebook.cells.append(report)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(ROOT)}})
    try:
        client.execute(env=kernel_env())
    finally:
        nbformat.write(notebook, out_dir / f"executed_{name}")  # kept in tmp_path for a look after a failure
    printed = "".join(output.get("text", "") for output in notebook.cells[-1].get("outputs", [])
                      if output.get("name") == "stdout")
    lines = [line for line in printed.splitlines() if line.startswith(MARKER)]
    assert lines, f"{name}: the summary cell printed nothing:\n{printed}"
    return json.loads(lines[-1][len(MARKER):]), notebook


def cell_text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


def assert_install_cell_did_nothing(notebook):
    install = next(cell for cell in notebook.cells if cell.cell_type == "code" and "REPO_URL" in cell.source)
    assert "nothing to install" in cell_text(install)


@pytest.mark.parametrize("name", ["sip.ipynb", "lsg.ipynb", "flipped.ipynb", "perceiver.ipynb", "backpack.ipynb"])
def test_committed_notebook_has_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "clear the outputs before committing"
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and "TINY = False" in parameters[0].source
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


def test_sip_notebook_fine_tunes_and_scores_a_tiny_model(tmp_path):
    summary, notebook = run_notebook("sip.ipynb", {"TINY": True, "WORKDIR": str(tmp_path / "sip")}, tmp_path)
    assert_install_cell_did_nothing(notebook)
    assert 0.0 <= summary["exact_match"] <= 1.0
    assert summary["edit_distance"] >= 0.0 and math.isfinite(summary["edit_distance"])
    assert summary["per"] >= 0.0
    assert summary["num_test_examples"] > 0
    assert math.isfinite(summary["final_loss"]) and 0.0 <= summary["eval_accuracy"] <= 1.0
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    assert records[-1]["step"] == summary["num_steps"] and "eval_accuracy" in records[-1]
    rows = read_tsv(summary["predictions_file"])  # a random model's predictions may hold any character
    assert rows[0] == ["input", "output", "prediction"] and len(rows) == summary["num_test_examples"] + 1
    scores = json.loads((Path(summary["predictions_file"]).parent / "test_metrics.json").read_text())
    assert scores["accuracy"] == pytest.approx(summary["exact_match"])
    assert (Path(summary["export_dir"]) / "config.json").is_file()
    assert set(summary["new_predictions"]) == {"pear", "avocado", "lime"}
    assert all(isinstance(text, str) for text in summary["new_predictions"].values())


@pytest.mark.slow  # every notebook in CI; SIP's by default
def test_lsg_notebook_converts_summarizes_and_fine_tunes_a_tiny_model(tmp_path):
    summary, notebook = run_notebook("lsg.ipynb", {"TINY": True, "WORKDIR": str(tmp_path / "lsg")}, tmp_path)
    assert_install_cell_did_nothing(notebook)
    converted = json.loads((Path(summary["model_dir"]) / "config.json").read_text())
    assert converted["architectures"] == ["LSGBartForConditionalGeneration"]
    assert converted["max_position_embeddings"] == summary["max_length"] and converted["num_global_tokens"] >= 1
    for key in ("summaries", "summaries_after_finetuning"):
        assert len(summary[key]) == summary["num_articles"] > 0
        assert all(isinstance(text, str) and text.strip() for text in summary[key]), summary[key]
    assert summary["input_length"] > converted["block_size"]  # long enough for local, sparse and global attention
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    assert records[-1]["step"] == summary["num_steps"]
    assert all(math.isfinite(record["loss"]) for record in records if "loss" in record)
    assert math.isfinite(summary["eval_loss"])
    assert summary["eval_rouge1"] is None or 0.0 <= summary["eval_rouge1"] <= 100.0
    assert (Path(summary["export_dir"]) / "config.json").is_file()


@pytest.mark.slow  # every notebook in CI; SIP's by default
def test_perceiver_notebook_fills_masks_and_fine_tunes_a_tiny_model(tmp_path):
    summary, notebook = run_notebook("perceiver.ipynb", {"TINY": True, "WORKDIR": str(tmp_path / "perceiver")},
                                     tmp_path)
    assert_install_cell_did_nothing(notebook)
    assert summary["masked_text"].endswith("[MASK]" * 9) and summary["span_length"] == 9
    assert isinstance(summary["prediction"], str) and summary["prediction"]  # a random model's bytes
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    assert records[-1]["step"] == summary["num_steps"] and "eval_accuracy" in records[-1]
    assert math.isfinite(summary["final_loss"]) and 0.0 <= summary["eval_accuracy"] <= 1.0
    exported = json.loads((Path(summary["export_dir"]) / "config.json").read_text())
    assert exported["id2label"] == {"0": "negative", "1": "positive"}
    assert set(summary["new_predictions"].values()) <= {"negative", "positive"}
    assert len(summary["new_predictions"]) == 2


@pytest.mark.slow  # every notebook in CI; SIP's by default
def test_flipped_notebook_scores_options_and_fine_tunes_a_tiny_model(tmp_path):
    summary, notebook = run_notebook("flipped.ipynb", {"TINY": True, "WORKDIR": str(tmp_path / "flipped"),
                                                       "FINETUNE_STEPS": 20}, tmp_path)
    assert_install_cell_did_nothing(notebook)
    assert all(label in ("Negative", "Positive") for label in summary["zero_shot_predictions"])
    assert len(summary["zero_shot_scores"]) == 2 and all(math.isfinite(s) and s < 0
                                                          for row in summary["zero_shot_scores"] for s in row)
    assert isinstance(summary["generated_instruction"], str) and summary["generated_instruction"]
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    assert records[-1]["step"] == summary["num_steps"] == 20
    assert math.isfinite(summary["final_loss"]) and 0.0 <= summary["eval_accuracy"] <= 1.0
    assert "eval_accuracy_sentiment" in records[-1] and "eval_accuracy_topic" in records[-1]
    assert (Path(summary["export_dir"]) / "config.json").is_file()


@pytest.mark.slow  # every notebook in CI; SIP's by default
def test_backpack_notebook_reads_senses_intervenes_and_fine_tunes_a_tiny_model(tmp_path):
    summary, notebook = run_notebook("backpack.ipynb", {"TINY": True, "WORKDIR": str(tmp_path / "backpack")},
                                     tmp_path)
    assert_install_cell_did_nothing(notebook)
    assert summary["num_senses"] == 4 and set(summary["sense_tables"]) == {"river", "money"}
    for per_token in summary["sense_tables"].values():
        assert all(len(top) == 4 and all(len(words) == 3 for words in top) for top in per_token)
    assert Path(summary["heatmap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and summary["heatmap_tokens"] > 3
    intervention = summary["intervention"]
    assert intervention["scalings"] == [{"word": "nurse", "sense": 1, "factor": 0.0}]
    assert intervention["before"] != intervention["after"]
    assert summary["generated_length"] == 8 and isinstance(summary["generated"], str)
    records = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    assert records[-1]["step"] == summary["num_steps"] and all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert summary["eval_perplexity"] == pytest.approx(math.exp(summary["eval_loss"]))
    assert (Path(summary["export_dir"]) / "config.json").is_file()
