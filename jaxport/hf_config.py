"""Model configs as dataclasses under transformers' field names, so config.json files move both ways."""
import dataclasses
import json

# How the backward pass treats a model's layers (jaxport.layers.remat): "none" keeps their activations, "full"
# recomputes each layer from its input, "dots" keeps only its matmul outputs and recomputes the rest.
REMAT_MODES = ("none", "full", "dots")


class HFConfig:
    """Mixin for a dataclass config whose last field is `extra: dict`: keys of config.json the model does not
    use (architectures, task parameters, ...) are kept there and written back unchanged.

    `runtime_keys` (a class attribute) names the fields that say how this port runs rather than what the model is
    (attn_implementation, remat): from_dict takes them, to_dict leaves them out of config.json."""

    runtime_keys: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict):
        values = dict(values)
        if isinstance(values.get("remat"), bool):
            values["remat"] = "full" if values["remat"] else "none"
        extra = dict(values.pop("extra", None) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        extra.update({k: v for k, v in values.items() if k not in names})
        return cls(**{k: v for k, v in values.items() if k in names}, extra=extra)

    @classmethod
    def create(cls, **fields):
        """A config from field values, completed as `from_dict` completes a config.json; unknown names are errors
        (from_dict would keep them in `extra`)."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        return cls.from_dict(fields)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for key in self.runtime_keys:
            values.pop(key)
        return {**values.pop("extra"), **values}

    def check_runtime_keys(self, attn_implementations: tuple[str, ...]) -> None:
        """Validates attn_implementation (one of `attn_implementations`) and remat (REMAT_MODES)."""
        if self.attn_implementation not in attn_implementations:
            raise ValueError(f"attn_implementation={self.attn_implementation!r}: expected one of "
                             f"{attn_implementations}")
        if self.remat not in REMAT_MODES:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT_MODES} (from_dict also takes True / "
                             "False)")

    @classmethod
    def from_json_file(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))
