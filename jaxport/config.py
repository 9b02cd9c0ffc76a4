"""Config files and command-line overrides.

A config file is plain Python with `get_config(arg=None) -> ml_collections.ConfigDict` (as in big_vision);
`path.py:arg` passes `arg`. Overrides are `--config.a.b=value`; the value is parsed to the type the key
already has, and a key that does not exist is an error naming the closest valid keys.

A typed section (the `data` section, typed by `data.source`) has the keys of the dataclass its selector names, its
kind: `typed_section(TsvData, train_path=...)` builds one, and overriding the selector (`--config.data.source=jsonl`)
swaps the keys for the new kind's, before any other override is applied.
"""
import ast
import dataclasses
import difflib
import importlib.util
from pathlib import Path

import ml_collections

# Keys every training config has, with these names, so users and tools can rely on them.
REQUIRED_KEYS = ("seed", "train.num_steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
                 "train.eval_every")


# {section: (selector key, {selector value: the dataclass, or kind, whose fields are the section's other keys})}.
# Kinds are registered by the modules that define them (jaxport.data; a family's own data sources).
TYPED_SECTIONS: dict[str, tuple[str, dict[str, type]]] = {}


class ConfigError(ValueError):
    pass


def section_kind(section: str, selector: str, name: str):
    """Class decorator: the dataclass's fields are the keys, with their defaults, of `section` when its `selector`
    is `name`."""
    def register(kind: type) -> type:
        known_selector, kinds = TYPED_SECTIONS.setdefault(section, (selector, {}))
        if known_selector != selector:
            raise ValueError(f"{section} is typed by {section}.{known_selector}, not {section}.{selector}")
        if kinds.setdefault(name, kind) is not kind:
            raise ValueError(f"{section}.{selector}={name!r} is {kinds[name].__name__} already")
        return kind
    return register


def _registration(kind: type) -> tuple[str, str, str]:
    for section, (selector, kinds) in TYPED_SECTIONS.items():
        for name, registered in kinds.items():
            if registered is kind:
                return section, selector, name
    raise ValueError(f"{kind.__name__} is not a registered section kind (see section_kind)")


def typed_section(kind: type, **values) -> ml_collections.ConfigDict:
    """The section of `kind`: its selector, then every field of `kind`, at its default unless given in `values`.

    A dict-valued field (a sub-section) takes the given dict's keys over its default's. A key `kind` lacks, and a
    field without default left out, are ConfigErrors.
    """
    section, selector, name = _registration(kind)
    fields = {field.name: field for field in dataclasses.fields(kind)}
    for key in values:
        if key not in fields:
            raise unknown_section_key(section, key, selector, name)
    missing = [key for key, field in fields.items() if key not in values and _default(field) is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{section}.{selector}={name!r} needs {', '.join(f'{section}.{key}' for key in missing)}")
    content = {selector: name}
    for key, field in fields.items():
        content[key] = _merged(f"{section}.{key}", _default(field), values[key]) if key in values else _default(field)
    return ml_collections.ConfigDict(content)


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _merged(key: str, default, value):
    if not isinstance(default, dict):
        return value
    value = dict(value)
    valid = [f"{key}.{name}" for name in default]
    for name in value:
        if name not in default:
            raise ConfigError(f"unknown config key {f'{key}.{name}'!r}{_closest_hint(f'{key}.{name}', valid)}")
    return {**default, **value}


def section_object(section: str, config_section: ml_collections.ConfigDict):
    """A typed section as an instance of its kind (nested sections stay ConfigDicts)."""
    selector, kinds = TYPED_SECTIONS[section]
    values = {key: value for key, value in config_section.items() if key != selector}
    return kinds[config_section[selector]](**values)


def retyped(section: str, config_section: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The section as the kind `name`: values set away from the old kind's defaults carry over to the keys the new
    kind has too (tokenizer, lengths...); every other key takes the new kind's default."""
    selector, kinds = TYPED_SECTIONS[section]
    if name not in kinds:
        raise ConfigError(f"{section}.{selector}={name!r} is not one of {sorted(kinds)} (a family's kinds exist "
                          "once its config imports them)")
    old_defaults = {field.name: _default(field) for field in dataclasses.fields(kinds[config_section[selector]])}
    new_keys = {field.name for field in dataclasses.fields(kinds[name])}
    carried = {key: value for key, value in config_section.items()
               if key in new_keys and _plain(value) != old_defaults[key]}
    return typed_section(kinds[name], **carried)


def _plain(value):
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg=None)")
    config = module.get_config(arg) if arg else module.get_config()
    check_required_keys(config, path)
    return config


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(all_keys(value, f"{name}."))
    return keys


def check_required_keys(config, source: str) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in all_keys(config)]
    if missing:
        raise ConfigError(f"{source} lacks the required keys {missing}")


def _closest_hint(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def unknown_key_error(key: str, config) -> ConfigError:
    section, _, leaf = key.partition(".")
    if section in TYPED_SECTIONS and section in config and leaf and "." not in leaf:
        selector = TYPED_SECTIONS[section][0]
        if selector in config[section]:
            return unknown_section_key(section, leaf, selector, config[section][selector])
    return ConfigError(f"unknown config key {key!r}{_closest_hint(key, all_keys(config))}")


def unknown_section_key(section: str, key: str, selector: str, name: str) -> ConfigError:
    """`section.key` is not a key of the kind `name`: the error lists the valid keys, and names the kinds that have
    the key, or else the closest valid keys."""
    kinds = TYPED_SECTIONS[section][1]
    valid = [f"{section}.{field.name}" for field in dataclasses.fields(kinds[name])]
    owners = [other for other, kind in kinds.items() if key in {field.name for field in dataclasses.fields(kind)}]
    owned = f" (a key of {section}.{selector}={' or '.join(map(repr, owners))})" if owners else ""
    hint = "" if owners else _closest_hint(f"{section}.{key}", valid)
    return ConfigError(f"unknown config key {f'{section}.{key}'!r} for {section}.{selector}={name!r}{owned}; "
                       f"its keys are {', '.join(valid)}{hint}")


def parse_value(text: str, current):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"expected a boolean, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ConfigError(f"cannot parse {text!r} as {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise unknown_key_error(key, config)
        node = node[part]
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
        raise unknown_key_error(key, config)
    try:
        value = parse_value(text, node[leaf])
    except ConfigError as e:
        raise ConfigError(f"--config.{key}: {e}") from None
    if _is_selector(key):
        with config.unlocked():
            config[parents[0]] = retyped(parents[0], node, value)
        return
    with node.unlocked():
        node[leaf] = value


def _is_selector(key: str) -> bool:
    section, _, leaf = key.partition(".")
    return section in TYPED_SECTIONS and leaf == TYPED_SECTIONS[section][0]


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Load `path.py[:arg]` and apply `a.b=value` overrides; the result is locked (no new keys)."""
    config = load_config_file(spec)
    pairs = []
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form --config.KEY=VALUE")
        pairs.append((key, text))
    # Selectors first: `data.source=jsonl data.train_path=x` and `data.train_path=x data.source=jsonl` agree.
    for key, text in sorted(pairs, key=lambda pair: not _is_selector(pair[0])):
        apply_override(config, key, text)
    config.lock()
    return config


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.a.b=value` overrides (returned without the prefix) from the other arguments."""
    overrides, rest = [], []
    for arg in argv:
        if arg.startswith("--config."):
            overrides.append(arg[len("--config."):])
        else:
            rest.append(arg)
    return overrides, rest
