"""The import structure DESIGN.md promises, read from the source (imports inside functions included): no cycles
anywhere, the shared core imports no family, and no family imports another (t5_jax is shared model code); and every
family still imports and runs under a JAX without Pallas' Triton backend."""
import subprocess
import sys

from tests.helpers import ROOT, import_graph

FAMILIES = ("sip_jax", "lsg_jax", "backpack_jax", "perceiver_jax", "flipped_jax")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(name):
        if state.get(name) == "open":
            return path[path.index(name):] + [name]
        if state.get(name) == "done":
            return None
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            # A package's __init__ that re-exports its submodules is imported by them only as the package's parent.
            if name.startswith(target + "."):
                continue
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def top(name: str) -> str:
    return name.split(".")[0]


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_core_imports_no_family_and_families_import_no_other_family():
    for name, targets in import_graph().items():
        imported = {top(target) for target in targets}
        if top(name) == "jaxport":
            assert not imported - {"jaxport"}, (name, imported)
        if top(name) in FAMILIES:
            assert not imported & (set(FAMILIES) - {top(name)}), (name, imported)


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


WITHOUT_PALLAS_TRITON = """
import importlib.abc, sys

class Removed(importlib.abc.MetaPathFinder):  # a JAX release that has dropped the deprecated backend
    def find_spec(self, name, path, target=None):
        if name == "jax.experimental.pallas.triton":
            raise ImportError(name)

sys.meta_path.insert(0, Removed())
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
import backpack_jax, flipped_jax, lsg_jax, perceiver_jax, sip_jax, t5_jax
from backpack_jax import GPT2Config, GPT2LMHeadModel, modeling
from jaxport import causal_attention, cross_entropy_kernels, layer_norm_kernels, pallas_triton
from lsg_jax import LSGBartConfig, dispatch, pallas_attention

assert pallas_triton.triton is None
assert not (layer_norm_kernels.supported(768) or causal_attention.supported(64) or cross_entropy_kernels.supported())
gpu = dict(platform="gpu")
config = LSGBartConfig(sparsity_type="none")
chosen = dispatch.resolve(config, jnp.bfloat16, training=True, **gpu)
assert "pallas" not in chosen, chosen
assert pallas_attention.pallas_supported(config, 64) == pallas_triton.MISSING
model = GPT2LMHeadModel(GPT2Config.create(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=16),
                        rngs=nnx.Rngs(0))
ids = jnp.asarray(np.arange(12).reshape(2, 6))
grads = nnx.grad(lambda m: m(ids, dropout_rng=jax.random.key(0)).logits.mean())(model)
assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
try:
    causal_attention.causal_attention(*[jnp.ones((1, 64, 2, 16))] * 3, scale=1.0)
except RuntimeError as error:
    assert "no Pallas Triton backend" in str(error)
else:
    raise AssertionError("the kernels ran without their backend")
print("ok")
"""


def test_every_family_runs_without_the_pallas_triton_backend():
    """JAX 0.11 deprecated Pallas' Triton backend, in which the GPU kernels are written, for removal. Where it is
    gone, every family still imports; the kernels report themselves unsupported, so that no dispatch picks them
    (LSG-BART's "auto" on an NVIDIA GPU included) and the XLA formulations run (a GPT-2 training step's gradients
    here); an explicit call of the kernels is refused with a message that names the missing backend."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_PALLAS_TRITON], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
