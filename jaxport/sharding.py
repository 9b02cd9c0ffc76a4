"""One device mesh with axes (data, fsdp, tensor); parameters name their axes logically (embed, mlp, heads,
kv, vocab, ...) and the config's rules map those names to mesh axes. Data parallel, FSDP and tensor
parallel are therefore config changes: mesh sizes plus rules. Activations at block boundaries follow the same
rules (`constrain`), so XLA's partitioner does not have to guess their layout.
"""
import contextlib
import contextvars
import logging
import math
import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxport import launch, tree

MESH_AXES = ("data", "fsdp", "tensor")
# The logical axes of the hidden states between blocks (the residual stream), for `constrain`.
HIDDEN = ("batch", "length", "embed")

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
    """Join a multi-process run when launched as one: by jaxport.launch (`python -m train --num-processes N`), a
    cluster JAX detects itself (coordinator address set: SLURM, Open MPI, ...), or a multi-host TPU slice."""
    launched = launch.COORDINATOR in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    tpu_pod = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if launched or tpu_pod:
        own = {name: int(os.environ[key]) for name, key in (("num_processes", launch.NUM_PROCESSES),
                                                             ("process_id", launch.PROCESS_ID)) if key in os.environ}
        jax.distributed.initialize(**own)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """Mesh over all devices (process by process, so each process's devices are neighbours along the batch
    axes); one size may be -1 to take the devices the others leave."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
    devices = list(devices)
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


def spec_axes(entry) -> tuple[str, ...]:
    """A PartitionSpec entry or a rule's target (None, a mesh axis, or a tuple of them) as a tuple of mesh axes."""
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules,
                    warn: bool = True) -> PartitionSpec:
    """PartitionSpec for one array: each logical axis takes its rule's mesh axes, unless those are
    already used by another axis of the array or do not divide its size (then it stays replicated, with a
    warning if `warn`)."""
    rules = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        target = rules.get(name) if name is not None else None
        mesh_axes = tuple(a for a in spec_axes(target) if a not in used and mesh.shape[a] > 1)
        if size % math.prod(mesh.shape[a] for a in mesh_axes):
            if warn:
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


def check_process_rows(batch_sharding: NamedSharding) -> None:
    """Each process feeds its own slice of every global batch, rows [p*B/P, (p+1)*B/P) for process p of P
    (jaxport.data's iterators); the batch sharding must give process p's devices exactly those rows."""
    count = jax.process_count()
    if count == 1:
        return
    rows = batch_sharding.mesh.size * count  # any multiple of both the shard and the process count
    held: dict[int, set[int]] = {}
    for device, index in batch_sharding.devices_indices_map((rows,)).items():
        held.setdefault(device.process_index, set()).update(range(rows)[index[0]])
    for process, indices in sorted(held.items()):
        block = set(range(process * rows // count, (process + 1) * rows // count))
        if indices != block:
            raise ValueError(
                f"mesh {dict(batch_sharding.mesh.shape)} does not split the batch between the {count} processes "
                f"(batch axis {batch_sharding.spec[0]}): process {process} would hold rows {min(indices)}-"
                f"{max(indices)} of {rows}, but reads rows {min(block)}-{max(block)}. Every mesh axis that spans "
                "processes must shard the batch: with one process per GPU keep mesh.tensor=1; tensor parallelism "
                "runs within a process (one process over all GPUs, the default)")


# Activation sharding: the rules in force while a step is traced (`activation_rules`), applied by `constrain`.
_ACTIVATION_RULES: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules):
    """Within this context (entered while a jitted step is traced), `constrain` lays activations out on `mesh`
    by `rules`; outside any, it does nothing."""
    token = _ACTIVATION_RULES.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` constrained to the layout its logical `axes` (e.g. ("batch", "length", "embed")) get from the active
    `activation_rules`, as parameters get theirs; `x` itself when none are active (a model called on its own).
    An axis its mesh axes do not divide stays replicated."""
    active = _ACTIVATION_RULES.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(axes, x.shape, mesh, rules, warn=False)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def operand_spec(arg_shapes, rank: int) -> tuple:
    """A custom_partitioning callback's first operand's PartitionSpec as `rank` entries (None: not sharded; an operand
    without a NamedSharding has none)."""
    return (tuple(getattr(arg_shapes[0].sharding, "spec", ())) + (None,) * rank)[:rank]


def per_batch_and_head(layouts: str, statics: int):
    """Make a function of arrays laid out as `layouts` (e.g. "blhd, bl -> bhl": b batch, h heads (optional), other
    letters rows and head dims), followed by `statics` static arguments, partitionable: under a sharded jit each
    device runs it on its own batch elements and heads, rows and head dims whole (blocks read their neighbours). An
    output marked "+" (e.g. "+d") is a sum over the batch that each device computes over its own elements: the
    devices' sums are added. A bare pallas_call is opaque to XLA's partitioner, which would gather every input onto
    every device."""
    ins, marked = ([name.strip() for name in side.split(",")] for side in layouts.split("->"))
    outs = [name.lstrip("+") for name in marked]
    summed = [name.startswith("+") for name in marked]
    whole = [name for name in dict.fromkeys("".join(ins + outs)) if name not in "bh"]  # in order of appearance

    def decorate(fn):
        partitioned = custom_partitioning(fn, static_argnums=tuple(range(len(ins), len(ins) + statics)))

        def shardings(mesh, arg_shapes):
            spec = operand_spec(arg_shapes, len(ins[0]))
            axes = {name: spec[ins[0].index(name)] for name in "bh" if name in ins[0]}
            place = lambda layout: NamedSharding(mesh, PartitionSpec(*(axes.get(name) for name in layout)))
            results = tuple(map(place, outs))
            return tuple(map(place, ins)), results if len(outs) > 1 else results[0], axes.get("b")

        def partition(*args):
            *static, mesh, arg_shapes, _ = args
            arg_shardings, result_shardings, batch_axes = shardings(mesh, arg_shapes)

            def lower(*arrays):
                results = fn(*arrays, *static)
                if batch_axes is None or not any(summed):
                    return results
                return tuple(jax.lax.psum(r, batch_axes) if s else r for r, s in zip(results, summed, strict=True))
            return mesh, lower, result_shardings, arg_shardings

        def infer(*args):
            *_, mesh, arg_shapes, _ = args
            return shardings(mesh, arg_shapes)[1]

        partitioned.def_partition(partition, infer_sharding_from_operands=infer,
                                  sharding_rule=" -> ".join(", ".join(" ".join(layout) for layout in side)
                                                            for side in (ins, outs)),
                                  need_replication_factors=tuple(whole))
        return partitioned
    return decorate
