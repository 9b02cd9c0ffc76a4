"""LSG-BART against the original PyTorch LSG-BART (lsg-converter 0.1.9) on random tiny weights: every sparsity
type, several block sizes and global-token counts, lengths that are not multiples of the block, padded batches;
encoder states and logits (float32, rel. err. < 1e-4), greedy and beam generation token for token.

The reference runs in its own environment (.venv-lsg, see tests/lsg_reference/make_env.sh), all cases in one
subprocess; the tests skip when that environment is missing, and fail when CI is set. (Incremental decoding and
round trips: tests/test_family_contract.py.)"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lsg_jax import LSGBartConfig, LSGBartForConditionalGeneration, LSGBartModel
from lsg_jax.attention import draw_lsh_projections
from tests.helpers import rel_err
from tests.lsg_reference.harness import VOCAB, requires_reference, run_reference, tiny_config

LSH_KEY = jax.random.key(42)

# name -> (LSG fields or None for plain BART, input length)
CASES = {
    "norm-b8-g1": (dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="norm",
                        num_global_tokens=1), 45),
    "norm-b4-g3-f4": (dict(block_size=4, sparse_block_size=4, sparsity_factor=4, sparsity_type="norm",
                           num_global_tokens=3), 37),
    "norm-b8-s4": (dict(block_size=8, sparse_block_size=4, sparsity_factor=2, sparsity_type="norm",
                        num_global_tokens=2), 40),
    "pooling-b8-s4-f4": (dict(block_size=8, sparse_block_size=4, sparsity_factor=4, sparsity_type="pooling",
                              num_global_tokens=2), 43),
    "pooling-f1": (dict(block_size=8, sparse_block_size=8, sparsity_factor=1, sparsity_type="pooling",
                        num_global_tokens=1), 35),
    "lsh-b8": (dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="lsh",
                    num_global_tokens=1), 45),
    "lsh-b16-s8-f4-pre2": (dict(block_size=16, sparse_block_size=8, sparsity_factor=4, sparsity_type="lsh",
                                num_global_tokens=2, lsh_num_pre_rounds=2), 70),
    "stride-g4": (dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="stride",
                       num_global_tokens=4), 41),
    "block_stride-s4": (dict(block_size=8, sparse_block_size=4, sparsity_factor=2, sparsity_type="block_stride",
                             num_global_tokens=1), 50),
    "bos_pooling-f4": (dict(block_size=8, sparse_block_size=8, sparsity_factor=4, sparsity_type="bos_pooling",
                            num_global_tokens=2), 45),
    "none-g5": (dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="none",
                     num_global_tokens=5), 33),
    # block_size == sparsity_factor: the original's odd-offset windows
    "odd-step-b4-f4": (dict(block_size=4, sparse_block_size=2, sparsity_factor=4, sparsity_type="pooling",
                            num_global_tokens=2), 30),
    "mask-first-no-pass": (dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="pooling",
                                num_global_tokens=2, mask_first_token=True, pass_global_tokens_to_decoder=False),
                           45),
    "no-pass-no-pool": (dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="stride",
                             num_global_tokens=3, pass_global_tokens_to_decoder=False, pool_with_global=False), 38),
    "short-full-attention": (dict(block_size=32, sparse_block_size=32, sparsity_factor=2, sparsity_type="norm",
                                  num_global_tokens=2), 45),
    "bart": (None, 30),
}
GENERATE = {  # case -> generate kwargs (transformers' names), checked token for token
    "norm-b8-g1": [dict(max_length=12, min_length=6), dict(max_length=14, num_beams=3, length_penalty=0.8,
                                                           no_repeat_ngram_size=2, early_stopping=True)],
    "lsh-b8": [dict(max_length=10, no_repeat_ngram_size=1), dict(max_length=12, num_beams=2, no_repeat_ngram_size=2)],
    "mask-first-no-pass": [dict(max_length=12, num_beams=4, length_penalty=1.5, min_length=8, early_stopping=False,
                                forced_bos_token_id=0)],
    "bart": [dict(max_length=12, no_repeat_ngram_size=2),
             dict(max_length=13, num_beams=3, early_stopping=True, forced_bos_token_id=0, length_penalty=0.6)],
}


def batch(length: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (3, length))
    mask = np.ones_like(ids)
    mask[1, length - 9:] = 0
    mask[2, 11:] = 0
    ids[2, 11:] = 1
    return ids, mask, rng.integers(3, VOCAB, (3, 9))


def lsh_projections(lsg: dict) -> dict:
    config = LSGBartConfig.from_dict({**tiny_config(), **lsg})
    heads, head_dim = config.encoder_attention_heads, config.d_model // config.encoder_attention_heads
    arrays = []
    for layer in range(config.encoder_layers):
        arrays += draw_lsh_projections(jax.random.fold_in(LSH_KEY, layer), config, heads, head_dim)
    return {f"proj_{i}": np.asarray(array) for i, array in enumerate(arrays)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """{case: (folder, inputs, reference outputs)} from one reference run over every case."""
    work = tmp_path_factory.mktemp("lsg_reference")
    jobs, cases = [], {}
    for number, (name, (lsg, length)) in enumerate(CASES.items()):
        folder, inputs_path, out = work / name, work / f"{name}_in.npz", work / f"{name}_out.npz"
        ids, mask, dec = batch(length, number)
        np.savez(inputs_path, input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        jobs.append(dict(action="build", folder=str(folder), config={**tiny_config(), **(lsg or {})},
                         lsg=lsg is not None, seed=number))
        run = dict(action="run", folder=str(folder), lsg=lsg is not None, inputs=str(inputs_path), out=str(out),
                   generate=GENERATE.get(name, []))
        if lsg and lsg["sparsity_type"] == "lsh":
            np.savez(work / f"{name}_lsh.npz", **lsh_projections(lsg))
            run["lsh"] = str(work / f"{name}_lsh.npz")
        jobs.append(run)
        cases[name] = (folder, (ids, mask, dec), out)
    run_reference(jobs, work)
    return {name: (folder, inputs, dict(np.load(out))) for name, (folder, inputs, out) in cases.items()}


@requires_reference
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_reference(reference, case):
    folder, (ids, mask, dec), expected = reference[case]
    model = LSGBartForConditionalGeneration.from_pretrained(folder)
    assert model.config.lsg == (CASES[case][0] is not None)
    out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, lsh_key=LSH_KEY)
    assert out.encoder_last_hidden_state.shape == expected["encoder"].shape
    assert rel_err(out.encoder_last_hidden_state, expected["encoder"]) < 1e-4
    assert rel_err(out.logits, expected["logits"]) < 1e-4


@requires_reference
@pytest.mark.parametrize("case", sorted(GENERATE))
def test_generation_matches_reference(reference, case):
    folder, (ids, mask, _), expected = reference[case]
    model = LSGBartForConditionalGeneration.from_pretrained(folder)
    for number, kwargs in enumerate(GENERATE[case]):
        sequences = np.asarray(model.generate(ids, mask, lsh_key=LSH_KEY, **kwargs).sequences)
        reference_sequences = expected[f"gen_{number}"]
        # transformers stops at the longest sequence; the rest of our buffer is padding.
        assert np.all(sequences[:, reference_sequences.shape[1]:] == model.config.pad_token_id), kwargs
        np.testing.assert_array_equal(sequences[:, :reference_sequences.shape[1]], reference_sequences,
                                      err_msg=str(kwargs))


@requires_reference
def test_padding_does_not_leak(reference):
    """A row with 11 real tokens gives the same states padded in a batch of 45 as alone (which takes the full
    attention path: 11 tokens fit within two blocks)."""
    folder, (ids, mask, dec), _ = reference["pooling-b8-s4-f4"]
    model = LSGBartForConditionalGeneration.from_pretrained(folder)
    padded = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    alone = model(input_ids=ids[2:, :11], decoder_input_ids=dec[2:], attention_mask=mask[2:, :11]).logits
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(padded[2]), rtol=1e-4, atol=1e-4)


@requires_reference
def test_base_model_and_bf16(reference):
    folder, (ids, mask, dec), expected = reference["norm-b8-g1"]
    base = LSGBartModel.from_pretrained(folder)  # reads the "model."-prefixed keys of the head model
    out = base(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    assert rel_err(out.encoder_last_hidden_state, expected["encoder"]) < 1e-4
    model = LSGBartForConditionalGeneration.from_pretrained(folder, dtype=jnp.bfloat16)
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert logits.dtype == jnp.float32 and rel_err(logits, expected["logits"]) < 5e-2


def test_unknown_sparsity_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match="sparsity_type='dense'.*'norm'.*'bos_pooling'"):
        LSGBartConfig.from_dict({**tiny_config(), "sparsity_type": "dense", "block_size": 8})


def test_config_flavours():
    plain = LSGBartConfig.from_dict({**tiny_config(), "model_type": "bart"})
    assert not plain.lsg and "block_size" not in plain.to_dict()
    lsg = LSGBartConfig.from_dict({**tiny_config(), "model_type": "lsg_bart"})
    assert lsg.lsg and lsg.to_dict()["block_size"] == 128
    assert LSGBartConfig.from_dict(lsg.to_dict()) == lsg
    with pytest.warns(UserWarning, match="num_global_tokens"):
        assert LSGBartConfig.from_dict({**tiny_config(), "num_global_tokens": 0}).num_global_tokens == 1


def test_config_is_frozen_hashable_and_validated():
    """from_dict normalises as the original does (with its warnings); the constructor and dataclasses.replace only
    validate; configs hash (jit static arguments), whatever their extra keys."""
    config = LSGBartConfig.from_dict({**tiny_config(), "block_size": 8, "architectures": ["LSGBartModel"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.block_size = 16
    assert hash(config) == hash(LSGBartConfig.from_dict(config.to_dict()))
    assert dataclasses.replace(config, block_size=16).block_size == 16 and config.block_size == 8
    for invalid, message in ((dict(num_global_tokens=0), "num_global_tokens=0"),
                             (dict(num_global_tokens=513), "num_global_tokens=513"),
                             (dict(mask_first_token=True, pool_with_global=False), "pool_with_global"),
                             (dict(remat=True), "remat=True")):
        with pytest.raises(ValueError, match=message):
            dataclasses.replace(config, **invalid)
    with pytest.warns(UserWarning) as warned:
        normalised = LSGBartConfig.from_dict({**config.to_dict(), "mask_first_token": True, "pool_with_global": False,
                                              "num_global_tokens": 600, "remat": True})
    assert ["num_global_tokens > 512" in str(w.message) for w in warned] == [True, False]
    assert (normalised.pool_with_global, normalised.num_global_tokens, normalised.remat) == (True, 512, "full")
    plain = LSGBartConfig.from_dict({**tiny_config(), "num_global_tokens": 0, "lsg": False})
    assert plain.num_global_tokens == 0  # LSG fields of plain BART are neither clamped nor checked


def test_too_long_inputs_raise_or_truncate():
    from flax import nnx
    config = LSGBartConfig.from_dict({**tiny_config(max_position_embeddings=40), "block_size": 8,
                                      "sparse_block_size": 8, "sparsity_type": "norm"})
    model = LSGBartForConditionalGeneration(config, rngs=nnx.Rngs(0))
    ids = np.full((1, 45), 5)
    with pytest.raises(ValueError, match="exceeds .*max_position_embeddings=40.*truncation=True"):
        model.encode(ids)
    assert model.encode(ids, truncation=True).shape == (1, 1 + 40, 32)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(ids, max_length=5)


def test_lsh_key_changes_the_projections():
    from flax import nnx
    config = LSGBartConfig.from_dict({**tiny_config(), "block_size": 8, "sparse_block_size": 8,
                                      "sparsity_type": "lsh"})
    model = LSGBartForConditionalGeneration(config, rngs=nnx.Rngs(0))
    ids = np.random.default_rng(0).integers(3, VOCAB, (1, 48))
    a = model.encode(ids, lsh_key=jax.random.key(1))
    assert np.array_equal(np.asarray(a), np.asarray(model.encode(ids, lsh_key=jax.random.key(1))))
    assert not np.allclose(np.asarray(a), np.asarray(model.encode(ids, lsh_key=jax.random.key(2))))
    # The key is a call argument only: no integer state leaf the trainer would have to differentiate, and a call
    # without key nor dropout rng uses the documented constant key(0).
    assert all(jnp.issubdtype(x.dtype, jnp.inexact) for x in jax.tree.leaves(nnx.state(model)))
    assert np.array_equal(np.asarray(model.encode(ids)), np.asarray(model.encode(ids, lsh_key=jax.random.key(0))))
    assert np.array_equal(np.asarray(model.generate(ids, max_length=6).sequences),
                          np.asarray(model.generate(ids, max_length=6, lsh_key=jax.random.key(0)).sequences))


def test_layerdrop_skips_layers_in_training_only():
    """encoder/decoder_layerdrop=1 skips every layer when training (an rng is given): the outputs no longer depend
    on the layers' weights; in evaluation, or with layerdrop 0, they do."""
    lsg = dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="none", num_global_tokens=1)
    ids = np.random.default_rng(0).integers(3, VOCAB, (2, 24))
    rng = jax.random.key(1)

    def logits(layerdrop, rng, scale=1.0):
        config = LSGBartConfig.from_dict({**tiny_config(), **lsg, "encoder_layerdrop": layerdrop,
                                          "decoder_layerdrop": layerdrop})
        model = LSGBartForConditionalGeneration(config, rngs=nnx.Rngs(0))
        for layer in [*model.encoder.layers, *model.decoder.layers]:
            layer.fc2.kernel[...] = layer.fc2.kernel[...] * scale
        return np.asarray(model(input_ids=ids, dropout_rng=rng).logits)

    np.testing.assert_array_equal(logits(1.0, rng), logits(1.0, rng, scale=3.0))
    assert np.abs(logits(1.0, None) - logits(1.0, None, scale=3.0)).max() > 1e-3
    np.testing.assert_allclose(logits(0.0, rng), logits(0.0, None), rtol=1e-6, atol=1e-6)  # dropouts are 0
    assert np.abs(logits(1.0, rng) - logits(0.0, rng)).max() > 1e-3
