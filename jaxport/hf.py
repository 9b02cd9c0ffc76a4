"""Hugging Face model folders: config.json plus weights, read lazily and written as safetensors.

Weights are streamed as (key, numpy array) one tensor at a time, shard by shard. safetensors files
are memory-mapped and parsed here rather than by the safetensors package, whose numpy backend
rejects BF16 in older versions: numpy has no bfloat16, so BF16 and float8 arrays use ml_dtypes
(which ships with jax). pytorch_model.bin files go through torch, imported only when one is met.

`PretrainedModel` gives flax.nnx models `from_pretrained` / `save_pretrained` on top of this and of
the rule tables in `jaxport.convert`.
"""
import json
import math
import os
import re
import struct
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jaxport import tree
from jaxport.convert import Entry, flax_to_pytorch, pytorch_to_flax, select_flat

CONFIG_FILE = "config.json"
FLAX_PREFIX = "flax_model"  # this project's own weights: keys are flat Flax paths
PYTORCH_PREFIX = "model"  # what transformers writes: keys are PyTorch state-dict keys
_LEGACY_BIN = "pytorch_model.bin"

# Where weights may live, most preferred first.
WEIGHT_FILES: tuple[tuple[Literal["flax", "pytorch"], str], ...] = (
    ("flax", f"{FLAX_PREFIX}.safetensors.index.json"),
    ("flax", f"{FLAX_PREFIX}.safetensors"),
    ("pytorch", f"{PYTORCH_PREFIX}.safetensors.index.json"),
    ("pytorch", f"{PYTORCH_PREFIX}.safetensors"),
    ("pytorch", f"{_LEGACY_BIN}.index.json"),
    ("pytorch", _LEGACY_BIN),
)

# Files to fetch from the hub, tried in turn: .bin files are downloaded only when there is no safetensors.
_HUB_PATTERNS = (
    [CONFIG_FILE, f"{FLAX_PREFIX}.safetensors*", f"{FLAX_PREFIX}-*-of-*.safetensors",
     f"{PYTORCH_PREFIX}.safetensors*", f"{PYTORCH_PREFIX}-*-of-*.safetensors"],
    [CONFIG_FILE, f"{_LEGACY_BIN}*", "pytorch_model-*-of-*.bin"],
)

_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 2**20


class CorruptFileError(ValueError):
    """A weights or index file that cannot be parsed; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Folders and the hub


def resolve_folder(path_or_repo_id: str | os.PathLike) -> Path:
    """A local model folder, or a hub repo id downloaded with huggingface_hub.snapshot_download."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a model folder")
    text = str(path_or_repo_id)
    # Hub ids look like "name" or "owner/name"; anything else was meant as a local path.
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"no such model folder: {text}")
    return _download(text)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    for patterns in _HUB_PATTERNS:
        try:
            folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
        except Exception as error:  # offline, unknown repo, gated, ...: hub errors vary by version
            raise FileNotFoundError(
                f"{repo_id} is neither a local folder nor a downloadable hub repo: {error}") from error
        if _first_weight_file(folder):
            break
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}")
    return _read_json(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path}: not valid JSON ({error})") from error


@dataclass(frozen=True)
class WeightFiles:
    format: Literal["flax", "pytorch"]
    files: tuple[Path, ...]


def _first_weight_file(folder: Path) -> tuple[str, Path] | None:
    for weights_format, name in WEIGHT_FILES:
        if (folder / name).is_file():
            return weights_format, folder / name
    return None


def find_weights(folder: str | os.PathLike) -> WeightFiles:
    """The weight files of a folder, in reading order (shards of an index included)."""
    folder = Path(folder)
    found = _first_weight_file(folder)
    if found is None:
        raise FileNotFoundError(
            f"no weights found in {folder}: expected one of {', '.join(name for _, name in WEIGHT_FILES)}")
    weights_format, path = found
    if not path.name.endswith(".index.json"):
        return WeightFiles(weights_format, (path,))
    index = _read_json(path)
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise CorruptFileError(f"{path}: no weight_map in the index")
    shards = tuple(folder / name for name in sorted(set(index["weight_map"].values())))
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(f"{path} lists {shard.name}, which is not in {folder}")
    return WeightFiles(weights_format, shards)


def iter_tensors(files: Iterable[str | os.PathLike]) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) for every tensor in the files, one file at a time."""
    for path in map(Path, files):
        yield from read_bin(path) if path.suffix == ".bin" else read_safetensors(path)


def select_tensors(files: Iterable[str | os.PathLike], keys: Iterable[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) for those tensors of the files whose key is in `keys`."""
    keys = set(keys)
    return ((key, array) for key, array in iter_tensors(files) if key in keys)


# ---------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, then the raw tensor bytes


def _corrupt(path: Path, reason: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: corrupt or truncated safetensors file ({reason})")


def _read_safetensors_header(path: Path) -> tuple[list[tuple[str, np.dtype, tuple, int, int]], int]:
    """[(key, dtype, shape, start, end)] sorted by position (byte offsets from the data start), and
    the data start."""
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        length_bytes = file.read(8)
        if len(length_bytes) < 8:
            raise _corrupt(path, f"only {file_size} bytes")
        (header_size,) = struct.unpack("<Q", length_bytes)
        if header_size > min(_MAX_HEADER_BYTES, file_size - 8):
            raise _corrupt(path, f"header of {header_size} bytes in a file of {file_size}")
        try:
            header = json.loads(file.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _corrupt(path, f"header is not valid JSON: {error}") from error
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = file_size - 8 - header_size
    entries = [(key, *_header_entry(path, key, info, data_size)) for key, info in header.items()]
    return sorted(entries, key=lambda entry: entry[3]), 8 + header_size


def _header_entry(path: Path, key: str, info: Any, data_size: int) -> tuple[np.dtype, tuple, int, int]:
    try:
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        shape = tuple(int(size) for size in info["shape"])
        start, end = (int(offset) for offset in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as error:
        raise _corrupt(path, f"bad header entry for {key}: {info!r}") from error
    if not 0 <= start <= end <= data_size:
        raise _corrupt(path, f"{key} spans bytes {start}..{end} of {data_size} bytes of data")
    if end - start != math.prod(shape) * dtype.itemsize:
        raise _corrupt(path, f"{key} has {end - start} bytes for shape {shape} of {info['dtype']}")
    return dtype, shape, start, end


def read_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(key, read-only memory-mapped array) for each tensor, in file order."""
    path = Path(path)
    entries, data_start = _read_safetensors_header(path)
    file_bytes = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
    for key, dtype, shape, start, end in entries:
        yield key, file_bytes[data_start + start:data_start + end].view(dtype).reshape(shape)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors (numpy arrays, bfloat16/float8 from ml_dtypes included) as one safetensors file."""
    # Widest dtypes first: every tensor then starts at a multiple of its own item size, so readers can
    # view the bytes in place (the format forbids padding between tensors).
    arrays = dict(sorted(((key, np.asarray(value)) for key, value in tensors.items()),
                         key=lambda item: -item[1].dtype.itemsize))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, array in arrays.items():
        if array.dtype not in _SAFETENSORS_NAMES:
            raise ValueError(f"{key}: safetensors cannot store dtype {array.dtype}")
        header[key] = {"dtype": _SAFETENSORS_NAMES[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads with spaces so tensor data stays 8-byte aligned
    partial = Path(f"{path}.partial")  # renamed at the end: a crash never leaves a truncated file behind
    with open(partial, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for array in arrays.values():
            file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    partial.replace(path)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "10KB", "5GB" (powers of 1000) or "2GiB" (powers of 1024)."""
    if isinstance(size, int):
        return size
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b\s*", size, flags=re.IGNORECASE)
    if not found:
        raise ValueError(f"cannot read {size!r} as a size such as '500MB' or '2GiB'")
    number, unit, binary = found.groups()
    return int(float(number) * (1024 if binary else 1000) ** " KMGT".index(unit.upper() or " "))


def _split_shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int | None) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for key, array in tensors.items():
        if max_shard_bytes is not None and shards[-1] and shard_bytes + array.nbytes > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = array
        shard_bytes += array.nbytes
    return shards


def save_weights(folder: str | os.PathLike, tensors: Mapping[str, np.ndarray], prefix: str = PYTORCH_PREFIX,
                 max_shard_size: int | str | None = None, metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Write `{prefix}.safetensors`, or, past max_shard_size, shards plus a transformers-style index.

    Earlier weight files of the same prefix are removed first, as they would shadow the new ones.
    """
    folder = Path(folder)
    tensors = {key: np.asarray(value) for key, value in tensors.items()}
    for stale in [*folder.glob(f"{prefix}.safetensors*"), *folder.glob(f"{prefix}-*-of-*.safetensors")]:
        stale.unlink()
    shards = _split_shards(tensors, None if max_shard_size is None else parse_size(max_shard_size))
    if len(shards) == 1:
        names = [f"{prefix}.safetensors"]
    else:
        names = [f"{prefix}-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]
        index = {"metadata": {"total_size": sum(array.nbytes for array in tensors.values())},
                 "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard}}
        (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for name, shard in zip(names, shards, strict=True):
        write_safetensors(folder / name, shard, metadata)
    return [folder / name for name in names]


# ---------------------------------------------------------------------------------------------
# pytorch_model.bin (needs torch)


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading pytorch_model.bin files needs PyTorch: pip install torch "
                          "(or the package's [torch] extra)") from error
    return torch


def read_bin(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) for each tensor of a torch-pickled state dict, memory-mapped when possible."""
    path = Path(path)
    torch = _import_torch()
    try:
        # mmap needs the zip format torch has written since 1.6; older files are read whole.
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises many types (RuntimeError, UnpicklingError, EOFError, ...)
        raise CorruptFileError(f"{path}: cannot be read as a PyTorch checkpoint ({error})") from error
    if not isinstance(state_dict, Mapping):
        raise CorruptFileError(f"{path}: holds a {type(state_dict).__name__}, not a state dict")
    for key, tensor in state_dict.items():
        yield key, _torch_to_numpy(torch, tensor)


def _torch_to_numpy(torch, tensor) -> np.ndarray:
    # numpy cannot take torch's bfloat16/float8 tensors: reinterpret the bits through a same-width
    # integer type, then view them as the ml_dtypes equivalent. No copy either way.
    bit_views = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
                 torch.float8_e4m3fn: (torch.int8, ml_dtypes.float8_e4m3fn),
                 torch.float8_e5m2: (torch.int8, ml_dtypes.float8_e5m2)}
    tensor = tensor.detach()
    if tensor.dtype in bit_views:
        carrier, dtype = bit_views[tensor.dtype]
        return tensor.view(carrier).numpy().view(dtype)
    return tensor.numpy()


# ---------------------------------------------------------------------------------------------
# from_pretrained / save_pretrained


def _param_paths(module: nnx.Module) -> dict[str, Any]:
    return tree.flatten(nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def _initialize(make_model: Callable[[], nnx.Module], paths: set[str]) -> dict[str, jax.Array]:
    # Under jit, XLA drops the initializers of everything not returned, so asking for a few leaves
    # (RNG streams, parameters a non-strict load did not fill) does not build the whole model.
    @jax.jit
    def initialized():
        flat = tree.flatten(nnx.to_pure_dict(nnx.state(make_model())))
        return {path: flat[path] for path in paths}

    return initialized() if paths else {}


class PretrainedModel(nnx.Module):
    """Base class for flax.nnx models: from_pretrained / save_pretrained on Hugging Face folders.

    A model class sets `config_class` (with `from_dict(dict)` and `to_dict()`) and
    `conversion_rules` (config -> rule table of jaxport.convert), and takes
    `(config, *, dtype, param_dtype, rngs)` in its constructor and keeps the config as `self.config`.
    Only nnx.Param leaves are read or written; other state (RNG streams) is freshly initialized.
    """

    config_class: ClassVar[type]
    conversion_rules: ClassVar[Callable[[Any], Sequence[Entry]]]
    # PyTorch keys (output head, input embedding) of the weights the config's `tie_word_embeddings` ties. As
    # transformers 5 does (it writes tie_word_embeddings=True for models with a head of their own), a PyTorch
    # checkpoint holding both with different values is loaded untied (transformers 4 never writes such a pair).
    tied_head_keys: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        strict: bool = True, **config_overrides):
        """Load a folder (or hub repo) holding PyTorch weights (converted) or this project's Flax weights.

        Strict: any missing, unexpected or misshapen key raises ConversionError. Non-strict: those
        are warned about, and parameters left unfilled are freshly initialized.
        """
        folder = resolve_folder(path)
        config = cls.folder_config(folder, **config_overrides)

        def make_model():
            return cls(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))

        abstract_model = nnx.eval_shape(make_model)
        graphdef, abstract_state = nnx.split(abstract_model)
        target = _param_paths(abstract_model)
        weights = find_weights(folder)
        tensors = iter_tensors(weights.files)
        if weights.format == "flax":
            loaded = select_flat(tensors, target, strict)
        else:
            loaded = pytorch_to_flax(tensors, target, cls.conversion_rules(config), strict)
        # Move leaf by leaf so host memory holds at most one extra copy of a single tensor.
        flat = {path: jnp.asarray(loaded.pop(path)) for path in list(loaded)}
        flat.update(_initialize(make_model, set(tree.flatten(nnx.to_pure_dict(abstract_state))) - flat.keys()))
        return nnx.merge(graphdef, tree.unflatten(flat))

    @classmethod
    def folder_config(cls, folder: str | os.PathLike, **config_overrides):
        """The config from_pretrained builds a local folder's model with: its config.json with the overrides, and
        the head untied where the checkpoint holds it apart (see `tied_head_keys`)."""
        config = cls.config_class.from_dict({**read_config(folder), **config_overrides})
        weights = find_weights(folder)
        if cls.tied_head_keys is None or weights.format == "flax" or not config.tie_word_embeddings:
            return config
        found = dict(select_tensors(weights.files, cls.tied_head_keys))
        if len(found) == 2 and not np.array_equal(*found.values()):
            return replace(config, tie_word_embeddings=False)
        return config

    def save_pretrained(self, path: str | os.PathLike, *, pytorch: bool = False,
                        max_shard_size: int | str | None = None) -> None:
        """Write config.json and flax_model.safetensors (Flax paths), or with `pytorch=True`
        model.safetensors under the PyTorch key names, loadable by transformers' from_pretrained."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        params = {name: np.asarray(value) for name, value in _param_paths(self).items()}
        config = self.config.to_dict()
        float_dtypes = {array.dtype for array in params.values() if jnp.issubdtype(array.dtype, jnp.floating)}
        if len(float_dtypes) == 1:  # transformers reads the stored dtype from here
            config["dtype"] = float_dtypes.pop().name
        if pytorch:
            tensors = flax_to_pytorch(params, type(self).conversion_rules(self.config))
            save_weights(folder, tensors, PYTORCH_PREFIX, max_shard_size, {"format": "pt"})
        else:
            save_weights(folder, params, FLAX_PREFIX, max_shard_size, {"format": "flax"})
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
