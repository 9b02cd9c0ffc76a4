"""T5 configuration with transformers' field names, so config.json files move both ways."""
import dataclasses
from typing import Any

from jaxport.hf_config import HFConfig

ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu")


@dataclasses.dataclass
class T5Config(HFConfig):
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    # Whether lm_head shares the input embedding (T5 v1.0) or has its own weights (v1.1, ByT5, LM-adapted).
    tie_word_embeddings: bool = True
    # T5 v1.0 rescales decoder outputs by d_model**-0.5 before the tied lm_head; None follows the tying.
    scale_decoder_outputs: bool | None = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    model_type: str = "t5"
    # Keys of config.json this model does not use (architectures, task params, ...), written back unchanged.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
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
        values = dict(values)
        # transformers 5 always writes tie_word_embeddings=True and records the v1.0/v1.1 split in
        # scale_decoder_outputs; an unscaled T5 has its own lm_head.
        if values.get("scale_decoder_outputs") is False:
            values["tie_word_embeddings"] = False
        return super().from_dict(values)
