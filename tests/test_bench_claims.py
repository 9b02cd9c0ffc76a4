"""The claim scripts' measuring stages at their tiny shapes, end to end on the CPU: every length of
bench/perceiver_claim.py's scaling runs for both models (its first GPU run lost every length after the first to a
donated model), with a time and a compiled memory. The GPU figures come from the commands in bench/README.md."""
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
