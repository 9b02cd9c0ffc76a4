"""Backpack-GPT2 against the authors' PyTorch file (pyvene 0.1.8's copy, loaded by path) and GPT-2 against
transformers' GPT2LMHeadModel, on random tiny weights: logits, contextualization weights, senses, custom
contextualization, generation; and the inputs they refuse."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from backpack_jax import (
    BackpackGPT2Config,
    BackpackGPT2LMHeadModel,
    BackpackGPT2Model,
    GPT2LMHeadModel,
    GPT2Model,
    modeling,
)
from backpack_jax.modeling import causal_weights, contextualization_weights
from jaxport import tree
from jaxport.convert import flax_to_pytorch
from jaxport.layers import causal_mask
from tests import helpers

# (num_senses, sense_intermediate_scale, scale_attn_by_inverse_layer_idx, other fields): 7 senses do not divide
# n_embd 24 (each sense's query and key then have 3 dimensions and the projection is 42 wide, not 48).
CASES = {
    "3-senses-scale-2-inverse": dict(num_senses=3, sense_intermediate_scale=2, scale_attn_by_inverse_layer_idx=True),
    "7-senses-scale-1": dict(num_senses=7, sense_intermediate_scale=1, scale_attn_by_inverse_layer_idx=False),
    "4-senses-scale-3-gelu-3-layers": dict(num_senses=4, sense_intermediate_scale=3,
                                           scale_attn_by_inverse_layer_idx=True, activation_function="gelu",
                                           n_layer=3, n_inner=40),
}
BATCH, LENGTH = 3, 9


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def pair(request, tmp_path_factory):
    """(the authors' model, ours loaded from its folder)."""
    reference = helpers.random_backpack(seed=len(request.param), **CASES[request.param])
    folder = helpers.save_backpack(reference, tmp_path_factory.mktemp("backpack"))
    return reference, BackpackGPT2LMHeadModel.from_pretrained(folder)


def ids_of(seed: int, vocab: int = helpers.GPT2_TINY["vocab_size"], shape=(BATCH, LENGTH)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


def test_logits_and_contextualization_match_the_original(pair):
    reference, model = pair
    ids = ids_of(0)
    with torch.no_grad():
        expected = reference(torch.as_tensor(ids))
    out = model(jnp.asarray(ids))
    assert out.logits.shape == (BATCH, LENGTH, helpers.GPT2_TINY["vocab_size"]) and out.logits.dtype == jnp.float32
    assert out.contextualization.shape == (BATCH, model.config.num_senses, LENGTH, LENGTH)
    assert helpers.rel_err(out.logits, expected.logits.numpy()) < 1e-4
    assert helpers.rel_err(out.contextualization, expected.contextualization.numpy()) < 1e-4


def test_gradients_match_the_original(pair):
    """Training sees what the original trains on: next-token loss gradients of every weight, tied ones summed."""
    reference, ours = pair
    ids = ids_of(5)
    inputs, targets = torch.tensor(ids[:, :-1]), torch.tensor(ids[:, 1:])
    reference.zero_grad()
    logits = reference(inputs).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    expected = {key: p.grad.numpy() for key, p in reference.named_parameters()}
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest)(jnp.asarray(ids[:, :-1])).logits
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(ids[:, 1:, None]), -1).mean()

    grads = jax.grad(loss)(params)
    flat = {path: np.asarray(leaf) for path, leaf in tree.flatten(nnx.to_pure_dict(grads)).items()}
    actual = flax_to_pytorch(flat, BackpackGPT2LMHeadModel.conversion_rules(ours.config))
    assert expected.keys() <= actual.keys()
    for key, grad in expected.items():
        assert helpers.rel_err(actual[key], grad) < 1e-4, key


def test_given_position_ids_match_the_original(pair):
    reference, model = pair
    ids, positions = ids_of(1), np.arange(LENGTH)[None].repeat(BATCH, 0) + 4
    with torch.no_grad():
        expected = reference(torch.as_tensor(ids), position_ids=torch.as_tensor(positions))
        default = reference(torch.as_tensor(ids)).logits.numpy()
    logits = model(jnp.asarray(ids), position_ids=jnp.asarray(positions)).logits
    assert helpers.rel_err(logits, expected.logits.numpy()) < 1e-4
    assert helpers.rel_err(logits, default) > 1e-3  # the positions mattered


def test_senses_match_the_original(pair):
    reference, model = pair
    ids = ids_of(2)
    with torch.no_grad():
        expected = reference.backpack.sense_network(reference.backpack.word_embeddings(torch.as_tensor(ids)))
    senses = model.senses(ids)
    assert senses.shape == (BATCH, model.config.num_senses, LENGTH, model.config.n_embd)
    assert helpers.rel_err(senses, expected.numpy()) < 1e-4


def test_custom_contextualization_is_used_as_given(pair):
    """Weights that are neither causal nor normalised (some negative): the original uses them unchanged."""
    reference, model = pair
    ids = ids_of(3)
    weights = np.random.default_rng(3).normal(size=(BATCH, model.config.num_senses, LENGTH, LENGTH))
    weights = weights.astype(np.float32)
    with torch.no_grad():
        expected = reference.run_with_custom_contextualization(torch.as_tensor(ids), torch.as_tensor(weights))
    out = model.run_with_custom_contextualization(jnp.asarray(ids), jnp.asarray(weights))
    assert helpers.rel_err(out.logits, expected.logits.numpy()) < 1e-4
    np.testing.assert_array_equal(out.contextualization, weights)


def test_custom_contextualization_of_the_models_own_weights_gives_its_logits(pair):
    _, model = pair
    out = model(jnp.asarray(ids_of(4)))
    custom = model.run_with_custom_contextualization(jnp.asarray(ids_of(4)), out.contextualization)
    assert helpers.rel_err(custom.logits, out.logits) < 1e-6


def test_base_model_gives_the_weighted_senses(pair, tmp_path):
    reference, _ = pair
    folder = helpers.save_backpack(reference, tmp_path)
    base = BackpackGPT2Model.from_pretrained(folder)
    ids = ids_of(5)
    with torch.no_grad():
        expected = reference.backpack(torch.as_tensor(ids), position_ids=None)
    out = base(jnp.asarray(ids))
    assert helpers.rel_err(out.hidden_states, expected.hidden_states.numpy()) < 1e-4
    assert helpers.rel_err(out.contextualization, expected.contextualization.numpy()) < 1e-4


def test_incremental_decoding_equals_the_full_pass(pair):
    """Prefix on the cache, then one token at a time (jitted: two compilations rather than op-by-op dispatch)."""
    _, model = pair
    ids = jnp.asarray(ids_of(7))
    graphdef, state = nnx.split(model)
    decode = jax.jit(lambda state, *args: nnx.merge(graphdef, state).decode(*args))
    logits, cache = decode(state, ids[:, :4], model.init_cache(BATCH, LENGTH), jnp.int32(0))
    steps = [logits]
    for t in range(4, LENGTH):
        logits, cache = decode(state, ids[:, t:t + 1], cache, jnp.int32(t))
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), model(ids).logits, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def widest(tmp_path_factory):
    """The case with the most layers (generate compiles a while loop over the whole model: one case)."""
    name = "4-senses-scale-3-gelu-3-layers"
    reference = helpers.random_backpack(seed=len(name), **CASES[name])
    folder = helpers.save_backpack(reference, tmp_path_factory.mktemp("backpack"))
    return reference, BackpackGPT2LMHeadModel.from_pretrained(folder)


def test_greedy_generation_equals_a_greedy_loop_over_the_original(widest):
    reference, model = widest
    prompt, new = ids_of(6, shape=(BATCH, 5)), 8
    expected = helpers.greedy_loop(lambda ids: reference(ids).logits, prompt, new)
    sequences = model.generate(prompt, max_new_tokens=new).sequences
    assert sequences.shape == (BATCH, 5 + new)
    np.testing.assert_array_equal(sequences, expected)


def test_sampling_draws_from_the_top_k_of_the_full_pass(widest):
    """Each sampled token is among the top-k of the full (uncached) pass over the sequence so far; a key gives
    the same draw again, another key another draw."""
    _, model = widest
    prompt = ids_of(8, shape=(BATCH, 3))
    kwargs = dict(max_new_tokens=6, do_sample=True, top_k=3, top_p=0.9, temperature=0.7)
    sequences = np.asarray(model.generate(prompt, rng=jax.random.key(0), **kwargs).sequences)
    np.testing.assert_array_equal(model.generate(prompt, rng=jax.random.key(0), **kwargs).sequences, sequences)
    assert not np.array_equal(model.generate(prompt, rng=jax.random.key(1), **kwargs).sequences, sequences)
    logits = np.asarray(model(jnp.asarray(sequences)).logits)
    top3 = np.argsort(logits, axis=-1)[:, :, -3:]
    for t in range(3, sequences.shape[1]):
        assert all(sequences[b, t] in top3[b, t - 1] for b in range(BATCH)), t


def test_dropout_only_in_training():
    """Dropout acts when a dropout key is given (training) and not otherwise; same key, same result."""
    config = BackpackGPT2Config.create(**{**helpers.GPT2_TINY, "resid_pdrop": 0.2, "embd_pdrop": 0.2,
                                          "attn_pdrop": 0.2, "n_layer": 1}, num_senses=3)
    graphdef, state = nnx.split(BackpackGPT2LMHeadModel(config, rngs=nnx.Rngs(0)))
    logits = jax.jit(lambda state, ids, rng: nnx.merge(graphdef, state)(ids, dropout_rng=rng).logits)
    ids = jnp.asarray(ids_of(9))
    plain = logits(state, ids, None)
    dropped = logits(state, ids, jax.random.key(1))
    assert helpers.rel_err(dropped, plain) > 1e-2
    np.testing.assert_array_equal(logits(state, ids, jax.random.key(1)), dropped)
    assert helpers.rel_err(logits(state, ids, jax.random.key(2)), dropped) > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# GPT-2 against transformers

GPT2_CASES = {
    "inverse-layer-scaling": dict(scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "relu-n-inner-untied": dict(activation_function="relu", n_inner=40, tie_word_embeddings=False),
    "unscaled-upcast": dict(scale_attn_weights=False, reorder_and_upcast_attn=True),
}


@pytest.fixture(scope="module", params=list(GPT2_CASES), ids=list(GPT2_CASES))
def gpt2_pair(request, tmp_path_factory):
    reference = helpers.random_gpt2(seed=1, **GPT2_CASES[request.param])
    if not reference.config.tie_word_embeddings:  # transformers may tie it anyway: an output layer of its own
        reference.lm_head.weight = torch.nn.Parameter(torch.randn_like(reference.lm_head.weight) * 0.3)
    folder = tmp_path_factory.mktemp("gpt2")
    reference.save_pretrained(folder)
    return reference, GPT2LMHeadModel.from_pretrained(folder), folder


def test_gpt2_logits_match_transformers(gpt2_pair):
    reference, model, _ = gpt2_pair
    ids, positions = ids_of(10), np.arange(LENGTH)[None].repeat(BATCH, 0) + 2
    with torch.no_grad():
        expected = reference(torch.as_tensor(ids)).logits.numpy()
        shifted = reference(torch.as_tensor(ids), position_ids=torch.as_tensor(positions)).logits.numpy()
    assert helpers.rel_err(model(jnp.asarray(ids)).logits, expected) < 1e-4
    assert helpers.rel_err(model(jnp.asarray(ids), position_ids=jnp.asarray(positions)).logits, shifted) < 1e-4


def test_gpt2_base_model_matches_transformers(gpt2_pair):
    reference, _, folder = gpt2_pair
    ids = ids_of(11)
    with torch.no_grad():
        expected = reference.transformer(torch.as_tensor(ids)).last_hidden_state.numpy()
    assert helpers.rel_err(GPT2Model.from_pretrained(folder)(jnp.asarray(ids)).last_hidden_state, expected) < 1e-4


def test_gpt2_greedy_generation_matches_transformers(tmp_path):
    """transformers' generate, with an EOS that one row generates early: that row ends and is padded (one case:
    generate compiles a while loop over the whole model)."""
    reference = helpers.random_gpt2(seed=1, **GPT2_CASES["unscaled-upcast"])
    prompt = ids_of(12, shape=(BATCH, 4))
    with torch.no_grad():
        free = reference.generate(torch.as_tensor(prompt), max_new_tokens=10, do_sample=False).numpy()
        eos = int(free[0, 6])  # row 0's third new token
        reference.generation_config.eos_token_id = reference.config.eos_token_id = eos
        reference.generation_config.pad_token_id = reference.config.pad_token_id = 0
        expected = reference.generate(torch.as_tensor(prompt), max_new_tokens=10, do_sample=False).numpy()
    assert (expected[0, 7:] == 0).all() and expected.shape == free.shape  # row 0 stopped, others went on
    reference.save_pretrained(tmp_path)
    np.testing.assert_array_equal(GPT2LMHeadModel.from_pretrained(tmp_path).generate(prompt, max_new_tokens=10)
                                  .sequences, expected)


def test_gpt2_is_backpacks_contextualization_network(pair):
    """The Backpack's GPT-2 states are a GPT2Model's: the same class, the same numbers."""
    reference, model = pair
    ids = ids_of(13)
    with torch.no_grad():
        expected = reference.backpack.gpt2_model(torch.as_tensor(ids)).last_hidden_state.numpy()
    assert isinstance(model.backpack.gpt2_model, GPT2Model)
    assert helpers.rel_err(model.backpack.gpt2_model(jnp.asarray(ids)).last_hidden_state, expected) < 1e-4


# ---------------------------------------------------------------------------------------------------------------
# What is refused


def test_wrong_contextualization_shape_names_the_expected_one(pair):
    _, model = pair
    ids = jnp.asarray(ids_of(14))
    wrong = jnp.ones((BATCH, model.config.num_senses, LENGTH, LENGTH - 1))
    expected = f"\\({BATCH}, {model.config.num_senses}, {LENGTH}, {LENGTH}\\)"
    with pytest.raises(ValueError, match=f"expected {expected}"):
        model.run_with_custom_contextualization(ids, wrong)


@pytest.mark.parametrize("model_class", [BackpackGPT2LMHeadModel, GPT2LMHeadModel])
def test_sequences_longer_than_n_positions_are_refused(model_class):
    config = model_class.config_class.create(**helpers.GPT2_TINY)
    model = model_class(config, rngs=nnx.Rngs(0))
    n = config.n_positions
    with pytest.raises(ValueError, match=f"{n + 1} tokens is longer than the model's n_positions={n}"):
        model(jnp.zeros((1, n + 1), jnp.int32))
    with pytest.raises(ValueError, match=f"position id {n} is out of range"):
        model(jnp.zeros((1, 3), jnp.int32), position_ids=np.array([[0, 1, n]]))
    with pytest.raises(ValueError, match=f"needs {n + 1} positions; the model has n_positions={n}"):
        model.generate(np.zeros((1, 4), np.int32), max_length=n + 2)
    if model_class is GPT2LMHeadModel:  # the longest generation allowed runs (once: generate compiles a while loop)
        assert model.generate(np.zeros((1, 4), np.int32), max_length=n + 1).sequences.shape == (1, n + 1)


def test_config_keeps_unknown_keys_and_names_unknown_fields():
    values = {**helpers.GPT2_TINY, "num_senses": 3, "model_type": "gpt2", "summary_type": "cls_index",
              "auto_map": {"AutoModelForCausalLM": "modeling_backpack_gpt2.BackpackGPT2LMHeadModel"}}
    config = BackpackGPT2Config.from_dict(values)
    assert config.extra == {"summary_type": "cls_index", "auto_map": values["auto_map"]}
    assert {k: v for k, v in config.to_dict().items() if k in values} == values
    with pytest.raises(TypeError, match="no field num_sense"):
        BackpackGPT2Config.create(num_sense=3)
    with pytest.raises(ValueError, match="n_embd \\(24\\) must be a multiple of n_head \\(5\\)"):
        BackpackGPT2Config.create(n_embd=24, n_head=5)


def test_bf16_compute_keeps_the_residual_streams_float32(monkeypatch):
    """As torch.autocast keeps them (embedding lookups stay float32, bf16 block outputs add to float32), in the
    contextualization network and in the sense network's block (bench/RESULTS.md, Backpack losses)."""
    seen = {"contextualization": [], "senses": []}
    for cls, key in ((modeling.GPT2Block, "contextualization"), (modeling.BackpackNoMixBlock, "senses")):
        call = cls.__call__

        def recording(self, x, *args, _call=call, _key=key, **kwargs):
            residual = args[0] if _key == "senses" else x
            seen[_key].append(residual.dtype)
            return _call(self, x, *args, **kwargs)
        monkeypatch.setattr(cls, "__call__", recording)
    config = BackpackGPT2Config.create(**helpers.GPT2_TINY, num_senses=3)
    model = BackpackGPT2LMHeadModel(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    logits = model(jnp.asarray(ids_of(6)), dropout_rng=jax.random.key(0)).logits
    assert logits.dtype == jnp.bfloat16  # the compute dtype, as transformers' Flax models return them
    assert seen["contextualization"] == [jnp.float32] * config.n_layer and seen["senses"] == [jnp.float32]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_contextualization_weights_gradients_equal_autodiff(dtype):
    """The weights' hand-written backward pass (it keeps them in the compute dtype) against autodiff of the plain
    softmax, with cotangents on both the float32 weights the model returns and the ones that weigh the senses."""
    rng = np.random.default_rng(0)
    query, key = (jnp.asarray(rng.standard_normal((2, 12, 4, 8)), dtype) for _ in range(2))
    cotangents = tuple(jnp.asarray(rng.standard_normal((2, 4, 12, 12)), d) for d in (jnp.float32, dtype))
    mask = causal_mask(jnp.arange(12), jnp.arange(12))

    def plain(query, key):
        weights = causal_weights(query, key, 0.35, mask)
        return weights, weights.astype(dtype)

    custom = lambda query, key: contextualization_weights(query, key, mask, 0.35, jnp.dtype(dtype))
    (outputs, pullback), (want_outputs, want_pullback) = (jax.vjp(f, query, key) for f in (custom, plain))
    tolerance = 1e-6 if dtype == jnp.float32 else 2e-2  # bf16: the kept weights and the scores' gradient rounded
    for got, want in zip(outputs, want_outputs, strict=True):
        assert got.dtype == want.dtype and helpers.rel_err(got, want) < 1e-6
    for got, want in zip(pullback(cotangents), want_pullback(cotangents), strict=True):
        assert got.dtype == want.dtype and helpers.rel_err(got, want) < tolerance
