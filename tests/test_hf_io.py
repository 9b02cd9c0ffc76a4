"""Hugging Face folder IO (jaxport.hf): safetensors and .bin reading, writing, sharding, errors, the hub
fallback, and PretrainedModel on a toy model."""
import dataclasses
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from jaxport import hf, tree
from jaxport.convert import ConversionError, Rule, linear_kernel
from jaxport.hf import (
    CorruptFileError,
    PretrainedModel,
    find_weights,
    iter_tensors,
    parse_size,
    read_bin,
    read_config,
    read_safetensors,
    resolve_folder,
    save_weights,
    select_tensors,
    write_safetensors,
)


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "bf16": rng.standard_normal((2, 5)).astype(ml_dtypes.bfloat16),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False, True]),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "transposed": rng.standard_normal((4, 3)).astype(np.float32).T,  # not C-contiguous
    }


def assert_same(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key, array in expected.items():
        assert actual[key].dtype == array.dtype and np.array_equal(actual[key], array), key


# --- safetensors ---------------------------------------------------------------------------------

def test_safetensors_round_trip_all_dtypes(tmp_path):
    write_safetensors(tmp_path / "w.safetensors", sample_tensors(), {"format": "pt"})
    assert_same(dict(read_safetensors(tmp_path / "w.safetensors")), sample_tensors())


def test_reads_are_aligned_read_only_memory_maps(tmp_path):
    write_safetensors(tmp_path / "w.safetensors", sample_tensors())
    read = dict(read_safetensors(tmp_path / "w.safetensors"))
    assert not read["f32"].flags.owndata and not read["f32"].flags.writeable
    assert all(array.flags.aligned for array in read.values())


def test_files_interoperate_with_the_safetensors_library(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    write_safetensors(tmp_path / "ours.safetensors", sample_tensors(), {"format": "pt"})
    with safe_open(tmp_path / "ours.safetensors", "pt") as file:
        assert file.metadata() == {"format": "pt"}
        assert file.get_tensor("bf16").dtype == torch.bfloat16
        assert torch.equal(file.get_tensor("i64"), torch.arange(6).reshape(2, 3))

    theirs = {"bf16": torch.randn(3, 2, dtype=torch.bfloat16), "f32": torch.randn(4)}
    save_file(theirs, tmp_path / "theirs.safetensors")
    read = dict(read_safetensors(tmp_path / "theirs.safetensors"))
    assert read["bf16"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(read["bf16"].view(np.int16), theirs["bf16"].view(torch.int16).numpy())
    assert np.array_equal(read["f32"], theirs["f32"].numpy())


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:-5], "spans bytes"),  # truncated tensor data
    (lambda data: data[:4], "only 4 bytes"),
    (lambda data: data[:8] + b"{not json" + data[17:], "not valid JSON"),
    (lambda data: (10**9).to_bytes(8, "little") + data[8:], "header of 1000000000 bytes"),
])
def test_corrupt_safetensors_names_the_file(tmp_path, damage, reason):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, sample_tensors())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptFileError, match=reason) as caught:
        list(read_safetensors(path))
    assert str(path) in str(caught.value)


def test_unknown_dtype_cannot_be_written(tmp_path):
    with pytest.raises(ValueError, match="complex"):
        write_safetensors(tmp_path / "w.safetensors", {"c": np.zeros(2, np.complex64)})


# --- sharding and folder discovery ---------------------------------------------------------------

def test_parse_size():
    assert parse_size("10KB") == 10_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5 mb") == 1_500_000
    assert parse_size(123) == 123
    with pytest.raises(ValueError):
        parse_size("lots")


def test_sharded_save_writes_an_index_and_reads_back(tmp_path):
    tensors = {f"layer.{i}": np.full((10, 10), i, np.float32) for i in range(5)}  # 400 bytes each
    files = save_weights(tmp_path, tensors, max_shard_size=900)
    assert [file.name for file in files] == [f"model-0000{n}-of-00003.safetensors" for n in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2000
    assert index["weight_map"]["layer.4"] == "model-00003-of-00003.safetensors"
    weights = find_weights(tmp_path)
    assert (weights.format, weights.files) == ("pytorch", tuple(files))
    assert_same(dict(iter_tensors(weights.files)), tensors)

    # Saving again unsharded removes the shards and index, which would otherwise shadow the new file.
    save_weights(tmp_path, tensors)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.safetensors"]


def test_select_tensors_across_shards(tmp_path):
    tensors = {f"layer.{i}": np.full((10, 10), i, np.float32) for i in range(5)}
    files = save_weights(tmp_path, tensors, max_shard_size=900)
    selected = dict(select_tensors(files, ["layer.4", "layer.0", "absent"]))
    assert_same(selected, {"layer.0": tensors["layer.0"], "layer.4": tensors["layer.4"]})


def test_find_weights_prefers_flax_then_safetensors_then_bin(tmp_path):
    for name in ["pytorch_model.bin", "model.safetensors", "flax_model.safetensors"]:
        (tmp_path / name).write_bytes(b"")
        assert find_weights(tmp_path).files == (tmp_path / name,)
    assert find_weights(tmp_path).format == "flax"


def test_no_weights_error_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no weights found in .*expected one of .*model\.safetensors"):
        find_weights(tmp_path)


def test_index_listing_a_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        find_weights(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CorruptFileError, match="model.safetensors.index.json"):
        find_weights(tmp_path)


def test_read_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"d_model": 8}')
    assert read_config(tmp_path) == {"d_model": 8}


# --- pytorch_model.bin ---------------------------------------------------------------------------

def test_bin_files_with_bf16_shared_storage_and_legacy_format(tmp_path):
    torch = pytest.importorskip("torch")
    embedding = torch.randn(5, 3, dtype=torch.bfloat16)
    state = {"shared.weight": embedding, "encoder.embed_tokens.weight": embedding,
             "dense.weight": torch.randn(4, 2), "steps": torch.tensor(3)}
    torch.save(state, tmp_path / "new.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    for name in ["new.bin", "legacy.bin"]:
        read = dict(read_bin(tmp_path / name))
        assert read.keys() == state.keys()
        assert read["shared.weight"].dtype == ml_dtypes.bfloat16
        assert np.array_equal(read["shared.weight"].view(np.int16), embedding.view(torch.int16).numpy())
        assert np.array_equal(read["dense.weight"], state["dense.weight"].numpy())


def test_sharded_bin_index(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.zeros(3)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert {key: array.shape for key, array in iter_tensors(find_weights(tmp_path).files)} == {"a": (2,), "b": (3,)}


def test_corrupt_bin_names_the_file(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"definitely not a pickle")
    with pytest.raises(CorruptFileError, match=str(path)):
        list(read_bin(path))


def test_bin_without_torch_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="needs PyTorch"):
        list(read_bin(tmp_path / "pytorch_model.bin"))


# --- local folders and the hub -------------------------------------------------------------------

def test_resolve_local_paths(tmp_path):
    assert resolve_folder(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        resolve_folder(tmp_path / "absent")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        resolve_folder(tmp_path / "file")


def fake_hub(monkeypatch, repo: Path, snapshot: Path) -> list:
    """Serve `repo` through snapshot_download: copy the files the patterns allow into `snapshot`."""
    import fnmatch
    import shutil

    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        snapshot.mkdir(exist_ok=True)
        for file in repo.iterdir():
            if any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                shutil.copy(file, snapshot / file.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hub_ids_download_safetensors_only_when_present(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"]:
        (repo / name).write_bytes(b"")
    calls = fake_hub(monkeypatch, repo, tmp_path / "snapshot")
    assert resolve_folder("google/t5-tiny") == tmp_path / "snapshot"
    assert [repo_id for repo_id, _ in calls] == ["google/t5-tiny"]
    assert sorted(path.name for path in (tmp_path / "snapshot").iterdir()) == ["config.json", "model.safetensors"]


def test_hub_ids_fall_back_to_bin(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ["config.json", "pytorch_model.bin"]:
        (repo / name).write_bytes(b"")
    calls = fake_hub(monkeypatch, repo, tmp_path / "snapshot")
    folder = resolve_folder("google/t5-tiny")
    assert len(calls) == 2
    assert find_weights(folder).files == (folder / "pytorch_model.bin",)


def test_hub_failure_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(repo_id, allow_patterns):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a downloadable hub repo: no network"):
        resolve_folder("someone/model")


# --- PretrainedModel on a toy model --------------------------------------------------------------

@dataclasses.dataclass
class ToyConfig:
    vocab_size: int = 11
    d_model: int = 4
    num_layers: int = 2

    @classmethod
    def from_dict(cls, values: dict) -> "ToyConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict:
        return {"model_type": "toy", **dataclasses.asdict(self)}


class Toy(PretrainedModel):
    config_class = ToyConfig

    @staticmethod
    def conversion_rules(config):
        return [Rule("embed.weight", "embed/embedding"),
                Rule("layers.{i}.weight", "layers/{i}/kernel", linear_kernel(input_axes=1))]

    def __init__(self, config, *, dtype, param_dtype, rngs):
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(config.d_model, config.d_model, use_bias=False, dtype=dtype,
                                           param_dtype=param_dtype, rngs=rngs) for _ in range(config.num_layers)])
        self.dropout = nnx.Dropout(0.1, rngs=rngs)  # RNG state, not a parameter: from_pretrained initializes it


def toy_folder(folder: Path, num_layers: int = 2, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    state = {"embed.weight": rng.standard_normal((11, 4)).astype(dtype)}
    state |= {f"layers.{i}.weight": rng.standard_normal((4, 4)).astype(dtype) for i in range(num_layers)}
    folder.mkdir(exist_ok=True)
    save_weights(folder, state)
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "num_layers": num_layers, "dtype": "x"}))
    return state


def params(model) -> dict[str, np.ndarray]:
    flat = tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {path: np.asarray(value) for path, value in flat.items()}


def test_from_pretrained_converts_pytorch_weights(tmp_path):
    state = toy_folder(tmp_path)
    model = Toy.from_pretrained(tmp_path)
    assert np.array_equal(model.embed.embedding[...], state["embed.weight"])
    assert np.array_equal(model.layers[1].kernel[...], state["layers.1.weight"].T)
    assert isinstance(model.layers[0].kernel[...], type(jnp.zeros(1)))
    assert model.dropout.rngs.count[...] == 0  # RNG state is concrete, not abstract


def test_from_pretrained_param_dtype_and_config_overrides(tmp_path):
    toy_folder(tmp_path)
    model = Toy.from_pretrained(tmp_path, param_dtype=jnp.bfloat16)
    assert {array.dtype for array in params(model).values()} == {jnp.dtype(jnp.bfloat16)}
    with pytest.raises(ConversionError, match="layers.1.weight"):
        Toy.from_pretrained(tmp_path, num_layers=1)


def test_non_strict_initializes_what_is_missing(tmp_path):
    toy_folder(tmp_path, num_layers=1)
    with pytest.warns(UserWarning, match="layers/1/kernel"):
        model = Toy.from_pretrained(tmp_path, num_layers=2, strict=False)
    kernel = np.asarray(model.layers[1].kernel[...])
    assert kernel.shape == (4, 4) and np.all(np.isfinite(kernel)) and np.any(kernel != 0)


def test_save_pretrained_round_trips_in_both_formats(tmp_path):
    state = toy_folder(tmp_path / "pt", dtype=ml_dtypes.bfloat16)
    model = Toy.from_pretrained(tmp_path / "pt", param_dtype=jnp.bfloat16)

    model.save_pretrained(tmp_path / "flax")
    assert sorted(path.name for path in (tmp_path / "flax").iterdir()) == ["config.json", "flax_model.safetensors"]
    assert_same(params(Toy.from_pretrained(tmp_path / "flax", param_dtype=jnp.bfloat16)), params(model))

    model.save_pretrained(tmp_path / "back", pytorch=True, max_shard_size=100)
    assert_same(dict(iter_tensors(find_weights(tmp_path / "back").files)), state)
    config = read_config(tmp_path / "back")
    assert config == {"model_type": "toy", "vocab_size": 11, "d_model": 4, "num_layers": 2, "dtype": "bfloat16"}


def test_flax_weights_are_checked_strictly(tmp_path):
    toy_folder(tmp_path / "pt")
    Toy.from_pretrained(tmp_path / "pt").save_pretrained(tmp_path / "flax")
    with pytest.raises(ConversionError, match="layers/1/kernel"):
        Toy.from_pretrained(tmp_path / "flax", num_layers=1)


def test_from_pretrained_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights found"):
        Toy.from_pretrained(tmp_path)


def test_hf_module_imports_torch_lazily():
    assert "import torch" not in Path(hf.__file__).read_text().split("def _import_torch")[0]
