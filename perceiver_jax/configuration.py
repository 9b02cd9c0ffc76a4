"""Perceiver IO configuration with transformers' field names, so config.json files move both ways.

Only the fields of the text models (masked language modelling, sequence classification) are fields here; the image,
audio and video models' keys (image_size, train_size, num_frames, ...) stay in `extra` and are written back unchanged.
Configs are frozen: change a field with `dataclasses.replace(config, name=value)`.
"""
import dataclasses
from typing import Any

from jaxport.hf_config import HFConfig
from jaxport.layers import ACTIVATIONS

CROSS_ATTENTION_SHAPES = ("q", "kv")


@dataclasses.dataclass(frozen=True)
class PerceiverConfig(HFConfig):
    num_latents: int = 256
    d_latents: int = 1280
    d_model: int = 768  # width of the byte embeddings (the inputs of the encoder's cross-attention)
    num_blocks: int = 1  # how many times the block of self-attention layers runs, with the same weights
    num_self_attends_per_block: int = 26
    num_self_attention_heads: int = 8
    num_cross_attention_heads: int = 8
    qk_channels: int | None = None  # None: the width of the queries (or, in cross-attention, see below)
    v_channels: int | None = None  # None: qk_channels
    # Where the encoder's cross-attention takes qk_channels from when it is None: the queries (latents) or the inputs.
    cross_attention_shape_for_attention: str = "kv"
    self_attention_widening_factor: int = 1
    cross_attention_widening_factor: int = 1
    hidden_act: str = "gelu"
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    # Written to config.json and kept, but transformers' Perceiver builds every LayerNorm with torch's default eps
    # (1e-5), and so does this port (modeling.LAYER_NORM_EPS).
    layer_norm_eps: float = 1e-12
    use_query_residual: bool = True
    vocab_size: int = 262
    max_position_embeddings: int = 2048
    # Classification labels {index: name}, as transformers keeps them; num_labels is their count.
    id2label: dict[int, str] = dataclasses.field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"}, hash=False)
    problem_type: str | None = None  # transformers': "regression", "single_label_classification", ...
    model_type: str = "perceiver"
    # Keys of config.json this model does not use (architectures, image/audio fields, ...), written back unchanged.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        problems = []
        for heads in ("num_self_attention_heads", "num_cross_attention_heads"):
            if self.d_latents % getattr(self, heads):
                problems.append(f"d_latents={self.d_latents} is not divisible by {heads}={getattr(self, heads)}")
        if self.cross_attention_shape_for_attention not in CROSS_ATTENTION_SHAPES:
            problems.append(f"cross_attention_shape_for_attention={self.cross_attention_shape_for_attention!r}: "
                            f"expected one of {CROSS_ATTENTION_SHAPES}")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act={self.hidden_act!r}: expected one of {tuple(ACTIVATIONS)}")
        # A self-attention layer's output has its value width, and the residual and MLP after it the latents' width.
        self_values = self.v_channels or self.qk_channels or self.d_latents
        if self_values != self.d_latents:
            problems.append(f"the self-attention layers' values (v_channels={self.v_channels}, qk_channels="
                            f"{self.qk_channels}) give {self_values} channels; they must give d_latents="
                            f"{self.d_latents}")
        if not self.id2label:
            problems.append("id2label is empty: a classifier needs at least one label")
        if problems:
            raise ValueError("PerceiverConfig: " + "; ".join(problems))

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @classmethod
    def from_dict(cls, values: dict) -> "PerceiverConfig":
        """A config from config.json's values, as transformers reads them: id2label's keys as ints; `num_labels`, when
        given and different from id2label's count, makes labels LABEL_0 ... (label2id is derived from id2label)."""
        values = dict(values)
        values.pop("label2id", None)
        num_labels = values.pop("num_labels", None)
        if values.get("id2label") is not None:
            values["id2label"] = {int(index): name for index, name in values["id2label"].items()}
        else:
            values.pop("id2label", None)
        if num_labels is not None and num_labels != len(values.get("id2label", {0: "", 1: ""})):
            values["id2label"] = {index: f"LABEL_{index}" for index in range(num_labels)}
        return super().from_dict(values)

    @classmethod
    def create(cls, *, num_labels: int | None = None, **fields) -> "PerceiverConfig":
        """A config from field values (and `num_labels`, as transformers' config takes it); unknown names are errors."""
        config = super().create(**fields)
        return config if num_labels is None else cls.from_dict({**config.to_dict(), "num_labels": num_labels})

    def to_dict(self) -> dict:
        values = super().to_dict()
        values["id2label"] = {str(index): name for index, name in self.id2label.items()}
        values["label2id"] = {name: index for index, name in self.id2label.items()}
        return values


# The shape of deepmind/language-perceiver (transformers' PerceiverConfig defaults with the masked-LM checkpoint's
# channels), and a tiny one of the same kind that trains on a CPU: configs/perceiver_mlm.py and perceiver_glue.py.
LANGUAGE_PERCEIVER = dict(
    num_latents=256, d_latents=1280, d_model=768, num_blocks=1, num_self_attends_per_block=26,
    num_self_attention_heads=8, num_cross_attention_heads=8, qk_channels=256, v_channels=1280,
    cross_attention_shape_for_attention="kv", self_attention_widening_factor=1, cross_attention_widening_factor=1,
    hidden_act="gelu", attention_probs_dropout_prob=0.1, initializer_range=0.02, use_query_residual=True,
    vocab_size=262, max_position_embeddings=2048)
TINY_PERCEIVER = dict(LANGUAGE_PERCEIVER, num_latents=32, d_latents=64, d_model=64, num_self_attends_per_block=2,
                      num_self_attention_heads=4, num_cross_attention_heads=4, qk_channels=64, v_channels=64,
                      attention_probs_dropout_prob=0.0, max_position_embeddings=128)
# The paper's optimizer for pre-training and fine-tuning alike (config.optimizer fields; LAMB's trust ratio bounds
# each update, so no clipping); learning rates and warmups differ.
PAPER_LAMB = dict(name="lamb", weight_decay=0.01, eps=1e-6, decay="cosine", clip_norm=0.0)
