"""Config files and command-line overrides.

A config file is plain Python with `get_config(arg=None) -> ml_collections.ConfigDict` (as in big_vision);
`path.py:arg` passes `arg`. Overrides are `--config.a.b=value`; the value is parsed to the type the key
already has, and a key that does not exist is an error naming the closest valid keys.
"""
import ast
import difflib
import importlib.util
from pathlib import Path

import ml_collections

# Keys every training config has, with these names, so users and tools can rely on them.
REQUIRED_KEYS = ("seed", "train.num_steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
                 "train.eval_every")


class ConfigError(ValueError):
    pass


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


def unknown_key_error(key: str, config) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(config), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


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
    with node.unlocked():
        node[leaf] = value


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Load `path.py[:arg]` and apply `a.b=value` overrides; the result is locked (no new keys)."""
    config = load_config_file(spec)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form --config.KEY=VALUE")
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
