"""GPT-2 and Backpack-GPT2 configurations under transformers' / the authors' field names, so config.json files move
both ways.

Backpack's config is GPT-2's plus `num_senses` and `sense_intermediate_scale` (the authors' BackpackGPT2Config
subclasses transformers' GPT2Config); its folders say model_type "backpack-gpt2" or, as the authors' class writes
it, "gpt2": model_type is written back as found, and not checked: what tells a checkpoint of one model from another
is its keys (from_pretrained names every one that does not fit). Keys neither class uses (GPT-2's summary_* fields,
architectures, auto_map, ...) are kept in `extra` and written back unchanged. Frozen, hence hashable (a static jit
argument); change a field with dataclasses.replace.
"""
import dataclasses
from typing import Any

from jaxport import attention
from jaxport.hf_config import HFConfig

ACTIVATIONS = ("gelu_new", "gelu", "relu", "silu")
ATTN_IMPLEMENTATIONS = (*attention.IMPLEMENTATIONS, "pallas")


def _token_ids(value):
    """A token id or several (a list in config.json) -> int or tuple, so that the config hashes."""
    return tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class GPT2Config(HFConfig):
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True  # scores / sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and / (layer index + 1)
    # Only where the scores are computed (in float32 with the scale applied to q.k): ours always are in float32.
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | tuple[int, ...] | None = 50256
    eos_token_id: int | tuple[int, ...] | None = 50256
    pad_token_id: int | None = None
    model_type: str = "gpt2"
    # How attention runs (runtime keys, not written to config.json): jaxport.attention's names, or "pallas"
    # (jaxport.causal_attention: flash attention's Pallas kernels with the attention dropout inside, the einsums'
    # mask; heads of a power of two >= 16). "auto", on an NVIDIA GPU when the model computes in bf16/fp16: "pallas"
    # in training, cuDNN's causal flash attention outside it; the einsums otherwise. Decoding with a cache always
    # runs the einsums. Backpack's sense weights are returned as they are computed, so they stay einsums.
    attn_implementation: str = "auto"
    # The contextualization blocks in the backward pass: jaxport.hf_config.REMAT_MODES.
    remat: str = "none"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    runtime_keys = ("attn_implementation", "remat")

    def __post_init__(self):
        self.check_runtime_keys(ATTN_IMPLEMENTATIONS)
        for name in ("bos_token_id", "eos_token_id"):
            object.__setattr__(self, name, _token_ids(getattr(self, name)))
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r}: expected one of {ACTIVATIONS}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.add_cross_attention:
            raise ValueError("add_cross_attention=True (GPT-2 as a decoder of an encoder-decoder) is not supported")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner


@dataclasses.dataclass(frozen=True)
class BackpackGPT2Config(GPT2Config):
    """The authors' defaults (stanfordnlp/backpack-gpt2): GPT-2 small's contextualization network with 512
    positions, inverse-layer attention scaling, a 50264-token vocabulary and 16 senses."""

    vocab_size: int = 50264
    n_positions: int = 512
    scale_attn_by_inverse_layer_idx: bool = True
    num_senses: int = 16
    sense_intermediate_scale: int = 4  # the sense network's last MLP is n_embd -> scale * n_embd -> num_senses * n_embd
    model_type: str = "backpack-gpt2"  # as found in config.json: "backpack-gpt2" or, from the authors' class, "gpt2"

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.num_senses <= self.n_embd:
            raise ValueError(f"num_senses must lie in [1, n_embd={self.n_embd}], got {self.num_senses}")
        if self.sense_intermediate_scale < 1:
            raise ValueError(f"sense_intermediate_scale must be positive, got {self.sense_intermediate_scale}")

    @property
    def sense_head_dim(self) -> int:
        """Width of each sense's query and key in the weight network (the original's embed_dim // num_senses)."""
        return self.n_embd // self.num_senses
