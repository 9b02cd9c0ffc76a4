"""T5's rule table against transformers' T5ForConditionalGeneration checkpoints, end to end through
from_pretrained / save_pretrained, and the convert CLI. (Logits parity is tested with the model.)"""
import copy
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

import convert as convert_cli  # noqa: E402
from jaxport import tree  # noqa: E402
from jaxport.convert import ConversionError, flax_to_pytorch, pytorch_to_flax  # noqa: E402
from jaxport.hf import CorruptFileError, find_weights, iter_tensors, read_config  # noqa: E402
from t5_jax.configuration import T5Config  # noqa: E402
from t5_jax.convert import t5_rules  # noqa: E402
from t5_jax.modeling import T5ForConditionalGeneration  # noqa: E402

TINY = dict(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_heads=2, relative_attention_num_buckets=8)
VARIANTS = {
    "relu-tied": dict(TINY, num_layers=2, feed_forward_proj="relu", tie_word_embeddings=True),
    "gated-untied": dict(TINY, num_layers=2, num_decoder_layers=3, feed_forward_proj="gated-gelu",
                         tie_word_embeddings=False),
}


def torch_t5(variant: str, seed: int = 0):
    """A random transformers T5. transformers 5 ties lm_head to the embedding whatever the config says
    (tie_word_embeddings=False only turns off output scaling), so an untied head is set by hand."""
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**VARIANTS[variant])).eval()
    if not VARIANTS[variant]["tie_word_embeddings"]:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model


def numpy_state(model) -> dict[str, np.ndarray]:
    return {key: tensor.numpy() for key, tensor in model.state_dict().items()}


def spec_target(config: T5Config) -> dict[str, jax.ShapeDtypeStruct]:
    """The Flax parameter paths and shapes the model is specified to have, written out independently."""
    d, h, k, ff, v = config.d_model, config.num_heads, config.d_kv, config.d_ff, config.vocab_size
    mlp = {"wi_0": (d, ff), "wi_1": (d, ff)} if config.is_gated_act else {"wi": (d, ff)}
    mlp["wo"] = (ff, d)

    def attention(prefix: str, with_bias: bool) -> dict:
        shapes = {f"{prefix}/{name}/kernel": (d, h, k) for name in ("query", "key", "value")}
        shapes[f"{prefix}/out/kernel"] = (h, k, d)
        if with_bias:
            shapes[f"{prefix}/relative_attention_bias/embedding"] = (config.relative_attention_num_buckets, h)
        return shapes

    shapes = {"shared/embedding": (v, d), "encoder/final_norm/scale": (d,), "decoder/final_norm/scale": (d,)}
    for i in range(config.num_layers):
        layer = f"encoder/layers/{i}"
        shapes |= attention(f"{layer}/attention", i == 0) | {f"{layer}/attention_norm/scale": (d,)}
        shapes |= {f"{layer}/mlp/{name}/kernel": shape for name, shape in mlp.items()}
        shapes[f"{layer}/mlp_norm/scale"] = (d,)
    for i in range(config.num_decoder_layers):
        layer = f"decoder/layers/{i}"
        shapes |= attention(f"{layer}/self_attention", i == 0) | {f"{layer}/self_attention_norm/scale": (d,)}
        shapes |= attention(f"{layer}/cross_attention", False) | {f"{layer}/cross_attention_norm/scale": (d,)}
        shapes |= {f"{layer}/mlp/{name}/kernel": shape for name, shape in mlp.items()}
        shapes[f"{layer}/mlp_norm/scale"] = (d,)
    if not config.tie_word_embeddings:
        shapes["lm_head/kernel"] = (d, v)
    return {path: jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in shapes.items()}


def flax_params(model) -> dict[str, np.ndarray]:
    return {path: np.asarray(value)
            for path, value in tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def folder_tensors(folder) -> dict[str, np.ndarray]:
    return dict(iter_tensors(find_weights(folder).files))


def assert_same_bits(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key, array in expected.items():
        assert actual[key].dtype == array.dtype and actual[key].shape == array.shape, key
        assert np.array_equal(actual[key].reshape(-1).view(np.uint8), array.reshape(-1).view(np.uint8)), key


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_folder(request, tmp_path_factory):
    """(variant, transformers model, folder written by its save_pretrained)."""
    model = torch_t5(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, model, folder


# --- the rule table, without the Flax model ------------------------------------------------------

def test_rules_convert_a_full_state_dict_both_ways(hf_folder):
    variant, model, folder = hf_folder
    config = T5ForConditionalGeneration.folder_config(folder)
    state = numpy_state(model)  # every key state_dict() has, tied duplicates included
    flat = pytorch_to_flax(state.items(), spec_target(config), t5_rules(config))
    assert flat["shared/embedding"].shape == (50, 16)
    # Export writes exactly what transformers' save_pretrained writes, bit for bit.
    assert_same_bits(flax_to_pytorch(flat, t5_rules(config)), folder_tensors(folder))


def test_state_dict_keys_of_transformers(hf_folder):
    variant, model, folder = hf_folder
    keys = set(model.state_dict())
    assert {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"} <= keys
    saved = set(folder_tensors(folder))
    tied_copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    tied_copies |= {"lm_head.weight"} if variant == "relu-tied" else set()
    assert saved == keys - tied_copies


def test_spec_matches_the_model(hf_folder):
    _, _, folder = hf_folder
    config = T5ForConditionalGeneration.folder_config(folder)
    abstract = nnx.eval_shape(lambda: T5ForConditionalGeneration(config, rngs=nnx.Rngs(0)))
    model_shapes = {path: value.shape
                    for path, value in tree.flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param))).items()}
    assert model_shapes == {path: spec.shape for path, spec in spec_target(config).items()}


# --- end to end through from_pretrained / save_pretrained ----------------------------------------

def test_pytorch_to_flax_to_pytorch_is_bit_identical(hf_folder, tmp_path):
    _, model, folder = hf_folder
    flax_model = T5ForConditionalGeneration.from_pretrained(folder)
    flax_model.save_pretrained(tmp_path, pytorch=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_bits(folder_tensors(tmp_path), folder_tensors(folder))

    reloaded, info = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    assert reloaded.config.scale_decoder_outputs == model.config.scale_decoder_outputs


def test_flax_folder_round_trip(hf_folder, tmp_path):
    _, _, folder = hf_folder
    flax_model = T5ForConditionalGeneration.from_pretrained(folder)
    flax_model.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "flax_model.safetensors"]
    reloaded = T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config == flax_model.config
    assert_same_bits(flax_params(reloaded), flax_params(flax_model))


def test_legacy_bin_with_every_tied_copy(hf_folder, tmp_path):
    """Older pytorch_model.bin files: the whole state_dict, tied copies sharing storage, plus the unused
    cross-attention bias early transformers versions saved."""
    _, model, folder = hf_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    state = dict(model.state_dict())
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 2)
    torch.save(state, tmp_path / "pytorch_model.bin")
    expected = flax_params(T5ForConditionalGeneration.from_pretrained(folder))
    assert_same_bits(flax_params(T5ForConditionalGeneration.from_pretrained(tmp_path)), expected)


def test_sharded_safetensors(tmp_path):
    model = torch_t5("gated-untied")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(find_weights(tmp_path).files) > 1
    flax_model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    flax_model.save_pretrained(tmp_path / "back", pytorch=True, max_shard_size="20KB")
    assert len(find_weights(tmp_path / "back").files) > 1
    assert_same_bits(folder_tensors(tmp_path / "back"), folder_tensors(tmp_path))


def test_bf16_checkpoint(tmp_path):
    model = copy.deepcopy(torch_t5("relu-tied")).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "pt")
    flax_model = T5ForConditionalGeneration.from_pretrained(tmp_path / "pt", param_dtype=jnp.bfloat16)
    assert {array.dtype for array in flax_params(flax_model).values()} == {jnp.dtype(jnp.bfloat16)}
    flax_model.save_pretrained(tmp_path / "back", pytorch=True)
    assert_same_bits(folder_tensors(tmp_path / "back"), folder_tensors(tmp_path / "pt"))
    assert read_config(tmp_path / "back")["dtype"] == "bfloat16"


# --- errors --------------------------------------------------------------------------------------

def test_checkpoint_of_another_config_lists_the_misshapen_keys(hf_folder):
    variant, _, folder = hf_folder
    with pytest.raises(ConversionError) as caught:
        T5ForConditionalGeneration.from_pretrained(folder, d_ff=24)
    mlp_inputs = ["wi"] if variant == "relu-tied" else ["wi_0", "wi_1"]
    expected = {f"encoder.block.{i}.layer.1.DenseReluDense.{name}.weight" for i in range(2) for name in mlp_inputs}
    assert expected <= set(caught.value.mismatched)
    assert not caught.value.missing and not caught.value.unexpected
    assert "checkpoint (32, 16), model expects (24, 16)" in str(caught.value)


def test_checkpoint_of_another_family_lists_unexpected_and_missing(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    gpt2.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(VARIANTS["relu-tied"]))
    with pytest.raises(ConversionError) as caught:
        T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert "transformer.h.0.attn.c_attn.weight" in caught.value.unexpected
    assert "shared/embedding" in caught.value.missing
    assert "from shared.weight" in str(caught.value)


def test_an_untied_config_with_a_tied_checkpoint_is_reported(tmp_path):
    torch_t5("relu-tied").save_pretrained(tmp_path)
    with pytest.raises(ConversionError) as caught:
        T5ForConditionalGeneration.from_pretrained(tmp_path, tie_word_embeddings=False)
    assert caught.value.missing == ["lm_head/kernel"]


def test_corrupt_weights_name_the_file(tmp_path):
    torch_t5("relu-tied").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=str(weights)):
        T5ForConditionalGeneration.from_pretrained(tmp_path)


# --- the convert CLI -----------------------------------------------------------------------------

def test_cli_converts_to_flax_and_back(hf_folder, tmp_path):
    _, _, folder = hf_folder
    assert convert_cli.main(["t5", str(folder), str(tmp_path / "flax")]) == 0
    assert find_weights(tmp_path / "flax").format == "flax"
    assert convert_cli.main(["t5", str(tmp_path / "flax"), str(tmp_path / "pt"), "--to-pytorch"]) == 0
    assert_same_bits(folder_tensors(tmp_path / "pt"), folder_tensors(folder))


def test_cli_dtype_and_sharding(tmp_path):
    torch_t5("relu-tied").save_pretrained(tmp_path / "src")
    convert_cli.main(["t5", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "bfloat16",
                      "--max-shard-size", "20KB"])
    weights = find_weights(tmp_path / "dst")
    assert weights.format == "flax" and len(weights.files) > 1
    assert {array.dtype for _, array in iter_tensors(weights.files)} == {jnp.dtype(jnp.bfloat16)}


def test_cli_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "convert", "--help"], capture_output=True, text=True, check=True)
    families = re.search(r"\{([a-z0-9_,]*),?\}\s+src", result.stdout)
    assert "--to-pytorch" in result.stdout and "t5" in families.group(1).split(",")
    result = subprocess.run([sys.executable, "-m", "convert", "nope", "a", "b"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
