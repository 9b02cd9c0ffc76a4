"""perceiver_jax against transformers' PyTorch PerceiverForMaskedLM / PerceiverForSequenceClassification on random
tiny weights: logits, every config knob of the text models, padded batches, both ways through the converters, and
the errors for bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxport.convert import ConversionError
from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM, PerceiverForSequenceClassification
from tests import helpers

BASE = dict(num_latents=6, d_latents=16, d_model=24, num_blocks=1, num_self_attends_per_block=2,
            num_self_attention_heads=2, num_cross_attention_heads=2, max_position_embeddings=12)
SHAPES = {
    # the block of self-attention layers runs three times with one set of weights
    "shared_blocks": dict(BASE, num_blocks=3, num_cross_attention_heads=4),
    # query/key narrower than values, both widening factors, qk taken from the latents, no query residual
    "qk_v_widened": dict(BASE, qk_channels=8, v_channels=16, num_self_attention_heads=4,
                         self_attention_widening_factor=3, cross_attention_widening_factor=2,
                         cross_attention_shape_for_attention="q", use_query_residual=False, hidden_act="relu"),
    # cross-attention qk/v from the inputs' width (kv), the tanh GELU, more latents than positions
    "wide_inputs": dict(BASE, d_model=32, num_latents=20, num_self_attends_per_block=3, num_blocks=2,
                        hidden_act="gelu_new"),
}
HEADS = {"mlm": (transformers.PerceiverForMaskedLM, PerceiverForMaskedLM),
         "cls": (transformers.PerceiverForSequenceClassification, PerceiverForSequenceClassification)}
LENGTHS = (12, 7, 1)  # the first row fills max_position_embeddings


def build(tmp_path, head: str, **config):
    """(reference PyTorch model, its folder)."""
    reference = helpers.random_torch_perceiver(HEADS[head][0], **config)
    reference.save_pretrained(tmp_path)
    return reference, tmp_path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(head, shape name, num_labels) -> (reference, folder, our model), each built once for the module."""
    cache = {}

    def get(head: str, shape: str, num_labels: int = 2):
        key = (head, shape, num_labels)
        if key not in cache:
            reference, folder = build(tmp_path_factory.mktemp(f"{head}_{shape}"), head, num_labels=num_labels,
                                      **SHAPES[shape])
            cache[key] = reference, folder, HEADS[head][1].from_pretrained(folder)
        return cache[key]
    return get


def batch(lengths=LENGTHS, seed=0):
    ids, mask, _ = helpers.padded_batch(np.random.default_rng(seed), 262, lengths, low=0)
    return ids, mask


def reference_logits(reference, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return reference(inputs=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()


@nnx.jit
def _forward(model, ids, mask, dropout_rng):
    return model(inputs=ids, attention_mask=mask, dropout_rng=dropout_rng).logits


def logits(model, ids, mask, dropout_rng=None) -> np.ndarray:
    """The model's logits, jitted (one compilation instead of one per operation: faster on a busy CPU)."""
    return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask), dropout_rng))


@pytest.mark.parametrize("shape", SHAPES)
def test_masked_lm_logits_match_transformers(shape, built):
    reference, _, model = built("mlm", shape)
    ids, mask = batch()
    ours = logits(model, ids, mask)
    assert ours.shape == (3, 12, 262) and ours.dtype == np.float32
    assert helpers.rel_err(ours, reference_logits(reference, ids, mask)) < 1e-4


def test_masked_lm_decodes_the_input_positions(built):
    """transformers decodes all max_position_embeddings positions whatever the input's length, ours the input's;
    those agree."""
    reference, _, model = built("mlm", "shared_blocks")
    ids, mask = batch((8, 5, 1))
    assert helpers.rel_err(logits(model, ids, mask), reference_logits(reference, ids, mask)[:, :8]) < 1e-4


@pytest.mark.parametrize("shape, num_labels", [*((shape, 3) for shape in SHAPES), ("shared_blocks", 1)])
def test_classifier_logits_match_transformers(shape, num_labels, built):
    """Classification (3 labels) on every shape, regression (1) on one."""
    reference, _, model = built("cls", shape, num_labels)
    assert model.config.num_labels == num_labels
    ids, mask = batch()
    ours = logits(model, ids, mask)
    assert ours.shape == (3, num_labels)
    assert helpers.rel_err(ours, reference_logits(reference, ids, mask)) < 1e-4


def test_padding_is_invisible(built):
    """A row's logits do not depend on what fills its padding, nor on how far it is padded."""
    model = built("cls", "shared_blocks", 3)[2]
    ids, mask = batch()
    other = np.where(mask > 0, ids, 77)
    np.testing.assert_allclose(logits(model, ids, mask), logits(model, other, mask), atol=1e-6)
    np.testing.assert_allclose(logits(model, ids[1:, :7], mask[1:, :7]), logits(model, ids[1:], mask[1:]), atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_pytorch_export_is_bit_identical_and_loads_in_transformers(head, built, tmp_path):
    reference, folder, model = built(head, "qk_v_widened", 3)
    model.save_pretrained(tmp_path / "export", pytorch=True)
    helpers.assert_same_bits(helpers.folder_tensors(tmp_path / "export"), helpers.folder_tensors(folder))
    reloaded = HEADS[head][0].from_pretrained(tmp_path / "export").eval()
    ids, mask = batch()
    np.testing.assert_array_equal(reference_logits(reloaded, ids, mask), reference_logits(reference, ids, mask))


def test_reads_pytorch_model_bin(tmp_path):
    reference = helpers.random_torch_perceiver(transformers.PerceiverForMaskedLM, **SHAPES["shared_blocks"])
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    model = PerceiverForMaskedLM.from_pretrained(tmp_path)
    ids, mask = batch()
    assert helpers.rel_err(logits(model, ids, mask), reference_logits(reference, ids, mask)) < 1e-4


def test_training_dropout_draws_from_the_rng(built):
    model = built("mlm", "shared_blocks")[2]  # attention_probs_dropout_prob: transformers' default, 0.1
    ids, mask = batch()
    evaluation = logits(model, ids, mask)
    first = logits(model, ids, mask, dropout_rng=jax.random.key(1))
    assert not np.allclose(first, evaluation, atol=1e-3)
    np.testing.assert_array_equal(first, logits(model, ids, mask, dropout_rng=jax.random.key(1)))
    assert not np.allclose(first, logits(model, ids, mask, dropout_rng=jax.random.key(2)), atol=1e-3)


def test_inputs_longer_than_the_positions_are_refused(built):
    model = built("mlm", "shared_blocks")[2]
    with pytest.raises(ValueError, match="13 bytes are longer than max_position_embeddings=12"):
        model(inputs=jnp.ones((1, 13), jnp.int32))
    with pytest.raises(ValueError, match="exactly one"):
        model(inputs=jnp.ones((1, 3), jnp.int32), input_ids=jnp.ones((1, 3), jnp.int32))


def test_the_other_heads_checkpoint_is_refused_naming_the_keys(built):
    folder = built("mlm", "shared_blocks")[1]
    with pytest.raises(ConversionError) as refused:
        PerceiverForSequenceClassification.from_pretrained(folder)
    assert "perceiver/decoder/final_layer/kernel" in refused.value.missing
    assert "embedding_decoder.bias" in refused.value.unexpected
    assert "perceiver.decoder.decoding_cross_attention.mlp.dense1.weight" in refused.value.unexpected


def test_config_json_moves_both_ways(tmp_path):
    reference = transformers.PerceiverConfig(num_labels=4, qk_channels=256, v_channels=1280, problem_type="regression")
    reference.save_pretrained(tmp_path)
    config = PerceiverConfig.from_json_file(tmp_path / "config.json")
    assert (config.num_labels, config.qk_channels, config.d_model, config.problem_type) == (4, 256, 768, "regression")
    assert config.id2label == {index: f"LABEL_{index}" for index in range(4)}
    assert config.extra["image_size"] == 56  # the other modalities' keys are kept
    back = transformers.PerceiverConfig.from_dict(config.to_dict())
    assert back.to_dict() == {**reference.to_dict(), "transformers_version": back.transformers_version}
    assert PerceiverConfig.create(num_labels=3).num_labels == 3
    assert dataclasses.replace(config, num_blocks=2).num_blocks == 2


@pytest.mark.parametrize("fields, message", [
    (dict(d_latents=16, v_channels=8), "must give d_latents=16"),
    (dict(d_latents=16, qk_channels=8), "must give d_latents=16"),
    (dict(d_latents=18, num_self_attention_heads=4), "not divisible by num_self_attention_heads=4"),
    (dict(cross_attention_shape_for_attention="k"), "cross_attention_shape_for_attention='k'"),
    (dict(hidden_act="swish"), "hidden_act='swish'"),
])
def test_config_errors_name_the_problem(fields, message):
    with pytest.raises(ValueError, match=message):
        PerceiverConfig.create(**fields)


def test_heads_must_divide_the_channels():
    with pytest.raises(ValueError, match="20 channels are not divisible by 8 heads"):
        nnx.eval_shape(lambda: PerceiverForMaskedLM(PerceiverConfig.create(**dict(BASE, d_model=20)), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="12 channels are not divisible by 8 heads"):
        config = PerceiverConfig.create(**dict(BASE, qk_channels=12, v_channels=16, num_cross_attention_heads=8,
                                               num_self_attention_heads=8))
        nnx.eval_shape(lambda: PerceiverForSequenceClassification(config, rngs=nnx.Rngs(0)))
