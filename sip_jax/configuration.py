"""SIP's two configurations, under the original's names and defaults.

The original's Hub classes (sip/fst_pretrain.py:147-168 `SIPPreTrainingConfig`, sip/embed_finetune.py:175-193
`SIPFinetuningModelConfig` in github.com/namednil/sip) subclass transformers' T5Config, so their config.json
holds the T5 fields at the top level beside the SIP fields, with `model_type` "sip_pretrain" / "sip_finetune".
These classes do the same on top of t5_jax's T5Config: `from_dict` reads such a file (unknown keys such as
`architectures` or `auto_map` are kept in `extra` and written back), `to_dict` writes one.

A nested layout ({"t5": {...}} or {"t5_config": {...}}) is accepted on reading too, for files written by
other tools; it is flattened, and `to_dict` always writes the original's flat layout.

As T5Config, the configs are frozen and derive num_decoder_layers and scale_decoder_outputs in `from_dict` and
`create`; change a field with dataclasses.replace.
"""
import dataclasses

from t5_jax.configuration import T5Config

_NESTED_T5_KEYS = ("t5", "t5_config")


def _flatten_nested_t5(values: dict) -> dict:
    values = dict(values)
    for key in _NESTED_T5_KEYS:
        nested = values.pop(key, None)
        if isinstance(nested, dict):
            nested = {k: v for k, v in nested.items() if k != "model_type"}
            values = {**nested, **values}
    return values


def _check_model_type(cls, values: dict) -> None:
    found = values.get("model_type")
    expected = cls.model_type_default
    if found is not None and found != expected:
        hint = ""
        if found == "sip_pretrain" and expected == "sip_finetune":
            hint = (" A pre-training checkpoint becomes a fine-tuning one with `python -m convert sip_finetune SRC DST "
                    "--from-pretraining` (sip_jax.convert.finetuning_from_pretraining).")
        raise ValueError(f"{cls.__name__} reads config.json files with model_type {expected!r}, got {found!r}.{hint}")


def _t5_values(config: T5Config) -> dict:
    """The values of the T5 fields of a (SIP) config, but model_type and extra."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(T5Config)
            if f.name not in ("model_type", "extra")}


@dataclasses.dataclass(frozen=True)
class _SIPConfigBase(T5Config):
    model_type_default = "sip"  # overridden by the concrete classes (a class attribute, not a field)

    @classmethod
    def from_dict(cls, values: dict):
        values = _flatten_nested_t5(values)
        _check_model_type(cls, values)
        values["model_type"] = cls.model_type_default
        return super().from_dict(values)

    def t5_config(self) -> T5Config:
        """The shared T5's part of this configuration, as a plain T5Config."""
        return T5Config(**_t5_values(self))


@dataclasses.dataclass(frozen=True)
class SIPPreTrainingConfig(_SIPConfigBase):
    """T5 plus the FST encoder (sip/fst_pretrain.py:151-168; defaults as there)."""

    num_states: int = 16  # the last state id is the padding state (sip/data_loading.py:62-63, 86-87)
    fst_tokenizer_vocab_size: int = 308  # size of unicode_char_tokenizer_ipa.json
    state_embedding_dim: int = 64
    token_embedding_dim: int = 256
    mlp_hidden_dim: int | None = None  # None: one linear layer to d_model; else Linear-GELU-Dropout(0.1)-Linear
    final_state_embedding_dim: int = 0
    num_final_state_info: int = 3  # flag values: 0 padding, 1 not final, 2 final (sip/data_gen/utils.py:22-24)
    model_type: str = "sip_pretrain"

    model_type_default = "sip_pretrain"

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_states", "fst_tokenizer_vocab_size", "state_embedding_dim", "token_embedding_dim",
                     "num_final_state_info"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_states < 2:
            raise ValueError("num_states must be at least 2: the last state id is reserved for padding")
        if self.final_state_embedding_dim < 0:
            raise ValueError(f"final_state_embedding_dim must be >= 0, got {self.final_state_embedding_dim}")
        if self.mlp_hidden_dim is not None and self.mlp_hidden_dim < 1:
            raise ValueError(f"mlp_hidden_dim must be positive or None, got {self.mlp_hidden_dim}")

    @property
    def transition_features(self) -> int:
        """Width of one transition's concatenated embeddings: from, to, input, output[, final flag]."""
        return 2 * self.state_embedding_dim + 2 * self.token_embedding_dim + self.final_state_embedding_dim

    @property
    def padding_state(self) -> int:
        return self.num_states - 1


@dataclasses.dataclass(frozen=True)
class SIPFinetuningConfig(_SIPConfigBase):
    """T5 plus a tunable prefix (sip/embed_finetune.py:179-193; defaults as there)."""

    num_examples: int = 32  # how many pre-computed FST encodings are averaged into the prefix
    prefix_length: int = 50
    random_selection: bool = True  # average a random choice of them rather than the first num_examples
    prefix_max_init_length: int = 70  # transitions per pre-computed encoding (axis 1 of prefix_init_tensor)
    num_precomputed_examples: int = 400  # encodings stored (axis 0 of prefix_init_tensor)
    model_type: str = "sip_finetune"

    model_type_default = "sip_finetune"

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_examples", "prefix_length", "prefix_max_init_length", "num_precomputed_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def finetuning_config_from_pretraining(config: SIPPreTrainingConfig, **sip_fields) -> SIPFinetuningConfig:
    """The fine-tuning configuration of a converted pre-training model: the same T5, the given prefix
    settings (num_examples, prefix_length, random_selection, prefix_max_init_length, num_precomputed_examples)."""
    extra = {k: v for k, v in config.extra.items() if k not in ("architectures", "auto_map")}
    return SIPFinetuningConfig(**_t5_values(config), **sip_fields, extra=extra)


# T5 shapes the training configs (configs/sip_pretrain.py, configs/sip_finetune.py) build SIP models in; a
# fine-tuning config must use its pre-training model's shape. `small` is the model of the small-scale
# reproduction in bench/sip_claim.py (9.2M parameters with the FST encoder).
T5_SHAPES = {
    "tiny": dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                 dropout_rate=0.0),
    "small": dict(vocab_size=384, d_model=256, d_kv=64, d_ff=1024, num_layers=6, num_decoder_layers=2,
                  num_heads=4, dropout_rate=0.0),
    "byt5_small": dict(vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_decoder_layers=4,
                       num_heads=6, dropout_rate=0.1),
}
