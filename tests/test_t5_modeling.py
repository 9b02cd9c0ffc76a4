"""T5 forward against transformers' PyTorch T5 on random tiny weights, for each feed-forward variant, tied or
not, long relative distances, labels; T5Config. (Incremental decoding and round trips:
tests/test_family_contract.py.)"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t5_jax import T5Config, T5ForConditionalGeneration
from tests import helpers
from tests.helpers import random_torch_t5, rel_err

VOCAB = 64


def tiny_kwargs(feed_forward_proj, tied):
    return dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=20,
                feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied, dropout_rate=0.0,
                decoder_start_token_id=0)


def torch_t5(folder, feed_forward_proj="relu", tied=True, seed=0):
    """A random transformers T5 saved as an HF folder."""
    model = random_torch_t5(seed, **tiny_kwargs(feed_forward_proj, tied))
    model.save_pretrained(folder)
    return model


def padded_batch(rng, length=30, dec_length=25):
    return helpers.padded_batch(rng, VOCAB, (length, 20, 5), dec_length)


@pytest.mark.parametrize("feed_forward_proj,tied", [("relu", True), ("gated-silu", False)])  # gated-gelu: the contract
def test_logits_match_pytorch(tmp_path, feed_forward_proj, tied):
    reference = torch_t5(tmp_path, feed_forward_proj, tied)
    model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    ids, mask, dec = padded_batch(np.random.default_rng(0))
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             decoder_input_ids=torch.tensor(dec)).logits.numpy()
    out = model(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), decoder_input_ids=jnp.asarray(dec))
    assert rel_err(np.asarray(out.logits), expected) < 1e-4
    # Padded positions must not leak: the row with 5 real tokens equals the same row unpadded.
    alone = model(input_ids=jnp.asarray(ids[2:, :5]), decoder_input_ids=jnp.asarray(dec[2:]))
    np.testing.assert_allclose(np.asarray(alone.logits[0]), np.asarray(out.logits[2]), rtol=1e-5, atol=1e-4)


def test_decoder_padding_masks_match_pytorch_even_a_fully_masked_row(tmp_path):
    """A decoder mask is combined with the causal one as booleans: a row with no key left attends evenly to all, as
    in transformers (summed additive biases hid the later keys twice and the earlier once, and differed there)."""
    reference = torch_t5(tmp_path)
    model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    ids, mask, dec = padded_batch(np.random.default_rng(5), dec_length=6)
    dec_mask = np.ones_like(dec)
    dec_mask[0], dec_mask[1, 4:] = 0, 0
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             decoder_input_ids=torch.tensor(dec), decoder_attention_mask=torch.tensor(dec_mask)).logits
    out = model(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), decoder_input_ids=jnp.asarray(dec),
                decoder_attention_mask=jnp.asarray(dec_mask))
    assert rel_err(np.asarray(out.logits), expected.numpy()) < 1e-4


def test_long_relative_distances_match_pytorch(tmp_path):
    """Lengths past max_distance exercise the logarithmic buckets."""
    reference = torch_t5(tmp_path, "gated-gelu", tied=False)
    model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    ids, mask, dec = padded_batch(np.random.default_rng(1), length=90, dec_length=70)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             decoder_input_ids=torch.tensor(dec)).logits.numpy()
    out = model(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), decoder_input_ids=jnp.asarray(dec))
    assert rel_err(np.asarray(out.logits), expected) < 1e-4


def test_inputs_embeds_equal_token_ids(tmp_path):
    """SIP feeds ready embeddings; they must give what the ids give."""
    torch_t5(tmp_path)
    model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    ids, mask, dec = padded_batch(np.random.default_rng(3))
    by_ids = model(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), decoder_input_ids=jnp.asarray(dec))
    by_embeds = model(inputs_embeds=model.shared(jnp.asarray(ids)), attention_mask=jnp.asarray(mask),
                      decoder_input_ids=jnp.asarray(dec))
    np.testing.assert_array_equal(np.asarray(by_ids.logits), np.asarray(by_embeds.logits))


def test_labels_are_shifted_like_pytorch(tmp_path):
    reference = torch_t5(tmp_path)
    model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    ids, mask, labels = padded_batch(np.random.default_rng(4))
    labels[:, -3:] = -100
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             labels=torch.tensor(labels)).logits.numpy()
    out = model(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), labels=jnp.asarray(labels))
    assert rel_err(np.asarray(out.logits), expected) < 1e-4


def test_bad_feed_forward_proj_is_an_error():
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config.create(feed_forward_proj="gated-swish-extra")


def test_config_derives_the_fields_transformers_derives():
    v1_0 = T5Config.from_dict({"num_layers": 3})
    assert (v1_0.num_decoder_layers, v1_0.tie_word_embeddings, v1_0.scale_decoder_outputs) == (3, True, True)
    v1_1 = T5Config.from_dict({"num_layers": 3, "num_decoder_layers": 1, "tie_word_embeddings": False})
    assert (v1_1.num_decoder_layers, v1_1.tie_word_embeddings, v1_1.scale_decoder_outputs) == (1, False, False)
    written_by_transformers_5 = T5Config.from_dict({"tie_word_embeddings": True, "scale_decoder_outputs": False})
    assert written_by_transformers_5.tie_word_embeddings and not written_by_transformers_5.scale_decoder_outputs
    assert T5Config.create(num_layers=3) == v1_0
    with pytest.raises(TypeError, match="no field num_layer"):
        T5Config.create(num_layer=3)
    with pytest.raises(ValueError, match="num_decoder_layers=None.*create"):
        T5Config(num_layers=3)


def test_config_is_frozen_and_hashes():
    config = T5Config.from_dict({"d_model": 8, "architectures": ["T5ForConditionalGeneration"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 16
    wider = dataclasses.replace(config, d_model=16)
    assert (wider.d_model, config.d_model, wider.extra) == (16, 8, config.extra)
    assert hash(config) == hash(T5Config.from_dict(config.to_dict())) and hash(wider) != hash(config)
    width = jax.jit(lambda x, config: x * config.d_model, static_argnums=1)
    assert int(width(1, config)) == 8 and int(width(1, wider)) == 16
