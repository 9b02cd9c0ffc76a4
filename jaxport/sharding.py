"""One device mesh with axes (data, fsdp, tensor); parameters name their axes logically (embed, mlp, heads,
kv, vocab, ...) and the config's rules map those names to mesh axes. Data parallel, FSDP and tensor
parallel are therefore config changes: mesh sizes plus rules.
"""
import logging
import math
import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxport import tree

MESH_AXES = ("data", "fsdp", "tensor")

# Default rules: batch over data and fsdp; weights' embed axis over fsdp; mlp/heads/vocab over tensor.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
)


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when launched as one (coordinator address set, or a multi-host TPU slice)."""
    launched = "JAX_COORDINATOR_ADDRESS" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    tpu_pod = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if launched or tpu_pod:
        jax.distributed.initialize()


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """Mesh over all devices; one size may be -1 to take the devices the others leave."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes, strict=True))}: at most one may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            named = dict(zip(MESH_AXES, sizes, strict=True))
            raise ValueError(f"mesh sizes {named} do not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices, "
                         f"{len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules) -> PartitionSpec:
    """PartitionSpec for one array: each logical axis takes its rule's mesh axes, unless those are
    already used by another axis of the array or do not divide its size (then it stays replicated)."""
    rules = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        target = rules.get(name) if name is not None else None
        mesh_axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
        if size % math.prod(mesh.shape[a] for a in mesh_axes):
            logging.warning("axis %s of size %d is not divisible by mesh axes %s: replicated", name, size,
                            mesh_axes)
            mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules) -> dict:
    """Flat {path: NamedSharding} for a model's parameters, from their `logical_axes` metadata."""
    def sharding(variable):
        shape = variable.get_value().shape
        axes = variable.get_metadata().get("logical_axes") or (None,) * len(shape)
        return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

    shardings = jax.tree.map(sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return tree.flatten(nnx.to_pure_dict(shardings))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of [batch, ...] input arrays: the leading axis over the 'batch' rule's mesh axes."""
    return NamedSharding(mesh, logical_to_spec(("batch",), (mesh.size,), mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
