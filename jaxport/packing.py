"""How the train state holds a model's parameters: the small ones packed into a few vectors.

The host handles every array of the train state on every step (XLA's argument parsing and preparation, and the
wait for each output: a few microseconds each), and an elementwise optimizer launches a kernel per array. A model's
small leaves - biases, norm scales - are most of its arrays and almost none of its bytes, so `ParamPacking` keeps
the leaves of at most SMALL_LEAF elements of each optimizer group (and dtype) concatenated into one vector, and
the rest as they are: LSG-BART-base's training state went from 788 arrays to 311 (bench/RESULTS.md).
Packing is exact for elementwise optimizers (AdamW); an optimizer that looks at whole arrays (Adafactor's
per-array scale and clipping) gets `ParamPacking.none`.
"""
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxport import tree

SMALL_LEAF = 1 << 16  # elements: biases, norm scales, small embeddings


class ParamPacking:
    """pack: the model's params dict -> {"large": params without the small leaves, "small": {"GROUP.DTYPE": vector}};
    unpack: the way back (inside jit: slices and reshapes that XLA fuses into their readers, and whose gradient is
    one concatenation)."""

    def __init__(self, abstract_params: dict, groups: dict[str, str], small_leaf: int = SMALL_LEAF):
        """abstract_params: the params tree (arrays or ShapeDtypeStructs); groups: {path: optimizer group}."""
        self.vectors: dict[str, list[tuple[str, tuple, Any]]] = {}  # vector name -> [(path, shape, dtype)]
        for path, leaf in tree.flatten(abstract_params).items():
            if leaf.size <= small_leaf:
                name = f"{groups[path]}.{jnp.dtype(leaf.dtype).name}"
                self.vectors.setdefault(name, []).append((path, tuple(leaf.shape), leaf.dtype))
        self.small_paths = {path for members in self.vectors.values() for path, _, _ in members}

    @classmethod
    def none(cls, abstract_params: dict) -> "ParamPacking":
        return cls(abstract_params, {}, small_leaf=-1)

    def _large(self, flat: dict) -> dict:
        return tree.unflatten({p: v for p, v in flat.items() if p not in self.small_paths})

    def pack(self, params: dict) -> dict:
        flat = tree.flatten(params)
        return {"large": self._large(flat),
                "small": {name: jnp.concatenate([jnp.ravel(flat[path]) for path, _, _ in members])
                          for name, members in self.vectors.items()}}

    def unpack(self, packed: dict) -> dict:
        flat = tree.flatten(packed["large"])
        for name, members in self.vectors.items():
            sizes = [int(np.prod(shape)) for _, shape, _ in members]
            pieces = jnp.split(packed["small"][name], np.cumsum(sizes)[:-1])
            flat.update({path: piece.reshape(shape) for (path, shape, _), piece in zip(members, pieces, strict=True)})
        return tree.unflatten(flat)

    def pack_like(self, params_like: dict, small: Any) -> dict:
        """A tree in pack's layout from a params-shaped tree of anything (labels, shardings): large leaves keep
        theirs, each vector takes small(vector name)."""
        return {"large": self._large(tree.flatten(params_like)), "small": {name: small(name) for name in self.vectors}}

    @staticmethod
    def group_of(vector_name: str) -> str:
        return vector_name.rsplit(".", 1)[0]
