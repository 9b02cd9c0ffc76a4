"""bench/profiling.py's reading of compiled HLO text: which instruction a kernel ran, with its shapes and source."""
import importlib

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import ROOT


@pytest.fixture
def profiling(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # how the bench scripts import their siblings
    return importlib.import_module("profiling")


def test_each_instruction_has_its_shapes_and_source_line(profiling):
    def project(x, w):
        return jnp.tanh(x @ w)

    hlo = jax.jit(project).lower(jnp.ones((32, 16)), jnp.ones((16, 8))).compile().as_text()
    signatures, sources = profiling.hlo_signatures(hlo), profiling.hlo_sources(hlo)
    products = {key: text for key, text in signatures.items() if "(f32[32,16], f32[16,8])" in text}
    assert products and all(text.startswith("f32[32,8] ") for text in products.values()), signatures
    assert any("test_bench_profiling.py" in sources.get(key, "") for key in products), sources
