"""Package exports imported on first use, so that importing one light module of a package (its command-line
options, its FST generator) does not load JAX and the models."""
import importlib
from typing import Any, Callable


def exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `names[name]` (a module path) when `name` is first read."""
    def getattr_(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr_
