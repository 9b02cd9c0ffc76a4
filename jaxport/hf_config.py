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
        return {**values.pop("extra"), **values}

    @classmethod
    def from_json_file(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))
