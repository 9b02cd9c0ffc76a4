"""Rule tables that map PyTorch state-dict keys to flat Flax parameter paths, both ways.

A model family declares a list of entries:

- `Rule(pytorch, flax, transform)`: one PyTorch tensor <-> one Flax parameter. Both sides are
  templates, literal text with `{name}` placeholders that stand for integer indices, e.g.
  `Rule("encoder.block.{i}.layer.0.SelfAttention.q.weight", "encoder/layers/{i}/attention/query/kernel",
  linear_kernel(1))`. Templates rather than free regexes so that every rule can run in both directions.
- `Alias(pytorch, canonical)`: a key that duplicates another one (tied embeddings). Accepted when
  present and equal to the canonical tensor, stands in for it when the canonical key is absent, never
  required, and written on export only with `export=True`.
- `Ignore(pytorch)`: a key that checkpoints may carry but the Flax model has no use for.

Entries are tried in order and the first match wins. Flat Flax paths are the "/"-joined paths of
`jaxport.tree.flatten`.
"""
import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transform:
    """How one tensor's layout differs between PyTorch and Flax."""

    to_flax: Callable[[np.ndarray, Shape], np.ndarray]  # (pytorch array, flax shape) -> flax array
    to_pytorch: Callable[[np.ndarray], np.ndarray]
    pytorch_shape: Callable[[Shape], Shape]  # the PyTorch shape that fits a Flax shape, for checks


IDENTITY = Transform(
    to_flax=lambda array, shape: array,
    to_pytorch=lambda array: array,
    pytorch_shape=tuple,
)


# A tensor PyTorch keeps flat where Flax splits its axes, e.g. a projection's bias [heads * head_dim] <-> (heads,
# head_dim).
FLATTENED = Transform(
    to_flax=lambda array, shape: array.reshape(shape),
    to_pytorch=lambda array: array.reshape(-1),
    pytorch_shape=lambda shape: (math.prod(shape),),
)


def linear_kernel(input_axes: int = 1) -> Transform:
    """A torch Linear weight `[out, in]` <-> a kernel whose first `input_axes` axes are the input side.

    E.g. a query projection kernel `(d_model, heads, d_kv)` has input_axes=1 and an output projection
    `(heads, d_kv, d_model)` has input_axes=2.
    """

    def pytorch_shape(shape: Shape) -> Shape:
        return (math.prod(shape[input_axes:]), math.prod(shape[:input_axes]))

    def to_pytorch(kernel: np.ndarray) -> np.ndarray:
        return kernel.reshape(math.prod(kernel.shape[:input_axes]), -1).T

    return Transform(to_flax=lambda weight, shape: weight.T.reshape(shape),
                     to_pytorch=to_pytorch, pytorch_shape=pytorch_shape)


def input_first_kernel(input_axes: int = 1) -> Transform:
    """A weight PyTorch keeps input-first, [in, out] (transformers' Conv1D: GPT-2), <-> a kernel whose first
    `input_axes` axes are the input side, e.g. (embed, 3, heads, head_dim): the same elements, axes merged."""

    def pytorch_shape(shape: Shape) -> Shape:
        return (math.prod(shape[:input_axes]), math.prod(shape[input_axes:]))

    return Transform(to_flax=lambda array, shape: array.reshape(shape),
                     to_pytorch=lambda array: array.reshape(pytorch_shape(array.shape)), pytorch_shape=pytorch_shape)


@dataclass(frozen=True)
class Rule:
    pytorch: str
    flax: str
    transform: Transform = IDENTITY


@dataclass(frozen=True)
class Alias:
    pytorch: str
    canonical: str  # template of the PyTorch key it duplicates; uses the same placeholders
    export: bool = False


@dataclass(frozen=True)
class Ignore:
    pytorch: str


Entry = Rule | Alias | Ignore

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _template_regex(template: str) -> re.Pattern:
    # re.split with one capture group alternates literal text and placeholder names.
    parts = _PLACEHOLDER.split(template)
    return re.compile("".join(
        re.escape(part) if index % 2 == 0 else rf"(?P<{part}>\d+)" for index, part in enumerate(parts)))


class ConversionError(ValueError):
    """A checkpoint and a model disagree; lists every offending key at once.

    `missing`, `unexpected`, `mismatched` and `conflicting` hold the offending names (Flax paths for
    missing parameters, checkpoint keys otherwise); the message adds the details.
    """

    def __init__(self, problems: "_Problems"):
        self.missing = [name for name, _ in problems.missing]
        self.unexpected = [name for name, _ in problems.unexpected]
        self.mismatched = [name for name, _ in problems.mismatched]
        self.conflicting = [name for name, _ in problems.conflicting]
        super().__init__(problems.describe())


@dataclass
class _Problems:
    missing: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[tuple[str, str]] = field(default_factory=list)
    mismatched: list[tuple[str, str]] = field(default_factory=list)
    conflicting: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched or self.conflicting)

    def describe(self) -> str:
        sections = [  # (count label, heading, entries)
            ("missing", "missing (the model needs them, the checkpoint lacks them)", self.missing),
            ("unexpected", "unexpected (in the checkpoint, not used by the model)", self.unexpected),
            ("shape mismatches", "shape mismatch", self.mismatched),
            ("conflicting duplicates", "duplicates that differ from the tensor they copy", self.conflicting),
        ]
        counts = ", ".join(f"{len(items)} {label}" for label, _, items in sections if items)
        lines = [f"checkpoint does not match the model: {counts}"]
        for _, heading, items in sections:
            if items:
                lines.append(f"{heading}:")
                lines.extend(f"  {name}{': ' + detail if detail else ''}" for name, detail in items)
        return "\n".join(lines)

    def settle(self, strict: bool) -> None:
        if self and strict:
            raise ConversionError(self)
        if self:
            warnings.warn(self.describe(), stacklevel=3)


class _Table:
    """Compiled rule table: looks entries up by PyTorch key or by Flax path."""

    def __init__(self, entries: Sequence[Entry]):
        self.by_pytorch = [(_template_regex(entry.pytorch), entry) for entry in entries]
        self.by_flax = [(_template_regex(entry.flax), entry) for entry in entries if isinstance(entry, Rule)]
        self.exported_aliases = [(_template_regex(entry.canonical), entry) for entry in entries
                                 if isinstance(entry, Alias) and entry.export]
        self.canonicals = [_template_regex(entry.canonical) for entry in entries if isinstance(entry, Alias)]

    def is_duplicated(self, key: str) -> bool:
        """Whether some Alias may duplicate the PyTorch key."""
        return any(regex.fullmatch(key) for regex in self.canonicals)

    def match_pytorch(self, key: str) -> tuple[Entry | None, dict[str, str]]:
        return _first_match(self.by_pytorch, key)

    def match_flax(self, path: str) -> tuple[Rule | None, dict[str, str]]:
        return _first_match(self.by_flax, path)


def _first_match(compiled: list[tuple[re.Pattern, Any]], name: str):
    for regex, entry in compiled:
        found = regex.fullmatch(name)
        if found:
            return entry, found.groupdict()
    return None, {}


def _to_target(array: np.ndarray, target) -> np.ndarray:
    # Always copy: sources are often memory-mapped views of a file that must not outlive the load.
    return np.array(array, dtype=target.dtype, order="C")


def _shape_fits(key: str, array: np.ndarray, rule: Rule, target, path: str, problems: _Problems) -> bool:
    expected = rule.transform.pytorch_shape(tuple(target.shape))
    if array.shape == expected:
        return True
    problems.mismatched.append(
        (key, f"checkpoint {tuple(array.shape)}, model expects {expected} (for {path} {tuple(target.shape)})"))
    return False


def _fingerprint(array: np.ndarray) -> tuple:
    """Shape, dtype and a digest of the bytes of a C-contiguous array: compares two tensors without keeping one."""
    return array.shape, array.dtype, hashlib.blake2b(array.reshape(-1).view(np.uint8)).digest()


def pytorch_to_flax(tensors: Iterable[tuple[str, np.ndarray]], target: Mapping[str, Any],
                    rules: Sequence[Entry], strict: bool = True) -> dict[str, np.ndarray]:
    """Convert (PyTorch key, array) pairs into {Flax path: array} shaped and typed like `target`.

    `target` maps Flax paths to anything with `.shape` and `.dtype` (e.g. jax.ShapeDtypeStruct).
    Strict: raise one ConversionError unless every key is used, every target filled and every shape
    fits. Otherwise the same report is a warning and the result lacks the unfilled paths.
    """
    return dict(iter_pytorch_to_flax(tensors, target, rules, strict))


def iter_pytorch_to_flax(tensors: Iterable[tuple[str, np.ndarray]], target: Mapping[str, Any],
                         rules: Sequence[Entry], strict: bool = True) -> Iterator[tuple[str, np.ndarray]]:
    """pytorch_to_flax one tensor at a time: each (Flax path, array) comes as soon as its source tensor is read, so a
    lazy reader and a consumer that writes or places each tensor hold about one tensor at a time. A duplicate (Alias)
    read before the tensor it copies is kept (copied) until that one comes; the others are compared through a
    digest. The report (ConversionError, or the warning) comes once `tensors` is exhausted."""
    table = _Table(rules)
    problems = _Problems()
    filled_by: dict[str, str] = {}  # flax path -> PyTorch key it came from
    rule_keys_seen: set[str] = set()
    misfits: set[str] = set()  # flax paths whose tensor had the wrong shape: reported once, not as missing too
    fingerprints: dict[str, tuple] = {}  # flax path -> _fingerprint of what filled it, where duplicates may follow
    waiting: dict[str, list[tuple[str, np.ndarray]]] = {}  # canonical key -> its duplicates read before it

    def rule_of(alias_key: str, canonical: str) -> tuple[Rule, dict[str, str]]:
        rule, groups = table.match_pytorch(canonical)
        if not isinstance(rule, Rule):
            raise ValueError(f"alias {alias_key} points to {canonical}, which no Rule converts")
        return rule, groups

    def fill(key: str, array: np.ndarray, rule: Rule, groups: dict[str, str]) -> tuple[str, np.ndarray] | None:
        path = rule.flax.format(**groups)
        if path not in target:
            problems.unexpected.append((key, f"would fill {path}, which the model does not have"))
        elif path in filled_by:
            problems.unexpected.append((key, f"fills {path} again, already filled by {filled_by[path]}"))
        elif _shape_fits(key, array, rule, target[path], path, problems):
            filled_by[path] = key
            converted = _to_target(rule.transform.to_flax(array, target[path].shape), target[path])
            if table.is_duplicated(rule.pytorch.format(**groups)):
                fingerprints[path] = _fingerprint(converted)
            return path, converted
        else:
            misfits.add(path)
        return None

    def check_duplicate(key: str, array: np.ndarray, canonical: str) -> None:
        rule, groups = rule_of(key, canonical)
        path = rule.flax.format(**groups)
        if path in fingerprints and _shape_fits(key, array, rule, target[path], path, problems):
            duplicate = _to_target(rule.transform.to_flax(array, target[path].shape), target[path])
            if _fingerprint(duplicate) != fingerprints[path]:
                problems.conflicting.append((key, f"differs from {canonical}"))

    for key, array in tensors:
        entry, groups = table.match_pytorch(key)
        if isinstance(entry, Rule):
            rule_keys_seen.add(key)
            filled = fill(key, array, entry, groups)
            for alias_key, alias_array in waiting.pop(key, []):
                check_duplicate(alias_key, alias_array, key)
            if filled:
                yield filled
        elif isinstance(entry, Alias):
            canonical = entry.canonical.format(**groups)
            if canonical in rule_keys_seen:
                check_duplicate(key, array, canonical)
            else:  # a copy: the reader may unmap the file this array views
                waiting.setdefault(canonical, []).append((key, np.array(array)))
        elif entry is None:
            problems.unexpected.append((key, ""))

    # The checkpoint keeps only duplicates of these: the first stands in, the others must equal it.
    for canonical, duplicates in waiting.items():
        (key, array), others = duplicates[0], duplicates[1:]
        rule_keys_seen.add(canonical)
        filled = fill(key, array, *rule_of(key, canonical))
        for other_key, other_array in others:
            check_duplicate(other_key, other_array, canonical)
        if filled:
            yield filled

    for path in target.keys() - filled_by.keys() - misfits:
        rule, groups = table.match_flax(path)
        problems.missing.append((path, f"from {rule.pytorch.format(**groups)}" if rule else "no rule produces it"))
    problems.missing.sort()
    problems.settle(strict)


def flax_to_pytorch(flat_params: Mapping[str, Any], rules: Sequence[Entry],
                    strict: bool = True) -> dict[str, np.ndarray]:
    """Convert {Flax path: array} into a PyTorch state dict {key: C-contiguous numpy array}.

    Aliases are written only when their entry says `export=True`. Strict: a Flax path that no rule
    maps raises ConversionError; otherwise it is left out with a warning.
    """
    return dict(iter_flax_to_pytorch(flat_params.items(), rules, strict))


def iter_flax_to_pytorch(flat_params: Iterable[tuple[str, Any]], rules: Sequence[Entry],
                         strict: bool = True) -> Iterator[tuple[str, np.ndarray]]:
    """flax_to_pytorch one tensor at a time: (PyTorch key, array) for each (Flax path, array) as it comes, its
    exported aliases right after it (the same array). The report comes once `flat_params` is exhausted."""
    table = _Table(rules)
    problems = _Problems()
    written: set[str] = set()
    for path, value in flat_params:
        rule, groups = table.match_flax(path)
        if rule is None:
            problems.unexpected.append((path, "no rule maps this Flax parameter"))
            continue
        key = rule.pytorch.format(**groups)
        if key in written:
            raise ValueError(f"two Flax parameters map to the PyTorch key {key}: check the rule table")
        written.add(key)
        array = np.ascontiguousarray(rule.transform.to_pytorch(np.asarray(value)))
        yield key, array
        for regex, alias in table.exported_aliases:
            found = regex.fullmatch(key)
            if found:
                yield alias.pytorch.format(**found.groupdict()), array
    problems.settle(strict)


def select_flat(tensors: Iterable[tuple[str, np.ndarray]], target: Mapping[str, Any],
                strict: bool = True) -> dict[str, np.ndarray]:
    """Like pytorch_to_flax for tensors already keyed by Flax path: check names and shapes, cast."""
    return dict(iter_select_flat(tensors, target, strict))


def iter_select_flat(tensors: Iterable[tuple[str, np.ndarray]], target: Mapping[str, Any],
                     strict: bool = True) -> Iterator[tuple[str, np.ndarray]]:
    """select_flat one tensor at a time (see iter_pytorch_to_flax)."""
    problems = _Problems()
    seen: set[str] = set()
    for path, array in tensors:
        seen.add(path)
        if path not in target:
            problems.unexpected.append((path, ""))
        elif array.shape != tuple(target[path].shape):
            problems.mismatched.append(
                (path, f"checkpoint {tuple(array.shape)}, model expects {tuple(target[path].shape)}"))
        else:
            yield path, _to_target(array, target[path])
    problems.missing.extend(sorted((path, "") for path in target.keys() - seen))
    problems.settle(strict)
