"""LSG-BART checkpoints: the rule table end to end against the original's folders (safetensors and
pytorch_model.bin), PyTorch -> Flax -> PyTorch bit for bit, the original reading our export, BART -> LSG-BART
conversion against lsg-converter's own, and errors for checkpoints of another family."""
import json

import numpy as np
import pytest
from flax import nnx

from jaxport import tree
from jaxport.convert import ConversionError
from jaxport.hf import find_weights, iter_tensors, read_config
from lsg_jax import LSGBartForConditionalGeneration, LSGBartModel
from tests.lsg_reference.harness import VOCAB, requires_reference, run_reference, tiny_config

LSG = dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="norm", num_global_tokens=2)
CONVERT = dict(max_length=1100, block_size=16, sparse_block_size=16, sparsity_type="pooling", num_global_tokens=3)


def folder_tensors(folder) -> dict[str, np.ndarray]:
    return {key: np.array(value) for key, value in iter_tensors(find_weights(folder).files)}


def flax_params(model) -> dict[str, np.ndarray]:
    return {path: np.asarray(value)
            for path, value in tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def assert_same_bits(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key, array in expected.items():
        assert actual[key].dtype == array.dtype and actual[key].shape == array.shape, key
        assert np.array_equal(actual[key].reshape(-1).view(np.uint8), array.reshape(-1).view(np.uint8)), key


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    work = tmp_path_factory.mktemp("lsg_convert")
    f = {name: work / name for name in ("lsg", "lsg_bin", "bart", "converted")}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (2, 40))
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    np.savez(work / "in.npz", input_ids=ids, attention_mask=mask, decoder_input_ids=rng.integers(3, VOCAB, (2, 6)))
    run_reference([
        dict(action="build", folder=str(f["lsg"]), config={**tiny_config(), **LSG}, lsg=True, seed=1),
        dict(action="build", folder=str(f["lsg_bin"]), config={**tiny_config(), **LSG}, lsg=True, seed=1, bin=True),
        dict(action="build", folder=str(f["bart"]), config=tiny_config(max_position_embeddings=512), lsg=False,
             seed=2, tokenizer=True),
        dict(action="convert", src=str(f["bart"]), dst=str(f["converted"]), max_length=CONVERT["max_length"],
             kwargs={k: v for k, v in CONVERT.items() if k != "max_length"}, stride=64),
        dict(action="run", folder=str(f["lsg"]), lsg=True, inputs=str(work / "in.npz"), out=str(work / "lsg.npz")),
    ], work)
    f["work"] = work
    return f


@requires_reference
def test_pytorch_to_flax_to_pytorch_is_bit_identical(folders, tmp_path):
    model = LSGBartForConditionalGeneration.from_pretrained(folders["lsg"])
    model.save_pretrained(tmp_path, pytorch=True)
    expected = folder_tensors(folders["lsg"])
    assert "model.encoder.global_embeddings.weight" in expected
    assert_same_bits(folder_tensors(tmp_path), expected)
    # The original reads our export and computes what it computed from its own folder.
    run_reference([dict(action="run", folder=str(tmp_path), lsg=True, inputs=str(folders["work"] / "in.npz"),
                        out=str(tmp_path / "out.npz"))], tmp_path)
    ours, theirs = np.load(tmp_path / "out.npz"), np.load(folders["work"] / "lsg.npz")
    np.testing.assert_array_equal(ours["logits"], theirs["logits"])


@requires_reference
def test_bin_checkpoint_and_flax_folder(folders, tmp_path):
    from_bin = LSGBartForConditionalGeneration.from_pretrained(folders["lsg_bin"])
    from_safetensors = LSGBartForConditionalGeneration.from_pretrained(folders["lsg"])
    assert_same_bits(flax_params(from_bin), flax_params(from_safetensors))
    from_bin.save_pretrained(tmp_path)
    reloaded = LSGBartForConditionalGeneration.from_pretrained(tmp_path)
    drop_dtype = lambda config: {k: v for k, v in config.to_dict().items() if k != "dtype"}
    assert drop_dtype(reloaded.config) == drop_dtype(from_bin.config)  # save_pretrained records the dtype
    assert_same_bits(flax_params(reloaded), flax_params(from_bin))
    base = LSGBartModel.from_pretrained(folders["lsg"])
    base.save_pretrained(tmp_path / "base", pytorch=True)  # LSGBartModel's own key names: no "model." prefix
    exported = folder_tensors(tmp_path / "base")
    assert "encoder.global_embeddings.weight" in exported and "lm_head.weight" not in exported


@requires_reference
def test_plain_bart_round_trip(folders, tmp_path):
    model = LSGBartForConditionalGeneration.from_pretrained(folders["bart"])
    assert not model.config.lsg
    model.save_pretrained(tmp_path, pytorch=True)
    assert_same_bits(folder_tensors(tmp_path), folder_tensors(folders["bart"]))
    assert "block_size" not in read_config(tmp_path)


@requires_reference
def test_bart_to_lsg_matches_lsg_converter(folders, tmp_path):
    """Through the command line: python -m convert lsg SRC DST --from-bart ..."""
    import convert
    assert convert.main(["lsg", str(folders["bart"]), str(tmp_path), "--from-bart", "--global-positional-stride",
                         "64", *(f"--{key.replace('_', '-')}={value}" for key, value in CONVERT.items())]) == 0
    ours, theirs = folder_tensors(tmp_path), folder_tensors(folders["converted"])
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert theirs["model.encoder.embed_positions.weight"].shape == (CONVERT["max_length"] + 2, 32)
    config, reference_config = read_config(tmp_path), read_config(folders["converted"])
    for key in ("max_position_embeddings", "block_size", "sparse_block_size", "sparsity_factor", "sparsity_type",
                "num_global_tokens", "adaptive", "mask_first_token", "pool_with_global",
                "pass_global_tokens_to_decoder", "lsh_num_pre_rounds", "architectures"):
        assert config[key] == reference_config[key], key
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 1100
    model = LSGBartForConditionalGeneration.from_pretrained(tmp_path)
    assert model.config.lsg and model.encode(np.full((1, 700), 5)).shape == (1, 703, 32)


@requires_reference
def test_checkpoint_of_another_family_names_the_keys(folders, tmp_path):
    # Plain BART weights under an LSG config: the global embeddings are missing.
    config = read_config(folders["bart"])
    (tmp_path / "config.json").write_text(json.dumps({**config, **LSG}))
    (tmp_path / "model.safetensors").symlink_to(folders["bart"] / "model.safetensors")
    with pytest.raises(ConversionError) as caught:
        LSGBartForConditionalGeneration.from_pretrained(tmp_path)
    assert caught.value.missing == ["encoder/global_embeddings/embedding"]
    assert "from model.encoder.global_embeddings.weight" in str(caught.value)


def test_gpt2_checkpoint_is_refused_with_its_keys(tmp_path):
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    gpt2.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**tiny_config(), **LSG}))
    with pytest.raises(ConversionError) as caught:
        LSGBartForConditionalGeneration.from_pretrained(tmp_path)
    assert "transformer.h.0.attn.c_attn.weight" in caught.value.unexpected
    assert "shared/embedding" in caught.value.missing
    assert "from model.shared.weight" in str(caught.value)
