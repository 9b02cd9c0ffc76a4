"""T5 configuration with transformers' field names, so config.json files move both ways.

Configs are frozen (they hash, so they can be static arguments of jitted functions). Two fields are derived when
left out or None, by `from_dict` and `create`: `num_decoder_layers` (then num_layers) and `scale_decoder_outputs`.
Change a field with `dataclasses.replace(config, name=value)`.
"""
import dataclasses
from typing import Any

from jaxport import attention
from jaxport.hf_config import HFConfig

ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


@dataclasses.dataclass(frozen=True)
class T5Config(HFConfig):
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None (in from_dict / create): num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    # Whether lm_head shares the input embedding (T5 v1.0) or has its own weights (v1.1, ByT5, LM-adapted).
    # transformers 5 writes True for every T5 and leaves a head that the checkpoint holds apart untied:
    # PretrainedModel.from_pretrained does the same (see `tied_head_keys`).
    tie_word_embeddings: bool = True
    # Whether decoder outputs are multiplied by d_model**-0.5 before lm_head (T5 v1.0). transformers 5 writes it;
    # before, it followed tie_word_embeddings, and so does None here (in from_dict / create).
    scale_decoder_outputs: bool | None = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    model_type: str = "t5"
    # How attention runs (a runtime key: not written to config.json, so folders from transformers get the default):
    # "einsum" (scores in float32, attention dropout), "xla" / "cudnn" (jax.nn.dot_product_attention with the
    # relative-position bias and the mask kept apart; cuDNN flash attention computes in bf16 even for a float32
    # model), or "auto": cudnn on an NVIDIA GPU when the model computes in bf16/fp16, einsum on a CPU or TPU, for
    # float32 models and in training with dropout. Resolved per forward pass by jaxport.attention.resolve;
    # incremental decoding always runs the einsums.
    attn_implementation: str = "auto"
    # Encoder and decoder layers in the backward pass (a runtime key): jaxport.hf_config.REMAT_MODES.
    remat: str = "none"
    # Keys of config.json this model does not use (architectures, task params, ...), written back unchanged.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    runtime_keys = ("attn_implementation", "remat")

    def __post_init__(self):
        self.check_runtime_keys(attention.IMPLEMENTATIONS)
        for name in ("num_decoder_layers", "scale_decoder_outputs"):
            if getattr(self, name) is None:
                raise ValueError(f"{type(self).__name__}({name}=None): build it with {type(self).__name__}.create"
                                 f"(...) or .from_dict(...), which derive {name}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or self.activation not in ACTIVATIONS:
            raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r}: expected 'ACT' or 'gated-ACT' "
                             f"with ACT one of {ACTIVATIONS}")

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        # transformers maps "gated-gelu" to the tanh approximation, which T5 v1.1 was trained with.
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    @classmethod
    def from_dict(cls, values: dict) -> "T5Config":
        """A config from config.json's values, as transformers reads them: num_decoder_layers defaults to
        num_layers; scale_decoder_outputs as written (transformers 5), else as tie_word_embeddings (transformers 4).
        tie_word_embeddings is kept as written: whether the head is really tied also depends on the checkpoint
        (PretrainedModel.folder_config)."""
        values = dict(values)
        defaults = {field.name: field.default for field in dataclasses.fields(cls)}
        given = {**defaults, **values}
        if given["num_decoder_layers"] is None:
            values["num_decoder_layers"] = given["num_layers"]
        if given["scale_decoder_outputs"] is None:
            values["scale_decoder_outputs"] = given["tie_word_embeddings"]
        return super().from_dict(values)
