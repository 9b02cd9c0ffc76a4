"""Backpack-GPT2's and GPT-2's rule tables end to end: the folders the authors' and transformers' classes write (both
model types, with and without the tied copies, .bin and .safetensors), export to the original's state dict, the
convert CLI, and the checkpoints that are refused."""
import json

import numpy as np
import pytest
import safetensors.torch
import torch

import convert as convert_cli
from backpack_jax import BackpackGPT2LMHeadModel, BackpackGPT2Model, GPT2LMHeadModel
from jaxport.convert import ConversionError
from tests import helpers

SENSES = dict(num_senses=3, sense_intermediate_scale=2)


@pytest.fixture(scope="module")
def reference():
    return helpers.random_backpack(seed=3, **SENSES)


@pytest.fixture(scope="module")
def folder(reference, tmp_path_factory):
    return helpers.save_backpack(reference, tmp_path_factory.mktemp("backpack"))


@pytest.fixture(scope="module")
def model(folder):
    return BackpackGPT2LMHeadModel.from_pretrained(folder)


def torch_state(model) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy() for key, value in model.state_dict().items()}


def test_export_is_the_originals_state_dict_bit_for_bit(model, reference, tmp_path):
    """Every key of the original's state dict (the tied copies included), float32, the same bits."""
    model.save_pretrained(tmp_path, pytorch=True)
    exported = helpers.folder_tensors(tmp_path)
    helpers.assert_same_bits(exported, torch_state(reference))
    assert all(array.dtype == np.float32 for array in exported.values())


def test_export_loads_into_the_original_class(model, reference, tmp_path):
    """The export, loaded by the original's class (strict) from its config.json, gives the same logits, bit for
    bit."""
    model.save_pretrained(tmp_path, pytorch=True)
    module = helpers.backpack_reference()
    config = json.loads((tmp_path / "config.json").read_text())
    reloaded = module.BackpackGPT2LMHeadModel(module.BackpackGPT2Config(**config)).eval()
    reloaded.load_state_dict(safetensors.torch.load_file(tmp_path / "model.safetensors"), strict=True)
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, helpers.GPT2_TINY["vocab_size"], (2, 7)))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, reference(ids).logits)
    assert reloaded.lm_head.weight is reloaded.backpack.word_embeddings.weight  # still tied


@pytest.mark.parametrize("model_type", ["backpack-gpt2", "gpt2"])
@pytest.mark.parametrize("aliases", [True, False], ids=["with-tied-copies", "without"])
@pytest.mark.parametrize("bin_file", [False, True], ids=["safetensors", "bin"])
def test_every_folder_layout_loads_the_same_weights(reference, model, model_type, aliases, bin_file, tmp_path):
    folder = helpers.save_backpack(reference, tmp_path, model_type=model_type, aliases=aliases, bin_file=bin_file)
    loaded = BackpackGPT2LMHeadModel.from_pretrained(folder)
    helpers.assert_same_bits(helpers.flax_params(loaded), helpers.flax_params(model))
    assert loaded.config.model_type == model_type
    loaded.save_pretrained(tmp_path / "out", pytorch=True)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == model_type


def test_only_the_word_embedding_copy_stands_in(reference, model, tmp_path):
    """The canonical wte/wpe keys missing, their copies present: the copies are read."""
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()
             if k not in ("backpack.gpt2_model.wte.weight", "backpack.gpt2_model.wpe.weight")}
    helpers.save_backpack(reference, tmp_path)
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    helpers.assert_same_bits(helpers.flax_params(BackpackGPT2LMHeadModel.from_pretrained(tmp_path)),
                             helpers.flax_params(model))


def test_base_and_head_models_read_each_others_checkpoints(reference, model, folder, tmp_path):
    base = BackpackGPT2Model.from_pretrained(folder)
    helpers.assert_same_bits(helpers.flax_params(base), helpers.flax_params(model.backpack))
    base.save_pretrained(tmp_path, pytorch=True)
    exported = helpers.folder_tensors(tmp_path)
    expected = {k: v for k, v in torch_state(reference.backpack).items()}
    helpers.assert_same_bits(exported, expected)  # the original BackpackGPT2Model's keys: no prefix, no lm_head
    helpers.assert_same_bits(helpers.flax_params(BackpackGPT2LMHeadModel.from_pretrained(tmp_path)),
                             helpers.flax_params(model))


def test_old_transformers_mask_buffers_are_ignored(reference, model, tmp_path):
    helpers.save_backpack(reference, tmp_path)
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    for i in range(helpers.GPT2_TINY["n_layer"]):
        state[f"backpack.gpt2_model.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 20, 20, dtype=torch.bool))
        state[f"backpack.gpt2_model.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    helpers.assert_same_bits(helpers.flax_params(BackpackGPT2LMHeadModel.from_pretrained(tmp_path)),
                             helpers.flax_params(model))


# ---------------------------------------------------------------------------------------------------------------
# Refused


def test_missing_keys_are_named_in_one_error(reference, tmp_path):
    helpers.save_backpack(reference, tmp_path)
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()
             if k not in ("backpack.sense_network.ln.weight", "backpack.gpt2_model.h.1.mlp.c_fc.bias")}
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"2 missing") as error:
        BackpackGPT2LMHeadModel.from_pretrained(tmp_path)
    assert error.value.missing == ["backpack/gpt2_model/h/1/mlp/c_fc/bias", "backpack/sense_network/ln/scale"]
    assert "from backpack.sense_network.ln.weight" in str(error.value)


def test_an_untied_output_layer_is_refused(reference, tmp_path):
    """The original always ties lm_head to the word embedding: a checkpoint whose copy differs is inconsistent."""
    helpers.save_backpack(reference, tmp_path)
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"(?s)duplicates that differ.*lm_head\.weight: differs from "
                                              r"backpack\.gpt2_model\.wte\.weight"):
        BackpackGPT2LMHeadModel.from_pretrained(tmp_path)


def test_a_gpt2_checkpoint_is_not_a_backpack(tmp_path):
    helpers.random_gpt2(seed=0).save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match=r"(?s)missing.*backpack/sense_network/ln/scale: from "
                                              r"backpack\.sense_network\.ln\.weight.*unexpected.*transformer\.wte"):
        BackpackGPT2LMHeadModel.from_pretrained(tmp_path)


def test_a_backpack_checkpoint_is_not_gpt2(folder):
    """Its model_type may well say gpt2 (the authors' config class writes that): the keys tell."""
    with pytest.raises(ConversionError, match=r"(?s)missing.*transformer/wpe/embedding: from transformer\.wpe\."
                                              r"weight.*unexpected.*backpack\.gpt2_model\.wte\.weight"):
        GPT2LMHeadModel.from_pretrained(helpers.save_backpack(helpers.random_backpack(), folder.parent / "as-gpt2",
                                                              model_type="gpt2"))


# ---------------------------------------------------------------------------------------------------------------
# GPT-2 and the CLI


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gpt2_export_is_what_transformers_writes(tied, tmp_path):
    reference = helpers.random_gpt2(seed=2, tie_word_embeddings=tied)
    if not tied:
        reference.lm_head.weight = torch.nn.Parameter(torch.randn_like(reference.lm_head.weight))
    reference.save_pretrained(tmp_path / "hf")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert model.config.tie_word_embeddings == tied
    model.save_pretrained(tmp_path / "out", pytorch=True)
    helpers.assert_same_bits(helpers.folder_tensors(tmp_path / "out"), helpers.folder_tensors(tmp_path / "hf"))


@pytest.mark.parametrize("family", ["backpack", "gpt2"])
def test_cli_converts_to_flax_and_back(family, folder, tmp_path):
    source = folder if family == "backpack" else tmp_path / "hf"
    if family == "gpt2":
        helpers.random_gpt2(seed=4).save_pretrained(source)
    assert convert_cli.main([family, str(source), str(tmp_path / "flax")]) == 0
    assert (tmp_path / "flax" / "flax_model.safetensors").is_file()
    assert convert_cli.main([family, str(tmp_path / "flax"), str(tmp_path / "pt"), "--to-pytorch"]) == 0
    helpers.assert_same_bits(helpers.folder_tensors(tmp_path / "pt"), helpers.folder_tensors(source))
