"""LSG-BART configuration: BART's fields plus the LSG ones, under the original's names, so config.json files
written by the PyTorch LSG-BART (model_type "bart" with LSG keys, or "lsg_bart") or by plain BART move both ways.

A config without any LSG key describes plain BART (full attention, no global tokens).
"""
import dataclasses
import warnings
from typing import Any

from jaxport import attention
from jaxport.hf_config import HFConfig

SPARSITY_TYPES = (None, "none", "norm", "pooling", "lsh", "stride", "block_stride", "bos_pooling")
ACTIVATIONS = ("gelu", "relu", "gelu_new", "silu")
LSG_KEYS = ("adaptive", "block_size", "lsh_num_pre_rounds", "mask_first_token", "num_global_tokens",
            "pass_global_tokens_to_decoder", "pool_with_global", "sparse_block_size", "sparsity_factor",
            "sparsity_type")
MAX_GLOBAL_TOKENS = 512  # rows of the original's global embedding table
POSITION_OFFSET = 2  # BART's learned positions start at row 2
ATTN_IMPLEMENTATIONS = (*attention.IMPLEMENTATIONS, "pallas")


@dataclasses.dataclass(frozen=True)
class LSGBartConfig(HFConfig):
    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    d_model: int = 1024
    encoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_layers: int = 12
    decoder_ffn_dim: int = 4096
    decoder_attention_heads: int = 16
    activation_function: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    # LayerDrop: in training, each layer is skipped with this probability (BART's encoder/decoder_layerdrop).
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = False
    tie_word_embeddings: bool = True
    # Encoder and decoder token embeddings of their own, apart from `shared`: transformers 5 keeps them so in a BART
    # with tie_word_embeddings=False (transformers 4 always used `shared`). from_pretrained sets it from the
    # checkpoint (LSGBartModel.folder_config).
    separate_token_embeddings: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    # Generation defaults stored in BART config.json files (None: transformers' defaults).
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = 2
    max_length: int | None = None
    min_length: int | None = None
    num_beams: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    early_stopping: bool | str | None = None
    # LSG (ignored when lsg is False)
    lsg: bool = True
    adaptive: bool = True
    block_size: int = 128
    lsh_num_pre_rounds: int = 1
    mask_first_token: bool = False
    num_global_tokens: int = 1
    pass_global_tokens_to_decoder: bool = True
    pool_with_global: bool = True
    sparse_block_size: int = 128
    sparsity_factor: int = 2
    sparsity_type: str | None = "norm"
    model_type: str = "bart"
    # How the attention runs (a runtime key, not written to config.json; lsg_jax.dispatch.resolve picks per forward
    # pass): "einsum" (lsg_jax.attention's blocked einsums), "xla" / "cudnn" (lsg_jax.fused_attention through
    # jax.nn.dot_product_attention), "pallas" (lsg_jax.pallas_attention: Triton kernels reading keys in place,
    # forward and backward, for LSG attention without sparse keys and for the decoder's cross-attention in training),
    # "auto" (on an NVIDIA GPU when the model computes in bf16/fp16 and the head dim suits cuDNN: pallas where its
    # kernels apply, cudnn for the rest; einsum on a CPU or TPU and for float32 models, whose attention stays
    # float32). All give the same result up to rounding, but an explicit "cudnn" or "pallas" on a GPU computes
    # attention in bfloat16 even for a float32 model.
    attn_implementation: str = "auto"
    # Encoder layers in the backward pass (jaxport.hf_config.REMAT_MODES): "none" keeps their activations; "full"
    # recomputes each layer from its input; "dots" keeps only the matmul outputs and recomputes the rest (attention,
    # GELU, LayerNorm, dropout masks). Training memory for compute; the same numbers. from_dict also takes True /
    # False ("full" / "none").
    remat: str = "none"
    # Keys of config.json this model does not use (architectures, auto_map, task params...), written back unchanged.
    # Left out of the hash (a dict has none), so that the config can be a static argument to jit.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    runtime_keys = ("attn_implementation", "remat")

    def __post_init__(self):
        """Validation only: from_dict normalises what the original accepts with a warning."""
        self.check_runtime_keys(ATTN_IMPLEMENTATIONS)
        if self.sparsity_type not in SPARSITY_TYPES:
            raise ValueError(f"sparsity_type={self.sparsity_type!r} is not supported; valid: "
                             f"{', '.join(map(repr, SPARSITY_TYPES))}")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r}: expected one of {ACTIVATIONS}")
        if self.d_model % self.encoder_attention_heads or self.d_model % self.decoder_attention_heads:
            raise ValueError("d_model must be divisible by the numbers of attention heads")
        if not self.lsg:
            return
        if not 1 <= self.num_global_tokens <= MAX_GLOBAL_TOKENS:
            raise ValueError(f"num_global_tokens={self.num_global_tokens}: expected 1 to {MAX_GLOBAL_TOKENS}")
        if self.sparsity_factor > 0 and (self.block_size % self.sparsity_factor
                                         or self.block_size < self.sparsity_factor):
            raise ValueError(f"block_size ({self.block_size}) must be a multiple of sparsity_factor "
                             f"({self.sparsity_factor})")
        if self.mask_first_token and not self.pool_with_global:
            raise ValueError("mask_first_token=True needs pool_with_global=True")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def has_sparse(self) -> bool:
        return (self.lsg and self.sparsity_type not in (None, "none") and bool(self.sparse_block_size)
                and self.sparsity_factor > 0)

    @classmethod
    def from_dict(cls, values: dict) -> "LSGBartConfig":
        """A config from config.json's keys (and runtime keys), normalised as the original normalises them."""
        values = dict(values)
        if "lsg" not in values:
            architectures = values.get("architectures") or []
            values["lsg"] = (values.get("model_type") == "lsg_bart" or any(key in values for key in LSG_KEYS)
                             or any(str(name).startswith("LSG") for name in architectures))
        return super().from_dict(_normalised(values))

    def to_dict(self) -> dict:
        values = super().to_dict()
        lsg = values.pop("lsg")
        if not lsg:
            for key in LSG_KEYS:
                values.pop(key)
        # None generation defaults are left out, as transformers leaves out defaults.
        return {k: v for k, v in values.items() if v is not None or k in ("sparsity_type", "forced_bos_token_id")}


def _normalised(values: dict) -> dict:
    """values with, for LSG, what the original clamps with a warning clamped the same way (so that its config.json
    files load as it loads them)."""
    values = dict(values)
    if not values["lsg"]:
        return values
    defaults = {field.name: field.default for field in dataclasses.fields(LSGBartConfig)}
    value = lambda key: values.get(key, defaults[key])
    if value("num_global_tokens") < 1:
        warnings.warn("num_global_tokens < 1 is not compatible, setting num_global_tokens=1")
        values["num_global_tokens"] = 1
    elif value("num_global_tokens") > MAX_GLOBAL_TOKENS:
        warnings.warn(f"num_global_tokens > {MAX_GLOBAL_TOKENS} is not allowed, setting it to {MAX_GLOBAL_TOKENS}")
        values["num_global_tokens"] = MAX_GLOBAL_TOKENS
    if value("mask_first_token") and not value("pool_with_global"):
        warnings.warn("pool_with_global=False is not compatible with mask_first_token=True; "
                      "setting pool_with_global=True")
        values["pool_with_global"] = True
    return values
