"""LSG-BART checkpoints: the rule table end to end against the original's folders (safetensors and
pytorch_model.bin), PyTorch -> Flax -> PyTorch bit for bit, the original reading our export, BART -> LSG-BART
conversion against lsg-converter's own (random global embeddings, keeping the first global token, resizing an
LSG-BART folder), and errors for checkpoints of another family or options that do not fit the source."""
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
CONVERT_FLAGS = [f"--{key.replace('_', '-')}={value}" for key, value in CONVERT.items()]
CONVERT_KWARGS = {k: v for k, v in CONVERT.items() if k != "max_length"}
GLOBALS = "model.encoder.global_embeddings.weight"
SEED = 7
# (max length, LSG fields changed on the way) of the resized copies of the converted folder
RESIZES = {"longer": (2500, {}), "shorter": (600, dict(num_global_tokens=5, block_size=32))}


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
    f = {name: work / name for name in ("lsg", "lsg_bin", "bart", "converted", "random", "lsg_tokenizer",
                                        "keep_first", *(f"resized_{name}" for name in RESIZES))}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (2, 40))
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    np.savez(work / "in.npz", input_ids=ids, attention_mask=mask, decoder_input_ids=rng.integers(3, VOCAB, (2, 6)))
    # The standard normals of random_global_init: bart_to_lsg's first draw from default_rng(seed), given to the
    # original in place of torch's.
    np.savez(work / "eps.npz", eps=np.random.default_rng(SEED).standard_normal((512, 32)))
    resizes = [dict(action="convert", src=str(f["converted"]), dst=str(f[f"resized_{name}"]), max_length=length,
                    kwargs=changed, options=dict(resize_lsg=True)) for name, (length, changed) in RESIZES.items()]
    run_reference([
        dict(action="build", folder=str(f["lsg"]), config={**tiny_config(), **LSG}, lsg=True, seed=1),
        dict(action="build", folder=str(f["lsg_bin"]), config={**tiny_config(), **LSG}, lsg=True, seed=1, bin=True),
        dict(action="build", folder=str(f["bart"]), config=tiny_config(max_position_embeddings=512), lsg=False,
             seed=2, tokenizer=True),
        dict(action="convert", src=str(f["bart"]), dst=str(f["converted"]), max_length=CONVERT["max_length"],
             kwargs=CONVERT_KWARGS, stride=64),
        dict(action="convert", src=str(f["bart"]), dst=str(f["random"]), max_length=CONVERT["max_length"],
             kwargs=CONVERT_KWARGS, options=dict(random_global_init=True), normals=str(work / "eps.npz")),
        # An LSG-BART folder whose global embeddings are random, not built from its positions: keeping the
        # first one shows. 1024 positions, so that the global positions need no random fill.
        dict(action="build", folder=str(f["lsg_tokenizer"]), config={**tiny_config(max_position_embeddings=1024),
             **LSG}, lsg=True, seed=3, tokenizer=True),
        dict(action="convert", src=str(f["lsg_tokenizer"]), dst=str(f["keep_first"]), max_length=1500,
             options=dict(keep_first_global_token=True)),
        *resizes,
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


def convert_cli(src, dst, *flags) -> dict[str, np.ndarray]:
    import convert
    assert convert.main(["lsg", str(src), str(dst), *flags]) == 0
    return folder_tensors(dst)


def assert_same_tensors(ours: dict, theirs: dict, skip: tuple = ()):
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        if key not in skip:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def assert_same_config(ours, theirs):
    config, reference_config = read_config(ours), read_config(theirs)
    for key in ("max_position_embeddings", "block_size", "sparse_block_size", "sparsity_factor", "sparsity_type",
                "num_global_tokens", "adaptive", "mask_first_token", "pool_with_global",
                "pass_global_tokens_to_decoder", "lsh_num_pre_rounds", "architectures"):
        assert config[key] == reference_config[key], key
    assert (json.loads((ours / "tokenizer_config.json").read_text())["model_max_length"]
            == config["max_position_embeddings"])


@requires_reference
def test_bart_to_lsg_matches_lsg_converter(folders, tmp_path):
    """Through the command line: python -m convert lsg SRC DST --from-bart ..."""
    ours = convert_cli(folders["bart"], tmp_path, "--from-bart", "--global-positional-stride", "64", *CONVERT_FLAGS)
    theirs = folder_tensors(folders["converted"])
    assert_same_tensors(ours, theirs)
    assert theirs["model.encoder.embed_positions.weight"].shape == (CONVERT["max_length"] + 2, 32)
    assert_same_config(tmp_path, folders["converted"])
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 1100
    model = LSGBartForConditionalGeneration.from_pretrained(tmp_path)
    assert model.config.lsg and model.encode(np.full((1, 700), 5)).shape == (1, 703, 32)


@requires_reference
def test_random_global_init_matches_lsg_converter(folders, tmp_path):
    """--random-global-init: the original drew its global embeddings from the normal fitted to the token
    embeddings with the same standard normals (fixture), so ours match up to float32 vs float64 arithmetic."""
    ours = convert_cli(folders["bart"], tmp_path / "a", "--from-bart", "--random-global-init", f"--seed={SEED}",
                       *CONVERT_FLAGS)
    theirs = folder_tensors(folders["random"])
    assert_same_tensors(ours, theirs, skip=(GLOBALS,))
    np.testing.assert_array_equal(ours[GLOBALS][0], theirs[GLOBALS][0])  # BOS + position: nothing drawn
    np.testing.assert_allclose(ours[GLOBALS], theirs[GLOBALS], rtol=1e-6, atol=1e-6)
    not_random = folder_tensors(folders["converted"])[GLOBALS]  # positions + the mask token's embedding
    np.testing.assert_array_equal(ours[GLOBALS][0], not_random[0])
    assert np.abs(ours[GLOBALS][1:] - not_random[1:]).mean() > 0.1
    assert_same_config(tmp_path / "a", folders["random"])
    # Another seed, other draws; the first row is not drawn.
    from lsg_jax.convert import bart_to_lsg
    bart_to_lsg(folders["bart"], tmp_path / "b", random_global_init=True, seed=SEED + 1, **CONVERT)
    other = folder_tensors(tmp_path / "b")[GLOBALS]
    np.testing.assert_array_equal(other[0], ours[GLOBALS][0])
    assert np.abs(other[1:] - ours[GLOBALS][1:]).mean() > 0.1


@requires_reference
def test_keep_first_global_token_matches_lsg_converter(folders, tmp_path):
    """An LSG-BART source, --keep-first-global-token: global embeddings rebuilt from its own positions except
    the first, kept; positions extended; the source's LSG fields kept."""
    ours = convert_cli(folders["lsg_tokenizer"], tmp_path, "--from-bart", "--keep-first-global-token",
                       "--max-length=1500")
    assert_same_tensors(ours, folder_tensors(folders["keep_first"]))
    source = folder_tensors(folders["lsg_tokenizer"])[GLOBALS]
    np.testing.assert_array_equal(ours[GLOBALS][0], source[0])
    assert np.abs(ours[GLOBALS][1:] - source[1:]).mean() > 0.1
    assert ours["model.encoder.embed_positions.weight"].shape == (1502, 32)
    assert_same_config(tmp_path, folders["keep_first"])
    assert read_config(tmp_path)["block_size"] == LSG["block_size"]


@requires_reference
@pytest.mark.parametrize("name", sorted(RESIZES))
def test_resize_matches_lsg_converter(folders, tmp_path, name):
    """--resize an LSG-BART folder: position tables extended or cut, global embeddings untouched."""
    length, changed = RESIZES[name]
    ours = convert_cli(folders["converted"], tmp_path, "--resize", f"--max-length={length}",
                       *(f"--{key.replace('_', '-')}={value}" for key, value in changed.items()))
    assert_same_tensors(ours, folder_tensors(folders[f"resized_{name}"]))
    source = folder_tensors(folders["converted"])
    np.testing.assert_array_equal(ours[GLOBALS], source[GLOBALS])
    kept = min(length, CONVERT["max_length"]) + 2  # rows that keep their place
    for side in ("encoder", "decoder"):
        positions = ours[f"model.{side}.embed_positions.weight"]
        assert positions.shape == (length + 2, 32)
        np.testing.assert_array_equal(positions[:kept], source[f"model.{side}.embed_positions.weight"][:kept])
    assert_same_config(tmp_path, folders[f"resized_{name}"])
    config = read_config(tmp_path)
    assert config["sparsity_type"] == CONVERT["sparsity_type"]  # kept from the source
    assert config["num_global_tokens"] == changed.get("num_global_tokens", CONVERT["num_global_tokens"])
    model = LSGBartForConditionalGeneration.from_pretrained(tmp_path)
    assert model.encode(np.full((1, length - 40), 5)).shape[1] == length - 40 + config["num_global_tokens"]


@requires_reference
def test_options_that_do_not_fit_the_source_are_refused(folders, tmp_path):
    import convert
    from lsg_jax.convert import bart_to_lsg
    bart, lsg = folders["bart"], folders["converted"]
    with pytest.raises(ValueError, match="is plain BART .*convert it without that option"):
        convert.main(["lsg", str(bart), str(tmp_path / "out"), "--resize"])
    with pytest.raises(ValueError, match="keep_first_global_token applies to an LSG-BART folder"):
        bart_to_lsg(bart, tmp_path / "out", keep_first_global_token=True)
    with pytest.raises(ValueError, match=r"is already LSG-BART \(block_size=16, num_global_tokens=3.*--resize"):
        convert.main(["lsg", str(lsg), str(tmp_path / "out"), "--from-bart"])
    with pytest.raises(ValueError, match="resize keeps every global embedding"):
        bart_to_lsg(lsg, tmp_path / "out", resize=True, random_global_init=True)
    with pytest.raises(ValueError, match="dst is src"):
        bart_to_lsg(lsg, lsg, resize=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # the random initialisation is a --from-bart option
        convert.parse_args(["lsg", str(bart), str(tmp_path / "out"), "--random-global-init"])


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
