"""Flat views of nested parameter dicts: the shared currency of converters, checkpoints and sharding.

A nested dict of arrays (what `nnx.to_pure_dict(state)` returns; list indices are int keys) is
flattened to {"encoder/layers/0/attention/query/kernel": array}. Path segments that are digits
become int keys again on the way back, matching nnx.List indices.
"""
from typing import Any, Mapping

SEP = "/"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{SEP}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = (int(part) if part.isdigit() else part for part in path.split(SEP))
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
