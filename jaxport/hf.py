"""Hugging Face model folders: config.json plus weights, read lazily and written as safetensors.

Weights are streamed as (key, numpy array) one tensor at a time, shard by shard. safetensors files
are memory-mapped and parsed here rather than by the safetensors package, whose numpy backend
rejects BF16 in older versions: numpy has no bfloat16, so BF16 and float8 arrays use ml_dtypes
(which ships with jax). pytorch_model.bin files go through torch, imported only when one is met.

`PretrainedModel` gives flax.nnx models `from_pretrained` / `save_pretrained` on top of this and of
the rule tables in `jaxport.convert`.
"""
import functools
import json
import math
import os
import re
import shutil
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
from jax.sharding import Mesh

from jaxport import sharding, tree
from jaxport.convert import Entry, iter_flax_to_pytorch, iter_pytorch_to_flax, iter_select_flat
from jaxport.packing import ParamPacking

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


def _round8(size: int) -> int:
    return size + -size % 8


def _entries(arrays: Iterable[tuple[str, np.ndarray]]) -> dict[str, dict]:
    """The header entries of tensors written back to back in this order."""
    entries, offset = {}, 0
    for key, array in arrays:
        if array.dtype not in _SAFETENSORS_NAMES:
            raise ValueError(f"{key}: safetensors cannot store dtype {array.dtype}")
        entries[key] = {"dtype": _SAFETENSORS_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    return entries


def _encode_header(entries: Mapping[str, dict], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    return json.dumps({**header, **entries}, separators=(",", ":")).encode()


class SafetensorsWriter:
    """One safetensors file written a tensor at a time, keeping none of them: the data goes after a region reserved
    for the header (8-byte aligned), which `finish` fills with the header padded with spaces (the format allows
    trailing spaces), or, should the header outgrow it, writes before a copy of the data."""

    def __init__(self, path: str | os.PathLike, header_reserve: int):
        self.path = Path(path)
        self.data_start = 8 + _round8(header_reserve)
        self.entries: dict[str, dict] = {}
        self.nbytes = 0
        self.file = open(self.path, "wb")
        self.file.seek(self.data_start)

    def add(self, key: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if key in self.entries:
            raise ValueError(f"{key} is written twice to {self.path}")
        entry = _entries([(key, array)])[key]
        entry["data_offsets"] = [self.nbytes, self.nbytes + array.nbytes]
        self.file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        self.entries[key] = entry
        self.nbytes += array.nbytes

    def finish(self, metadata: Mapping[str, str] | None = None) -> None:
        header = _encode_header(self.entries, metadata)
        room = self.data_start - 8
        if len(header) <= room:
            self.file.seek(0)
            self.file.write(struct.pack("<Q", room) + header + b" " * (room - len(header)))
            self.file.close()
            return
        self.file.close()
        header += b" " * (-len(header) % 8)  # tensor data stays 8-byte aligned
        moved = self.path.with_name(self.path.name + ".moved")
        with open(self.path, "rb") as source, open(moved, "wb") as target:
            target.write(struct.pack("<Q", len(header)) + header)
            source.seek(self.data_start)
            shutil.copyfileobj(source, target, 2**24)
        moved.replace(self.path)

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors (numpy arrays, bfloat16/float8 from ml_dtypes included) as one safetensors file."""
    # Widest dtypes first: every tensor then starts at a multiple of its own item size, so readers can
    # view the bytes in place (the format forbids padding between tensors).
    arrays = _widest_first(tensors)
    partial = Path(f"{path}.partial")  # renamed at the end: a crash never leaves a truncated file behind
    writer = SafetensorsWriter(partial, len(_encode_header(_entries(arrays), metadata)))
    try:
        for key, array in arrays:
            writer.add(key, array)
        writer.finish(metadata)
    except BaseException:
        writer.abort()
        raise
    partial.replace(path)


def _widest_first(tensors: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    arrays = ((key, np.asarray(value)) for key, value in tensors.items())
    return sorted(arrays, key=lambda item: -item[1].dtype.itemsize)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "10KB", "5GB" (powers of 1000) or "2GiB" (powers of 1024)."""
    if isinstance(size, int):
        return size
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b\s*", size, flags=re.IGNORECASE)
    if not found:
        raise ValueError(f"cannot read {size!r} as a size such as '500MB' or '2GiB'")
    number, unit, binary = found.groups()
    return int(float(number) * (1024 if binary else 1000) ** " KMGT".index(unit.upper() or " "))


class ShardedWriter:
    """Weights written a tensor at a time, keeping none of them, into `{prefix}.safetensors`, or, past
    max_shard_size, into shards plus a transformers-style index. A context manager: when the block ends without an
    error the files take their names (earlier weight files of the prefix are removed first, as they would shadow the
    new ones) and `files` lists them; after an error none is left.

    header_reserve: bytes set aside for each file's header, at least the header of the tensors of one file (past
    it the file is written once more); the default fits about 300 tensors."""

    def __init__(self, folder: str | os.PathLike, prefix: str = PYTORCH_PREFIX, max_shard_size: int | str | None = None,
                 metadata: Mapping[str, str] | None = None, header_reserve: int = 2**16):
        self.folder = Path(folder)
        self.prefix = prefix
        self.max_shard_bytes = None if max_shard_size is None else parse_size(max_shard_size)
        self.metadata = metadata
        self.header_reserve = header_reserve
        self.shards: list[SafetensorsWriter] = []
        self.files: list[Path] = []

    def add(self, key: str, array: np.ndarray) -> None:
        current = self.shards[-1] if self.shards else None
        if current is None or (self.max_shard_bytes is not None and current.entries
                               and current.nbytes + array.nbytes > self.max_shard_bytes):
            self._open_shard()
        self.shards[-1].add(key, array)

    def _open_shard(self) -> None:
        if self.shards:
            self.shards[-1].finish(self.metadata)
        # Hidden names that match no weight file pattern until commit renames them.
        self.shards.append(SafetensorsWriter(self.folder / f".{self.prefix}-{len(self.shards):05d}.incomplete",
                                             self.header_reserve))

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self._commit()
        else:
            for shard in self.shards:
                shard.abort()

    def _commit(self) -> None:
        if not self.shards:
            self._open_shard()  # no tensors: one empty file
        self.shards[-1].finish(self.metadata)
        count = len(self.shards)
        names = ([f"{self.prefix}.safetensors"] if count == 1 else
                 [f"{self.prefix}-{number:05d}-of-{count:05d}.safetensors" for number in range(1, count + 1)])
        for stale in [*self.folder.glob(f"{self.prefix}.safetensors*"),
                      *self.folder.glob(f"{self.prefix}-*-of-*.safetensors")]:
            stale.unlink()
        for shard, name in zip(self.shards, names, strict=True):
            shard.path.replace(self.folder / name)
        if count > 1:
            index = {"metadata": {"total_size": sum(shard.nbytes for shard in self.shards)},
                     "weight_map": {key: name for shard, name in zip(self.shards, names, strict=True)
                                    for key in shard.entries}}
            (self.folder / f"{self.prefix}.safetensors.index.json").write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n")
        self.files = [self.folder / name for name in names]


def save_weights(folder: str | os.PathLike, tensors: Mapping[str, np.ndarray], prefix: str = PYTORCH_PREFIX,
                 max_shard_size: int | str | None = None, metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Write `{prefix}.safetensors`, or, past max_shard_size, shards plus a transformers-style index.

    Earlier weight files of the same prefix are removed first, as they would shadow the new ones.
    """
    arrays = _widest_first(tensors)
    # The header of all tensors bounds the header of any shard's.
    with ShardedWriter(folder, prefix, max_shard_size, metadata, len(_encode_header(_entries(arrays), metadata))) \
            as writer:
        for key, array in arrays:
            writer.add(key, array)
    return writer.files


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


def param_paths(module: nnx.Module) -> dict[str, Any]:
    """A module's parameters, flat {path: array}."""
    return tree.flatten(nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def _initialize(make_model: Callable[[], nnx.Module], paths: set[str], shardings: Mapping[str, Any] | None = None
                ) -> dict[str, jax.Array]:
    # Under jit, XLA drops the initializers of everything not returned, so asking for a few leaves
    # (RNG streams, parameters a non-strict load did not fill) does not build the whole model.
    @functools.partial(jax.jit, out_shardings=None if shardings is None else {path: shardings[path] for path in paths})
    def initialized():
        flat = tree.flatten(nnx.to_pure_dict(nnx.state(make_model())))
        return {path: flat[path] for path in paths}

    return initialized() if paths else {}


def _place(array: np.ndarray, sharding) -> jax.Array:
    """A host array on the default device, or laid out by `sharding` (each device is given its own slice)."""
    if sharding is None:
        return jnp.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


class PretrainedModel(nnx.Module):
    """Base class for flax.nnx models: from_pretrained / save_pretrained on Hugging Face folders.

    A model class sets `config_class` (with `from_dict(dict)` and `to_dict()`) and
    `conversion_rules` (config -> rule table of jaxport.convert), and takes
    `(config, *, dtype, param_dtype, rngs)` in its constructor and keeps the config as `self.config`.
    Only nnx.Param leaves are read or written; other state (RNG streams) is freshly initialized.

    Weights move a tensor at a time: read (memory-mapped), converted, cast, then placed on the device or written,
    before the next is read. Host memory holds the checkpoint shard being read and a tensor or two, never the model
    (bench/convert_memory.py measures it).
    """

    config_class: ClassVar[type]
    conversion_rules: ClassVar[Callable[[Any], Sequence[Entry]]]
    # PyTorch keys (output head, input embedding) of the weights the config's `tie_word_embeddings` ties. As
    # transformers 5 does (it writes tie_word_embeddings=True for models with a head of their own), a PyTorch
    # checkpoint holding both with different values is loaded untied (transformers 4 never writes such a pair).
    tied_head_keys: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        strict: bool = True, mesh: Mesh | None = None, sharding_rules=sharding.DEFAULT_RULES,
                        **config_overrides):
        """Load a folder (or hub repo) holding PyTorch weights (converted) or this project's Flax weights.

        Args:
          path: model folder or hub repo id.
          dtype: the computation's dtype; param_dtype: the parameters' (each tensor is cast on the host as it is
            read: bfloat16 parameters from a float32 checkpoint never take float32 room on the device).
          strict: any missing, unexpected or misshapen key raises ConversionError. Non-strict: those are warned
            about, and parameters left unfilled are freshly initialized.
          mesh: a jax.sharding.Mesh (jaxport.sharding.make_mesh): each parameter is laid out over it by its logical
            axes and `sharding_rules` (as the trainer lays them out), each device given its own slice as the tensor
            is read. None: every parameter on the default device.
          config_overrides: config fields to replace (runtime keys such as attn_implementation or remat too).
        """
        folder = resolve_folder(path)
        config = cls.folder_config(folder, **config_overrides)

        def make_model():
            return cls(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))

        abstract_model = nnx.eval_shape(make_model)
        graphdef, abstract_state = nnx.split(abstract_model)
        shardings = None if mesh is None else sharding.param_shardings(abstract_state, mesh, sharding_rules)
        flat = {path: _place(array, None if shardings is None else shardings[path])
                for path, array in cls._read_params(folder, config, param_paths(abstract_model), strict)}
        missing = set(tree.flatten(nnx.to_pure_dict(abstract_state))) - flat.keys()
        flat.update(_initialize(make_model, missing, shardings))
        return nnx.merge(graphdef, tree.unflatten(flat))

    @classmethod
    def convert(cls, src: str | os.PathLike, dst: str | os.PathLike, *, dtype: Any = jnp.float32, pytorch: bool = False,
                max_shard_size: int | str | None = None, **config_overrides) -> None:
        """What `from_pretrained(src, dtype=dtype, param_dtype=dtype).save_pretrained(dst, ...)` writes, without
        building the model: each tensor is read, converted and written before the next (python -m convert's plain
        conversion; an 11B checkpoint converts in the memory of its largest shard)."""
        folder = resolve_folder(src)
        config = cls.folder_config(folder, **config_overrides)
        target = param_paths(nnx.eval_shape(lambda: cls(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))))
        cls._write_params(dst, config, target, cls._read_params(folder, config, target, strict=True), pytorch,
                          max_shard_size)

    @classmethod
    def _read_params(cls, folder: Path, config, target: Mapping[str, Any], strict: bool
                     ) -> Iterator[tuple[str, np.ndarray]]:
        """(Flax path, host array shaped and typed as `target`'s) for each parameter the folder's weights hold, one
        at a time; the report on missing or unexpected keys at the end (see jaxport.convert)."""
        weights = find_weights(folder)
        tensors = iter_tensors(weights.files)
        if weights.format == "flax":
            return iter_select_flat(tensors, target, strict)
        return iter_pytorch_to_flax(tensors, target, cls.conversion_rules(config), strict)

    @classmethod
    def _write_params(cls, path: str | os.PathLike, config, target: Mapping[str, Any],
                      params: Iterable[tuple[str, np.ndarray]], pytorch: bool,
                      max_shard_size: int | str | None) -> None:
        """config.json and the weights `params` yields (Flax paths and arrays, `target`'s), as Flax or PyTorch
        (`pytorch`) safetensors."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        if pytorch:
            tensors, prefix, metadata = iter_flax_to_pytorch(params, cls.conversion_rules(config)), PYTORCH_PREFIX, "pt"
        else:
            tensors, prefix, metadata = params, FLAX_PREFIX, "flax"
        # A header entry takes its key (a PyTorch key runs a few characters longer than its Flax path) and under 160
        # bytes of dtype, shape and offsets: this bounds the header of any shard.
        reserve = sum(len(name) + 160 for name in target)
        with ShardedWriter(folder, prefix, max_shard_size, {"format": metadata}, reserve) as writer:
            for key, array in tensors:
                writer.add(key, array)
        values = config.to_dict()
        float_dtypes = {jnp.dtype(leaf.dtype) for leaf in target.values() if jnp.issubdtype(leaf.dtype, jnp.floating)}
        if len(float_dtypes) == 1:  # transformers reads the stored dtype from here
            values["dtype"] = float_dtypes.pop().name
        (folder / CONFIG_FILE).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")

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

    def jitted(self, method: str = "__call__", **jit_kwargs) -> Callable:
        """`getattr(self, method)` under jax.jit, bound to a snapshot of the parameters held as ParamPacking holds
        the trainer's: the small leaves (biases, norm scales) concatenated into one vector, the large ones shared,
        not copied. The host prepares every argument array on every call, so a forward called again and again
        (serving, benchmarks) dispatches sooner than a jit over nnx.split's state (bench/RESULTS.md). jit_kwargs go
        to jax.jit (static_argnames for options that are not arrays). Parameters changed later are not seen: call
        jitted again."""
        graphdef, params, rest = nnx.split(self, nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        packing = ParamPacking(params, dict.fromkeys(tree.flatten(params), "params"))
        leaves, treedef = jax.tree.flatten((packing.pack(params), rest))

        @functools.partial(jax.jit, **jit_kwargs)
        def call(leaves, *args, **kwargs):
            packed, rest = jax.tree.unflatten(treedef, leaves)
            return getattr(nnx.merge(graphdef, packing.unpack(packed), rest), method)(*args, **kwargs)

        return functools.partial(call, leaves)

    def save_pretrained(self, path: str | os.PathLike, *, pytorch: bool = False,
                        max_shard_size: int | str | None = None) -> None:
        """Write config.json and flax_model.safetensors (Flax paths), or with `pytorch=True`
        model.safetensors under the PyTorch key names, loadable by transformers' from_pretrained. Parameters come to
        the host one at a time."""
        params = param_paths(self)
        # Widest dtypes first, as write_safetensors orders them (a conversion's tensors all have one dtype).
        widest_first = sorted(params, key=lambda name: -jnp.dtype(params[name].dtype).itemsize)
        on_host = ((name, np.asarray(params[name])) for name in widest_first)
        type(self)._write_params(path, self.config, params, on_host, pytorch, max_shard_size)
