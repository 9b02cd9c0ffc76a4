"""SIP's two models against a PyTorch reference on random tiny weights.

The reference is transformers' PyTorch T5 fed `inputs_embeds` = (FST encoding or prefix) ++ embedded input and an
attention mask with ones in front, which is how the original (namednil/sip: sip/fst_pretrain.py:192-239,
sip/embed_finetune.py:238-270) runs it; its FST encoder is written in torch from the original's description
(state, symbol and final-flag embeddings concatenated, then a linear layer or Linear-GELU-Dropout-Linear). Its
state dict has the original's key names, and folders are written in the original's Hub layout (flat T5 config
plus the SIP fields, model_type sip_pretrain / sip_finetune).
(The reference models are in tests/helpers.py; logits, decoding and round trips are also checked by
tests/test_family_contract.py.)
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sip_jax.configuration import SIPFinetuningConfig, SIPPreTrainingConfig
from sip_jax.convert import pad_fst_reps
from sip_jax.modeling import FSTInputError, SIPFinetuningModel, SIPPreTrainingModel, check_fst_rep_values
from tests.helpers import (
    FST_KWARGS,
    PREFIX_KWARGS,
    TorchSIPFinetuning,
    TorchSIPPretraining,
    original_prefix_init,
    padded_batch,
    random_fsts,
    rel_err,
    save_original_layout,
)
from tests.helpers import SIP_T5_KWARGS as T5_KWARGS
from tests.helpers import SIP_VOCAB as VOCAB


def padded_inputs(rng):
    return padded_batch(rng, VOCAB, lengths=(9, 6, 3), dec_length=6)


def assert_same_greedy(torch_sequences, ours, pad_id=0):
    """transformers stops at the longest row; ours runs to max_length, padding what follows the end."""
    torch_sequences = torch_sequences.numpy()
    ours = np.asarray(ours)
    np.testing.assert_array_equal(ours[:, :torch_sequences.shape[1]], torch_sequences)
    assert np.all(ours[:, torch_sequences.shape[1]:] == pad_id)


@pytest.fixture(params=["linear", "mlp"])
def pretraining_pair(request, tmp_path):
    torch.manual_seed(0)
    fst = FST_KWARGS[request.param]
    reference = TorchSIPPretraining(fst).eval()
    folder = save_original_layout(reference, tmp_path / "pt", "sip_pretrain", fst)
    return reference, SIPPreTrainingModel.from_pretrained(folder), fst


# ---------------------------------------------------------------------------------------------------------------
# Pre-training model


def test_pretraining_logits_and_greedy_generation_match_pytorch(pretraining_pair):
    reference, model, fst = pretraining_pair
    rng = np.random.default_rng(0)
    ids, mask, dec = padded_inputs(rng)
    fst_rep = random_fsts(rng, fst, [5, 2, 4])  # padded to 5 transitions with the padding state
    with torch.no_grad():
        embeds, full_mask = reference.prepend(torch.tensor(ids), torch.tensor(mask), torch.tensor(fst_rep).long())
        expected = reference.model(inputs_embeds=embeds, attention_mask=full_mask,
                                   decoder_input_ids=torch.tensor(dec)).logits.numpy()
        generated = reference.model.generate(inputs_embeds=embeds, attention_mask=full_mask, max_new_tokens=7,
                                             do_sample=False, num_beams=1)
    out = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), fst_rep=jnp.asarray(fst_rep))
    assert rel_err(np.asarray(out.logits), expected) < 1e-4
    ours = model.generate(jnp.asarray(ids), jnp.asarray(mask), fst_rep=jnp.asarray(fst_rep), max_new_tokens=7)
    assert_same_greedy(generated, ours.sequences)


def test_pretraining_input_padding_does_not_leak(pretraining_pair):
    _, model, fst = pretraining_pair
    rng = np.random.default_rng(1)
    ids, mask, dec = padded_inputs(rng)
    fst_rep = random_fsts(rng, fst, [3, 3, 3])
    full = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), fst_rep=jnp.asarray(fst_rep)).logits
    alone = model(jnp.asarray(ids[2:, :3]), None, jnp.asarray(dec[2:]), fst_rep=jnp.asarray(fst_rep[2:])).logits
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(full[2]), rtol=1e-5, atol=1e-4)


def test_pretraining_four_wide_transitions_and_encoder_output(tmp_path):
    """Without a flag column the final-state embedding is skipped (the model must have none)."""
    torch.manual_seed(1)
    fst = FST_KWARGS["mlp"]  # final_state_embedding_dim = 0
    reference = TorchSIPPretraining(fst).eval()
    model = SIPPreTrainingModel.from_pretrained(save_original_layout(reference, tmp_path, "sip_pretrain", fst))
    fst_rep = random_fsts(np.random.default_rng(2), fst, [4, 1], width=4)
    with torch.no_grad():
        expected = reference.encode_fst(torch.tensor(fst_rep).long()).numpy()
    assert rel_err(np.asarray(model.encode_fst(jnp.asarray(fst_rep))), expected) < 1e-5


@pytest.fixture(scope="module")
def random_pretraining_model():
    return SIPPreTrainingModel(SIPPreTrainingConfig.create(**T5_KWARGS, **FST_KWARGS["linear"]), rngs=jax_rngs())


@pytest.mark.parametrize("width", [3, 6])
def test_transitions_of_the_wrong_width_are_refused(width, random_pretraining_model):
    model = random_pretraining_model
    fst_rep = jnp.zeros((1, 4, width), jnp.int32)
    with pytest.raises(FSTInputError, match=f"4 or 5 entries.*got {width}"):
        model(jnp.ones((1, 3), jnp.int32), decoder_input_ids=jnp.zeros((1, 2), jnp.int32), fst_rep=fst_rep)
    with pytest.raises(FSTInputError, match=f"got {width}"):
        model.generate(jnp.ones((1, 3), jnp.int32), fst_rep=fst_rep, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"FST 1: transition array of shape \(2, %d\)" % width):
        pad_fst_reps([np.zeros((3, 5)), np.zeros((2, width))], num_states=7)


def test_four_wide_transitions_need_a_model_without_flag_embeddings(random_pretraining_model):
    model = random_pretraining_model  # final_state_embedding_dim = 4
    with pytest.raises(FSTInputError, match="need 5 entries, got 4"):
        model.encode_fst(jnp.zeros((1, 3, 4), jnp.int32))


def test_out_of_range_ids_are_named():
    config = SIPPreTrainingConfig.create(**T5_KWARGS, **FST_KWARGS["linear"])
    rep = np.zeros((2, 3, 5), np.int32)
    rep[..., 4] = 1
    check_fst_rep_values(rep, config)
    rep[1, 2, 1] = 30
    with pytest.raises(FSTInputError, match=r"input symbol id 30 at \(example, transition\) \(1, 2\)"):
        check_fst_rep_values(rep, config)


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning model


def jax_rngs():
    from flax import nnx
    return nnx.Rngs(0)


@pytest.fixture
def finetuning_pair(tmp_path):
    torch.manual_seed(2)
    reference = TorchSIPFinetuning(PREFIX_KWARGS).eval()
    folder = save_original_layout(reference, tmp_path / "ft", "sip_finetune", PREFIX_KWARGS)
    return reference, folder


def test_finetuning_logits_and_greedy_generation_match_pytorch(finetuning_pair):
    reference, folder = finetuning_pair
    model = SIPFinetuningModel.from_pretrained(folder)
    np.testing.assert_array_equal(np.asarray(model.prefix_embedding[...]), reference.prefix_embedding.detach().numpy())
    rng = np.random.default_rng(3)
    ids, mask, dec = padded_inputs(rng)
    with torch.no_grad():
        embeds, full_mask = reference.prepend(torch.tensor(ids), torch.tensor(mask))
        expected = reference.model(inputs_embeds=embeds, attention_mask=full_mask,
                                   decoder_input_ids=torch.tensor(dec)).logits.numpy()
        generated = reference.model.generate(inputs_embeds=embeds, attention_mask=full_mask, max_new_tokens=7,
                                             do_sample=False, num_beams=1)
    out = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    assert rel_err(np.asarray(out.logits), expected) < 1e-4
    assert_same_greedy(generated, model.generate(jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=7).sequences)


def test_a_tied_unscaled_t5_as_transformers_5_builds_from_a_v1_1_config(tmp_path):
    """SIP's configs read the T5 fields as T5Config does: tie_word_embeddings=True with scale_decoder_outputs=False
    and no head apart in the checkpoint is a tied, unscaled head."""
    torch.manual_seed(2)
    reference = TorchSIPFinetuning(PREFIX_KWARGS).eval()
    reference.model.lm_head.weight = reference.model.shared.weight
    folder = save_original_layout(reference, tmp_path, "sip_finetune", PREFIX_KWARGS)
    config = json.loads((folder / "config.json").read_text())
    assert (config["tie_word_embeddings"], config["scale_decoder_outputs"]) == (True, False)
    model = SIPFinetuningModel.from_pretrained(folder)
    assert model.config.tie_word_embeddings and not model.config.scale_decoder_outputs
    ids, mask, dec = padded_inputs(np.random.default_rng(3))
    with torch.no_grad():
        embeds, full_mask = reference.prepend(torch.tensor(ids), torch.tensor(mask))
        expected = reference.model(inputs_embeds=embeds, attention_mask=full_mask,
                                   decoder_input_ids=torch.tensor(dec)).logits.numpy()
    assert rel_err(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec)).logits), expected) < 1e-4


def _nan_prefix_folder(tmp_path, init_tensor, drop_prefix=False, prefix=PREFIX_KWARGS):
    torch.manual_seed(5)
    reference = TorchSIPFinetuning(prefix).eval()
    reference.prefix_init_tensor.copy_(torch.as_tensor(init_tensor))
    with torch.no_grad():
        reference.prefix_embedding.fill_(float("nan"))
    if drop_prefix:
        del reference.prefix_embedding
    return reference, save_original_layout(reference, tmp_path, "sip_finetune", prefix)


def known_init_tensor(prefix=PREFIX_KWARGS):
    """Exactly representable values whose means are exact too."""
    n, length, d = prefix["num_precomputed_examples"], prefix["prefix_max_init_length"], T5_KWARGS["d_model"]
    return (np.arange(n * length * d, dtype=np.float32).reshape(n, length, d) % 97) * 0.25


def test_nan_prefix_is_initialized_as_the_original(tmp_path):
    init = known_init_tensor()
    _, folder = _nan_prefix_folder(tmp_path, init)
    model = SIPFinetuningModel.from_pretrained(folder)
    expected = original_prefix_init(torch.as_tensor(init), 3, 5).numpy()
    np.testing.assert_array_equal(np.asarray(model.prefix_embedding[...]), expected)
    # First num_examples encodings, first prefix_length positions: the formula on a known tensor.
    np.testing.assert_array_equal(expected, init[:3, :5].mean(0, keepdims=True))


def test_random_selection_uses_the_given_key(tmp_path):
    init = known_init_tensor()
    _, folder = _nan_prefix_folder(tmp_path, init)
    key = jax.random.key(7)
    model = SIPFinetuningModel.from_pretrained(folder, random_selection=True, prefix_init_rng=key)
    permutation = jax.random.permutation(key, init.shape[0])
    expected = original_prefix_init(torch.as_tensor(init), 3, 5, permutation).numpy()
    np.testing.assert_allclose(np.asarray(model.prefix_embedding[...]), expected, rtol=1e-6)
    other = SIPFinetuningModel.from_pretrained(folder, random_selection=True, prefix_init_rng=jax.random.key(8))
    assert not np.array_equal(np.asarray(other.prefix_embedding[...]), np.asarray(model.prefix_embedding[...]))
    again = SIPFinetuningModel.from_pretrained(folder, random_selection=True, prefix_init_rng=key)
    np.testing.assert_array_equal(np.asarray(again.prefix_embedding[...]), np.asarray(model.prefix_embedding[...]))


def test_absent_or_resized_untrained_prefix_is_initialized(tmp_path):
    init = known_init_tensor()
    _, folder = _nan_prefix_folder(tmp_path / "absent", init, drop_prefix=True)
    model = SIPFinetuningModel.from_pretrained(folder)
    np.testing.assert_array_equal(np.asarray(model.prefix_embedding[...]), init[:3, :5].mean(0, keepdims=True))
    _, folder = _nan_prefix_folder(tmp_path / "nan", init)
    shorter = SIPFinetuningModel.from_pretrained(folder, prefix_length=2)  # the README's config override
    np.testing.assert_array_equal(np.asarray(shorter.prefix_embedding[...]), init[:3, :2].mean(0, keepdims=True))


def test_trained_prefix_of_another_length_is_an_error(finetuning_pair):
    from jaxport.convert import ConversionError
    _, folder = finetuning_pair
    with pytest.raises(ConversionError, match="prefix_embedding"):
        SIPFinetuningModel.from_pretrained(folder, prefix_length=2)


def test_prefix_longer_than_the_stored_encodings_is_an_error(tmp_path):
    _, folder = _nan_prefix_folder(tmp_path, known_init_tensor())
    with pytest.raises(ValueError, match="prefix_length=9 is longer than the stored encodings"):
        SIPFinetuningModel.from_pretrained(folder, prefix_length=9)


def test_random_selection_needs_a_key():
    config = SIPFinetuningConfig.create(**T5_KWARGS, **dict(PREFIX_KWARGS, random_selection=True))
    model = SIPFinetuningModel(config, rngs=jax_rngs())
    assert not model.prefix_is_initialized()  # NaN, as the original's constructor leaves it
    with pytest.raises(ValueError, match="explicit PRNG key"):
        model.initialize_prefix()
