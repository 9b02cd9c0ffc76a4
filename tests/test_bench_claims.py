"""The claim scripts' measuring stages at their tiny shapes, end to end on the CPU: every length of
bench/perceiver_claim.py's scaling runs for both models (its first GPU run lost every length after the first to a
donated model), with a time and a compiled memory; its learn stage pre-trains on the text it is given and fine-tunes
from that model and from scratch. The GPU figures come from the commands in bench/README.md."""
import importlib
import json

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # about a minute of small compilations: CI runs it (-m "slow or not slow")


def test_perceiver_scaling_measures_every_length_of_both_models(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # how the bench scripts import their siblings
    claim = importlib.import_module("perceiver_claim")
    out = tmp_path / "scaling.json"
    results = claim.main(["scaling", "--tiny", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert list(results["runs"]) == ["64", "128", "256"]
    for length, models in results["runs"].items():
        for name in ("perceiver", "bert"):
            for kind in ("forward", "train"):
                run = models[name][kind]
                assert "error" not in run, (length, name, kind, run)
                assert run["ms"] > 0 and run["memory"]["peak_bytes"] > 0, (length, name, kind)


def test_perceiver_learn_pretrains_on_the_given_text_and_fine_tunes_both_ways(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    claim = importlib.import_module("perceiver_claim")
    words = ["good", "fine", "great", "bad", "dull", "awful", "plot", "film", "the", "a"]
    rows = [f"{' '.join(words[(i * 7 + j) % 10] for j in range(6))}\t{i % 2}" for i in range(48)]
    for name, part in (("train.tsv", rows[:32]), ("dev.tsv", rows[32:])):
        (tmp_path / name).write_text("sentence\tlabel\n" + "\n".join(part) + "\n")
    text = tmp_path / "other.jsonl"
    text.write_text("".join(json.dumps({"text": " ".join(words[i:] + words[:i])}) + "\n" for i in range(10)) * 20)
    report = claim.main(["learn", "--tiny", "--workdir", str(tmp_path), "--text", str(text)])
    assert (tmp_path / "pretrain" / "export" / "config.json").is_file()
    assert not (tmp_path / "text.jsonl").exists()  # --text, not the default file, was read
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["majority_class_accuracy"] == 0.5
    for name in ("pretrained", "scratch"):
        assert 0.0 <= report[name]["eval_accuracy"] <= 1.0 and report[name]["eval_loss"] > 0
        curve = report[name]["eval_accuracy_by_step"]  # every tenth of the 30 steps, ending with the result
        assert list(curve) == list(range(3, 31, 3)) and curve[30] == report[name]["eval_accuracy"]
