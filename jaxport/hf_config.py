"""Model configs as dataclasses under transformers' field names, so config.json files move both ways."""
import dataclasses
import json


class HFConfig:
    """Mixin for a dataclass config whose last field is `extra: dict`: keys of config.json the model does not
    use (architectures, task parameters, ...) are kept there and written back unchanged."""

    @classmethod
    def from_dict(cls, values: dict):
        values = dict(values)
        extra = dict(values.pop("extra", None) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        extra.update({k: v for k, v in values.items() if k not in names})
        return cls(**{k: v for k, v in values.items() if k in names}, extra=extra)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {**values.pop("extra"), **values}

    @classmethod
    def from_json_file(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))
