"""SIP's rule tables and configs against folders in the original's Hub layout, both directions, and the
pre-training -> fine-tuning conversion (prefix_init_tensor = the FST encoder's output on padded FSTs)."""
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert
from jaxport.convert import ConversionError
from jaxport.hf import read_config
from sip_jax.configuration import SIPFinetuningConfig, SIPPreTrainingConfig
from sip_jax.convert import finetuning_from_pretraining
from sip_jax.modeling import SIPFinetuningModel, SIPPreTrainingModel
from tests.helpers import (
    FST_KWARGS,
    PREFIX_KWARGS,
    TorchSIPFinetuning,
    TorchSIPPretraining,
    flax_params,
    folder_tensors,
    original_prefix_init,
    random_fsts,
    same_bits,
    save_original_layout,
    stand_in_fst_tokenizer,
)
from tests.helpers import SIP_T5_KWARGS as T5_KWARGS


def make_reference(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "finetune":
        return TorchSIPFinetuning(PREFIX_KWARGS).eval(), "sip_finetune", PREFIX_KWARGS, SIPFinetuningModel
    fst = FST_KWARGS[kind]
    return TorchSIPPretraining(fst).eval(), "sip_pretrain", fst, SIPPreTrainingModel


@pytest.mark.parametrize("kind", ["finetune", "linear", "mlp"])
@pytest.mark.parametrize("drop_duplicates", [False, True])
def test_round_trips_are_bit_identical(tmp_path, kind, drop_duplicates):
    reference, model_type, fields, model_class = make_reference(kind)
    source = save_original_layout(reference, tmp_path / "src", model_type, fields, drop_duplicates=drop_duplicates)
    original = folder_tensors(source)
    model = model_class.from_pretrained(source)

    model.save_pretrained(tmp_path / "pt", pytorch=True)  # PyTorch -> Flax -> PyTorch
    exported = folder_tensors(tmp_path / "pt")
    duplicates = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}  # tied copies
    assert set(exported) == set(original) - duplicates
    assert all(same_bits(exported[key], original[key]) for key in exported)

    model.save_pretrained(tmp_path / "flax")  # Flax -> Flax, and Flax -> PyTorch
    again = model_class.from_pretrained(tmp_path / "flax")
    before, after = flax_params(model), flax_params(again)
    assert before.keys() == after.keys() and all(same_bits(before[k], after[k]) for k in before)
    again.save_pretrained(tmp_path / "pt2", pytorch=True)
    second = folder_tensors(tmp_path / "pt2")
    assert second.keys() == exported.keys() and all(same_bits(second[k], exported[k]) for k in second)

    # The exported file loads into the PyTorch model (only the tied copies of the embedding are absent).
    fresh, *_ = make_reference(kind, seed=1)
    missing, unexpected = fresh.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in exported.items()},
                                                strict=False)
    assert not unexpected and set(missing) <= duplicates
    for key, value in reference.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_format_conversion_keeps_an_untrained_prefix_nan(tmp_path):
    """As on the Hub (namednil/sip-d4), a NaN prefix means "initialise me when loading": a conversion keeps it."""
    reference, model_type, fields, _ = make_reference("finetune")
    with torch.no_grad():
        reference.prefix_embedding.fill_(float("nan"))
    source = save_original_layout(reference, tmp_path / "src", model_type, fields, drop_duplicates=True)
    SIPFinetuningModel.from_pretrained(source, initialize_prefix=False).save_pretrained(tmp_path / "pt", pytorch=True)
    original, exported = folder_tensors(source), folder_tensors(tmp_path / "pt")
    assert exported.keys() == original.keys() and all(same_bits(exported[k], original[k]) for k in exported)
    assert SIPFinetuningModel.from_pretrained(tmp_path / "pt").prefix_is_initialized()


def test_config_json_keeps_the_original_layout(tmp_path):
    reference, model_type, fields, _ = make_reference("finetune")
    source = save_original_layout(reference, tmp_path / "src", model_type, fields)
    SIPFinetuningModel.from_pretrained(source).save_pretrained(tmp_path / "out", pytorch=True)
    written = read_config(tmp_path / "out")
    assert written["model_type"] == "sip_finetune"
    assert written["architectures"] == ["SIPFinetuningModel"]  # unknown keys travel along
    for name, value in {**PREFIX_KWARGS, "d_model": 32, "num_layers": 2, "vocab_size": 64}.items():
        assert written[name] == value, name
    config = SIPFinetuningConfig.from_dict(written)
    assert config.to_dict() == SIPFinetuningConfig.from_dict(config.to_dict()).to_dict()


def test_config_defaults_are_the_originals():
    pre, fine = SIPPreTrainingConfig.create(), SIPFinetuningConfig.create()
    assert (pre.num_states, pre.fst_tokenizer_vocab_size, pre.state_embedding_dim, pre.token_embedding_dim,
            pre.mlp_hidden_dim, pre.final_state_embedding_dim, pre.num_final_state_info) == (16, 308, 64, 256, None,
                                                                                            0, 3)
    assert (fine.num_examples, fine.prefix_length, fine.random_selection, fine.prefix_max_init_length,
            fine.num_precomputed_examples) == (32, 50, True, 70, 400)
    assert pre.to_dict()["model_type"] == "sip_pretrain" and fine.to_dict()["model_type"] == "sip_finetune"


def test_nested_t5_config_is_read_and_written_flat():
    config = SIPPreTrainingConfig.from_dict({"model_type": "sip_pretrain", "num_states": 9,
                                             "t5_config": {"model_type": "t5", "d_model": 48, "num_layers": 3}})
    assert (config.d_model, config.num_layers, config.num_states) == (48, 3, 9)
    assert "t5_config" not in config.to_dict() and config.to_dict()["d_model"] == 48
    assert config.t5_config().model_type == "t5" and config.t5_config().d_model == 48


def test_the_wrong_model_type_is_named(tmp_path):
    reference, model_type, fields, _ = make_reference("linear")
    source = save_original_layout(reference, tmp_path, model_type, fields)
    with pytest.raises(ValueError, match="model_type 'sip_finetune', got 'sip_pretrain'") as caught:
        SIPFinetuningModel.from_pretrained(source)
    # The command it names exists: the convert CLI takes it.
    command = re.search(r"`python -m convert ([^`]*)`", str(caught.value)).group(1).split()
    args = convert.parse_args([str(source) if arg == "SRC" else arg for arg in command])
    assert (args.family, args.from_pretraining) == ("sip_finetune", True)


def test_a_missing_fst_encoder_weight_is_named(tmp_path):
    reference, model_type, fields, _ = make_reference("linear")
    del reference.input_layer.bias
    reference.input_layer.bias = None
    source = save_original_layout(reference, tmp_path, model_type, fields)
    with pytest.raises(ConversionError, match="fst_encoder/input_layer/bias.*from input_layer.bias"):
        SIPPreTrainingModel.from_pretrained(source)


def original_batch_fsts(reps, num_states, max_len):
    """The original's padding (sip/data_loading.py:81-93), written out here: pad state at both ends, zeros."""
    out = np.zeros((len(reps), max_len, reps[0].shape[1]), np.int64)
    out[:, :, 0] = out[:, :, 3] = num_states - 1
    for i, rep in enumerate(reps):
        out[i, :min(len(rep), max_len)] = rep[:max_len]
    return out


def test_pretraining_to_finetuning_conversion(tmp_path):
    reference, model_type, fst, _ = make_reference("linear")
    pre = SIPPreTrainingModel.from_pretrained(save_original_layout(reference, tmp_path / "pre", model_type, fst))
    rng = np.random.default_rng(0)
    lengths = [3, 9, 1, 7, 12, 5]  # some longer than prefix_max_init_length=7: cut, as the original's max_len
    reps = [random_fsts(rng, fst, [n])[0] for n in lengths]
    finetuning = finetuning_from_pretraining(pre, reps, num_examples=3, prefix_length=5, random_selection=False,
                                             prefix_max_init_length=7, num_precomputed_examples=6)
    with torch.no_grad():
        expected = reference.encode_fst(torch.as_tensor(original_batch_fsts(reps, fst["num_states"], 7))).numpy()
    stored = np.asarray(finetuning.prefix_init_tensor[...])
    assert stored.shape == (6, 7, T5_KWARGS["d_model"])
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
    assert not finetuning.prefix_is_initialized()  # left NaN, as on the Hub: from_pretrained initialises it
    pre_t5, fine_t5 = flax_params(pre.model), flax_params(finetuning.model)
    assert pre_t5.keys() == fine_t5.keys() and all(same_bits(pre_t5[k], fine_t5[k]) for k in pre_t5)

    finetuning.save_pretrained(tmp_path / "ft", pytorch=True)
    config = read_config(tmp_path / "ft")
    assert config["model_type"] == "sip_finetune" and "num_states" not in config
    loaded = SIPFinetuningModel.from_pretrained(tmp_path / "ft")
    np.testing.assert_array_equal(
        np.asarray(loaded.prefix_embedding[...]),
        original_prefix_init(torch.as_tensor(stored.copy()), 3, 5).numpy())


def test_convert_command_samples_and_encodes_fsts(tmp_path):
    pytest.importorskip("pynini")
    tokenizer, vocab_size = stand_in_fst_tokenizer(tmp_path / "fst_tokenizer.json")
    torch.manual_seed(0)
    fst = dict(FST_KWARGS["linear"], num_states=15, fst_tokenizer_vocab_size=vocab_size)
    reference = TorchSIPPretraining(fst).eval()
    save_original_layout(reference, tmp_path / "pre", "sip_pretrain", fst)
    convert.main(["sip_finetune", str(tmp_path / "pre"), str(tmp_path / "ft"), "--from-pretraining", "--to-pytorch",
                  "--num-precomputed-examples", "3", "--prefix-max-init-length", "120", "--num-examples", "2",
                  "--prefix-length", "4", "--fst-tokenizer", str(tokenizer), "--fst-seed", "5"])
    tensors = folder_tensors(tmp_path / "ft")
    init = tensors["prefix_init_tensor"]
    assert init.shape == (3, 120, 32)  # at most 4 states x 25 letters = 100 transitions
    assert np.isfinite(init).all()
    assert np.isnan(tensors["prefix_embedding"]).all()
    # Every row is the encoder's output for some FST: rows past an FST's length are the padding transition's.
    pad = reference.encode_fst(torch.tensor([[[14, 0, 0, 14, 0]]])).detach().numpy()[0, 0]
    assert np.allclose(init[:, -1], pad, atol=1e-5)
    model = SIPFinetuningModel.from_pretrained(tmp_path / "ft", prefix_init_rng=jax.random.key(0))
    assert model.prefix_embedding[...].shape == (1, 4, 32) and bool(jnp.isfinite(model.prefix_embedding[...]).all())


def test_convert_command_draws_fsts_as_a_pretraining_config_does(tmp_path):
    """--fst-config: FSTs from that config's sampler (the tiny one: 3-6 lower-case letters, at most 4 x 6 = 24
    transitions), encoded with its FST tokenizer (the built-in one)."""
    pytest.importorskip("pynini")
    from sip_jax.fst.encoding import FSTTokenizer
    vocab_size = FSTTokenizer.builtin().vocab_size
    torch.manual_seed(0)
    fst = dict(FST_KWARGS["linear"], num_states=15, fst_tokenizer_vocab_size=vocab_size)
    reference = TorchSIPPretraining(fst).eval()
    save_original_layout(reference, tmp_path / "pre", "sip_pretrain", fst)
    convert.main(["sip_finetune", str(tmp_path / "pre"), str(tmp_path / "ft"), "--from-pretraining",
                  "--num-precomputed-examples", "6", "--prefix-max-init-length", "30", "--num-examples", "2",
                  "--prefix-length", "4",
                  "--fst-config", str(Path(__file__).parents[1] / "configs" / "sip_pretrain.py")])
    init = folder_tensors(tmp_path / "ft")["prefix_init_tensor"]
    pad = reference.encode_fst(torch.tensor([[[14, 0, 0, 14, 0]]])).detach().numpy()[0, 0]
    # No FST of the tiny sampler has more than 24 transitions: rows 24.. are all the padding transition's.
    assert np.allclose(init[:, 24:], pad, atol=1e-5) and not np.allclose(init[:, 0], pad, atol=1e-5)
