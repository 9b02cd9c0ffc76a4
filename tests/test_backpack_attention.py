"""GPT-2's (and so Backpack's contextualization network's) attention dispatch: `attn_implementation` resolves once
per forward pass without a cache (auto on an NVIDIA GPU with half-precision compute: the Pallas kernels in
training, cuDNN's causal flash attention outside; einsum elsewhere); the fused formulation ("xla" here, the code
path cuDNN takes on a GPU: tests/gpu/test_kernels.py) equals the einsums forward and backward, as do each remat
mode and the Pallas kernels that take attention dropout ("pallas"); decoding with a cache stays on the einsums."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from backpack_jax import BackpackGPT2Config, BackpackGPT2LMHeadModel, GPT2Config, GPT2LMHeadModel, modeling
from jaxport import attention, layer_norm_kernels, layers, tree
from tests import helpers
from tests.helpers import rel_err

MODELS = {"gpt2": (GPT2LMHeadModel, GPT2Config, {}),
          "backpack": (BackpackGPT2LMHeadModel, BackpackGPT2Config, {"num_senses": 3})}
# Dropout in the embeddings and residuals (the same masks either way: one key); attention dropout off, as the
# fused path requires. Inverse-layer scaling: the scale reaches the fused kernel.
FIELDS = {**helpers.GPT2_TINY, "n_layer": 2, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
          "scale_attn_by_inverse_layer_idx": True}


def logits_and_grads(name: str, **fields):
    """Logits and gradients of a training step's loss (dropout on) of model `name` with FIELDS updated by `fields`."""
    model_class, config_class, extra = MODELS[name]
    config = config_class.create(**{**FIELDS, **fields}, **extra)
    graphdef, params, rest = nnx.split(model_class(config, rngs=nnx.Rngs(0)), nnx.Param, ...)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, FIELDS["vocab_size"], (2, 11)))

    def loss(params):
        logits = nnx.merge(graphdef, params, rest)(ids[:, :-1], dropout_rng=jax.random.key(3)).logits
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1).mean(), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, {path: np.asarray(g) for path, g in tree.flatten(nnx.to_pure_dict(grads)).items()}


@functools.cache
def einsum_run(name: str):
    """The model's logits and gradients through the einsums (once per model)."""
    return logits_and_grads(name, attn_implementation="einsum")


@pytest.mark.parametrize(("name", "runtime"), [("gpt2", dict(attn_implementation="xla")),
                                               ("backpack", dict(attn_implementation="xla", remat="dots")),
                                               ("backpack", dict(attn_implementation="einsum", remat="full"))])
def test_fused_path_and_remat_give_the_same_logits_and_gradients(name, runtime, monkeypatch):
    expected_logits, expected_grads = einsum_run(name)
    calls = []
    fused = attention.fused_attention
    monkeypatch.setattr(attention, "fused_attention", lambda *args, **kw: calls.append(kw) or fused(*args, **kw))
    logits, grads = logits_and_grads(name, **runtime)
    assert rel_err(logits, expected_logits) < 1e-5
    assert grads.keys() == expected_grads.keys()
    for path, grad in grads.items():
        assert rel_err(grad, expected_grads[path]) < 1e-4, path
    fused_calls = FIELDS["n_layer"] if runtime["attn_implementation"] == "xla" else 0
    assert len(calls) == fused_calls and all(kw["is_causal"] for kw in calls)


@pytest.mark.parametrize("name", list(MODELS))
def test_pallas_path_with_attention_dropout_equals_the_einsums(name, monkeypatch):
    """attn_implementation="pallas" (jaxport.causal_attention) takes attention dropout, with the einsums' masks:
    the same logits and gradients in training (heads of 16: Triton's tiles)."""
    fields = {"n_embd": 32, "n_head": 2, "attn_pdrop": 0.1}
    expected_logits, expected_grads = logits_and_grads(name, attn_implementation="einsum", **fields)
    rates = []
    kernels = modeling.causal_attention
    monkeypatch.setattr(modeling, "causal_attention", lambda *args, **kw: rates.append(kw["dropout_rate"])
                        or kernels(*args, **kw))
    logits, grads = logits_and_grads(name, attn_implementation="pallas", **fields)
    assert rates == [0.1] * FIELDS["n_layer"]
    assert rel_err(logits, expected_logits) < 1e-5
    for path, grad in grads.items():
        assert rel_err(grad, expected_grads[path]) < 1e-4, path


BLOCK_ADDS = [FIELDS["resid_pdrop"]] * 2 * FIELDS["n_layer"]  # two per block, counting ln_f's
SENSE_ADDS = [FIELDS["resid_pdrop"], 1 - (1 - FIELDS["resid_pdrop"]) ** 2]  # the MLP's output is dropped out twice


@pytest.mark.parametrize(("name", "rates"), [("gpt2", BLOCK_ADDS), ("backpack", SENSE_ADDS + BLOCK_ADDS)])
def test_residual_adds_through_the_layer_norm_kernels_equal_xla(name, rates, monkeypatch):
    """Every residual branch joins the stream inside the next LayerNorm (LayerNorm.add_and_norm), with its
    dropout rate: with the kernels forced (Pallas' interpreter here) the training logits and gradients equal XLA's
    formulation's, dropout included."""
    expected_logits, expected_grads = einsum_run(name)
    calls = []
    kernel = layer_norm_kernels.add_layer_norm
    monkeypatch.setattr(layer_norm_kernels, "add_layer_norm", lambda *args: calls.append(args[-1]) or kernel(*args))
    monkeypatch.setattr(layers.LayerNorm, "_fused", staticmethod(lambda x: True))
    logits, grads = logits_and_grads(name, attn_implementation="einsum")
    np.testing.assert_allclose(calls, rates)
    assert rel_err(logits, expected_logits) < 1e-5
    for path, grad in grads.items():
        assert rel_err(grad, expected_grads[path]) < 1e-4, path


def test_attention_dropout_keeps_the_einsums(monkeypatch):
    """resolve hears of attention dropout when training with attn_pdrop > 0 (auto then stays on the einsums),
    not in evaluation; with its heads of 64 in bf16 on an NVIDIA GPU, auto is cuDNN."""
    config = GPT2Config.create(**{**FIELDS, "attn_pdrop": 0.1})
    model = GPT2LMHeadModel(config, rngs=nnx.Rngs(0))
    seen = []
    resolve = attention.resolve
    monkeypatch.setattr(attention, "resolve", lambda *args, **kw: seen.append(kw["dropout"]) or resolve(*args, **kw))
    ids = jnp.zeros((1, 5), jnp.int32)
    model(ids, dropout_rng=jax.random.key(0))
    model(ids)
    assert seen == [True, False]
    assert attention.resolve("auto", jnp.bfloat16, GPT2Config.create().head_dim, dropout=False, lengths=(512,),
                             platform="gpu") == "cudnn"


def test_auto_trains_through_the_pallas_kernels_on_an_nvidia_gpu(monkeypatch):
    """In training, with or without attention dropout, auto is "pallas" on an NVIDIA GPU in half precision (faster
    than cuDNN's forward and backward, bench/RESULTS.md); outside training it is resolve's choice."""
    config = GPT2Config.create()
    assert modeling.attention_implementation(config, jnp.bfloat16, 512, training=True) == "einsum"  # this CPU
    monkeypatch.setattr(attention, "default_platform", lambda: "gpu")
    for rate in (0.0, 0.1):
        config = GPT2Config.create(attn_pdrop=rate)
        assert modeling.attention_implementation(config, jnp.bfloat16, 512, training=True) == "pallas"
        assert modeling.attention_implementation(config, jnp.bfloat16, 512, training=False) == "cudnn"
        assert modeling.attention_implementation(config, jnp.float32, 512, training=True) == "einsum"


@pytest.mark.parametrize("name", list(MODELS))
def test_decoding_with_a_cache_stays_on_the_einsums(name, monkeypatch):
    model_class, config_class, extra = MODELS[name]
    model = model_class(config_class.create(**FIELDS, **extra, attn_implementation="xla"), rngs=nnx.Rngs(1))
    calls = []
    fused = attention.fused_attention
    monkeypatch.setattr(attention, "fused_attention", lambda *args, **kw: calls.append(kw) or fused(*args, **kw))
    prompt = np.random.default_rng(2).integers(0, FIELDS["vocab_size"], (2, 4))
    sequences = model.generate(prompt, max_new_tokens=3).sequences
    assert calls == []
    # and greedy decoding agrees with the fused full pass over what it produced
    full = np.asarray(model(jnp.asarray(sequences[:, :-1])).logits)
    np.testing.assert_array_equal(full[:, 3:].argmax(-1), np.asarray(sequences[:, 4:]))
    assert len(calls) == FIELDS["n_layer"]


def test_runtime_keys_are_checked_and_stay_out_of_config_json():
    config = GPT2Config.create(**helpers.GPT2_TINY, attn_implementation="xla", remat="dots")
    assert {"attn_implementation", "remat"}.isdisjoint(config.to_dict())
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        GPT2Config.create(attn_implementation="flash")
    with pytest.raises(ValueError, match="remat='some'"):
        BackpackGPT2Config.create(remat="some")
