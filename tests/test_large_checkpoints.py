"""Checkpoints larger than memory: conversion and loading move one tensor at a time (shard by shard), measured peak
host memory stays within 1.3x the largest shard plus a fixed overhead (bench/convert_memory.py, its `test` preset:
0.3 GB in 64 MB shards, safetensors and .bin), from_pretrained lays parameters out over a mesh of 8 fake devices,
and the files written a tensor at a time (headers reserved ahead of the data) load in transformers."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

import convert as convert_cli
from jaxport import hf, sharding, tree
from jaxport.hf import SafetensorsWriter, ShardedWriter, find_weights, read_safetensors
from t5_jax import T5ForConditionalGeneration
from tests import helpers
from tests.helpers import ROOT, assert_same_bits, folder_tensors

TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """bench/convert_memory.py's test preset: convert (safetensors and .bin shards) and load (8 fake devices)."""
    out = tmp_path_factory.mktemp("memory") / "results.json"
    subprocess.run([sys.executable, "bench/convert_memory.py", "--preset", "test", "--formats", "safetensors,bin",
                    "--jobs", "convert,load", "--out", str(out)], cwd=ROOT, check=True, timeout=900)
    return json.loads(out.read_text())


@pytest.mark.slow  # the measuring subprocesses: 25 s
@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_conversion_holds_about_one_shard(measured, kind):
    runs = measured["runs"][kind]
    checkpoint = runs["checkpoint"]
    assert checkpoint["shards"] >= 5 and checkpoint["bytes"] > 3.5 * checkpoint["largest_shard_bytes"]
    grown = runs["convert"]["grown_bytes"]
    bound = 1.3 * checkpoint["largest_shard_bytes"] + measured["overhead_bytes"]
    # Well under the model (loading it, then saving it, as the conversion did before, peaked 237 MB above the start).
    assert bound < checkpoint["bytes"] / 1.5
    assert grown <= bound
    assert runs["tensors_checked"] == 282  # the converted folder equals the source, tensor by tensor


@pytest.mark.slow  # the measuring subprocesses: 25 s
@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_loading_onto_a_mesh_holds_about_one_shard_besides_the_parameters(measured, kind):
    runs = measured["runs"][kind]
    load = runs["load"]
    device_bytes = load["memory"]["params_bytes"]
    assert device_bytes == pytest.approx(runs["checkpoint"]["bytes"], rel=0.02)  # bf16, twice (the data axis)
    assert load["grown_bytes"] <= device_bytes + 1.3 * runs["checkpoint"]["largest_shard_bytes"] + \
        measured["overhead_bytes"]
    # The embedding (vocab, embed) split over the tensor and fsdp axes of a (2, 2, 2) mesh, replicated over data.
    assert load["sharding"] == {"spec": "P('tensor', 'fsdp')", "shard_shape": [4096, 256], "devices": 8}


@pytest.fixture
def hf_folder(tmp_path):
    """A random transformers T5, saved in three safetensors shards."""
    model = helpers.random_torch_t5(0, **TINY)
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    assert len(find_weights(tmp_path / "src").files) >= 3
    return model, tmp_path / "src"


def test_from_pretrained_places_each_tensor_before_reading_the_next(hf_folder, monkeypatch):
    """The host never holds the converted model: each tensor reaches the device before the next one is read."""
    _, folder = hf_folder
    config = T5ForConditionalGeneration.folder_config(folder)  # (reads the head and the embedding to compare them)
    monkeypatch.setattr(T5ForConditionalGeneration, "folder_config", classmethod(lambda cls, folder: config))
    events = []
    iter_tensors, place = hf.iter_tensors, hf._place

    def reading(files):
        for key, array in iter_tensors(files):
            events.append("read")
            yield key, array

    monkeypatch.setattr(hf, "iter_tensors", reading)
    monkeypatch.setattr(hf, "_place", lambda array, sharding: events.append("place") or place(array, sharding))
    T5ForConditionalGeneration.from_pretrained(folder)
    assert events.count("read") == events.count("place") > 20
    assert "read read" not in " ".join(events)


def test_from_pretrained_on_a_mesh(hf_folder):
    """bf16 parameters laid out by the logical axis rules over 8 devices, equal to a plain load."""
    _, folder = hf_folder
    mesh = sharding.make_mesh(2, 2, 2)
    model = T5ForConditionalGeneration.from_pretrained(folder, param_dtype=jnp.bfloat16, mesh=mesh)
    plain = T5ForConditionalGeneration.from_pretrained(folder, param_dtype=jnp.bfloat16)
    params = tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    expected = tree.flatten(nnx.to_pure_dict(nnx.state(plain, nnx.Param)))
    specs = {"shared/embedding": P("tensor", "fsdp"), "lm_head/kernel": P("fsdp", "tensor"),
             "encoder/layers/0/attention/query/kernel": P("fsdp", "tensor", None),
             "decoder/layers/1/mlp/wo/kernel": P("tensor", "fsdp"), "encoder/final_norm/scale": P("fsdp")}
    for path, spec in specs.items():
        assert params[path].sharding.spec == spec, path
        assert len(params[path].sharding.device_set) == 8
    for path, value in params.items():
        assert value.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]), err_msg=path)
    ids = jnp.ones((2, 8), jnp.int32)
    np.testing.assert_allclose(np.asarray(model(ids, decoder_input_ids=ids).logits),
                               np.asarray(plain(ids, decoder_input_ids=ids).logits), rtol=2e-2, atol=2e-2)


def test_streamed_shards_load_in_transformers(hf_folder, tmp_path):
    """python -m convert to Flax and back to PyTorch names, in shards written a tensor at a time: transformers loads
    them (the headers' reserved room is trailing spaces, which the format allows), bit for bit the original."""
    reference, folder = hf_folder
    assert convert_cli.main(["t5", str(folder), str(tmp_path / "flax"), "--max-shard-size", "30KB"]) == 0
    assert convert_cli.main(["t5", str(tmp_path / "flax"), str(tmp_path / "pt"), "--to-pytorch",
                             "--max-shard-size", "25KB"]) == 0
    assert len(find_weights(tmp_path / "pt").files) >= 3 and len(find_weights(tmp_path / "flax").files) >= 2
    assert_same_bits(folder_tensors(tmp_path / "pt"), folder_tensors(folder))
    loaded = type(reference).from_pretrained(tmp_path / "pt").eval()
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, decoder_input_ids=ids).logits,
                                   reference(input_ids=ids, decoder_input_ids=ids).logits, rtol=0, atol=0)
    assert sorted(path.name for path in (tmp_path / "pt").iterdir() if path.name.startswith(".")) == []


def test_a_header_outgrowing_its_reserved_room_is_moved(tmp_path):
    tensors = {f"layer.{i}.with.a.rather.long.name": np.full((3, i + 1), i, np.float32) for i in range(20)}
    writer = SafetensorsWriter(tmp_path / "w.safetensors", header_reserve=16)
    for key, array in tensors.items():
        writer.add(key, array)
    writer.finish({"format": "pt"})
    read = dict(read_safetensors(tmp_path / "w.safetensors"))
    assert_same_bits({key: np.array(value) for key, value in read.items()}, tensors)
    assert_same_bits(safetensors.numpy.load_file(tmp_path / "w.safetensors"), tensors)


def test_a_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with ShardedWriter(tmp_path, max_shard_size=100) as writer:
            for i in range(5):
                writer.add(f"t{i}", np.zeros(20, np.float32))
            raise RuntimeError("interrupted")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == b"old"
    with ShardedWriter(tmp_path, max_shard_size=100) as writer:
        for i in range(5):
            writer.add(f"t{i}", np.full(20, i, np.float32))
    assert [path.name for path in writer.files] == [f"model-0000{n}-of-00005.safetensors" for n in range(1, 6)]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [path.name for path in writer.files] + ["model.safetensors.index.json"])
    assert {key: float(array[0]) for key, array in folder_tensors(tmp_path).items()} == {f"t{i}": i for i in range(5)}
