"""Perceiver IO for text in Flax NNX, numerically matching transformers' PyTorch PerceiverForMaskedLM and
PerceiverForSequenceClassification.

Bytes are embedded with trainable positions; one cross-attention writes them into `num_latents` latent vectors; a
block of `num_self_attends_per_block` self-attention layers runs `num_blocks` times over the latents, with the same
weights each time; a decoder cross-attends from its queries to the latents. The masked-language model's queries are
the output positions' trainable embeddings, its logits the decoded vectors against the (tied) byte embeddings plus a
bias; the classifier decodes one trainable query and projects it to the labels.

Every layer is pre-LayerNorm: attention (queries normalised, and in cross-attention the keys/values' inputs too, with
a residual onto the queries unless the layer says not), then an MLP with its own LayerNorm and residual.
Parameters carry logical axes (embed, heads, kv, mlp, vocab).
"""
import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jaxport.hf import PretrainedModel
from jaxport.layers import (
    ACTIVATIONS,
    Dense,
    Embed,
    LayerNorm,
    dot_product_attention,
    float32_matmuls,
    normal_param,
    padding_mask,
    split_rng,
)
from perceiver_jax.configuration import PerceiverConfig
from perceiver_jax.convert import masked_lm_rules, sequence_classification_rules

# transformers builds every Perceiver LayerNorm as nn.LayerNorm(width): torch's default eps, not config.layer_norm_eps.
LAYER_NORM_EPS = 1e-5
# transformers' PerceiverForMaskedLM fixes its decoder's cross-attention to 8 heads of 32 query/key channels.
MLM_DECODER_HEADS, MLM_DECODER_QK_CHANNELS = 8, 8 * 32


@flax.struct.dataclass
class PerceiverMaskedLMOutput:
    logits: jax.Array  # [B, S, vocab_size], float32
    last_hidden_state: jax.Array  # the latents [B, num_latents, d_latents]


@flax.struct.dataclass
class PerceiverClassifierOutput:
    logits: jax.Array  # [B, num_labels], float32
    last_hidden_state: jax.Array  # the latents [B, num_latents, d_latents]


def _channels(what: str, channels: int, heads: int) -> int:
    if channels % heads:
        raise ValueError(f"{what}: {channels} channels are not divisible by {heads} heads")
    return channels // heads


class PerceiverLayer(nnx.Module):
    """Attention from queries of width `q_dim` (to inputs of width `kv_dim` in cross-attention, else to themselves)
    with `qk_channels` query/key and `v_channels` value channels over `num_heads` heads, then an MLP widened by
    `widening_factor`; a layer's output has the queries' width."""

    def __init__(self, config: PerceiverConfig, *, is_cross_attention: bool, q_dim: int, kv_dim: int, qk_channels: int,
                 v_channels: int, num_heads: int, widening_factor: int, use_query_residual: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        std = config.initializer_range
        qk_head = _channels("query/key projections", qk_channels, num_heads)
        v_head = _channels("value projection", v_channels, num_heads)
        self.attention_norm = LayerNorm(q_dim, LAYER_NORM_EPS, **kw)
        if is_cross_attention:
            self.inputs_norm = LayerNorm(kv_dim, LAYER_NORM_EPS, **kw)
        self.query = Dense((q_dim,), (num_heads, qk_head), ("embed", "heads", "kv"), std, use_bias=True, **kw)
        self.key = Dense((kv_dim,), (num_heads, qk_head), ("embed", "heads", "kv"), std, use_bias=True, **kw)
        self.value = Dense((kv_dim,), (num_heads, v_head), ("embed", "heads", "kv"), std, use_bias=True, **kw)
        self.out = Dense((num_heads, v_head), (q_dim,), ("heads", "kv", "embed"), std, use_bias=True, **kw)
        self.mlp_norm = LayerNorm(q_dim, LAYER_NORM_EPS, **kw)
        self.dense1 = Dense((q_dim,), (widening_factor * q_dim,), ("embed", "mlp"), std, use_bias=True, **kw)
        self.dense2 = Dense((widening_factor * q_dim,), (q_dim,), ("mlp", "embed"), std, use_bias=True, **kw)
        self.is_cross_attention = is_cross_attention
        self.use_query_residual = use_query_residual
        self.act = ACTIVATIONS[config.hidden_act]
        self.dropout_rate = config.attention_probs_dropout_prob

    def __call__(self, x: jax.Array, inputs: jax.Array | None = None, mask: jax.Array | None = None,
                 rng=None) -> jax.Array:
        """x [B, T, q_dim]; inputs [B, S, kv_dim] (cross-attention) and the boolean mask of the keys to attend to
        (broadcastable to [B, heads, T, S]; None: all)."""
        queries = self.attention_norm(x)
        inputs = self.inputs_norm(inputs) if self.is_cross_attention else queries
        attended = dot_product_attention(self.query(queries), self.key(inputs), self.value(inputs), mask,
                                         dropout_rate=self.dropout_rate, rng=rng)
        h = self.out(attended)
        if self.use_query_residual:
            h = h + x
        return h + self.dense2(self.act(self.dense1(self.mlp_norm(h))))


class PerceiverEncoder(nnx.Module):
    """Cross-attention from the latents to the inputs, then the block of self-attention layers num_blocks times."""

    def __init__(self, config: PerceiverConfig, kv_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.d_latents
        # Without qk_channels, the cross-attention's query/key width is the inputs' ("kv") or the latents' ("q").
        qk = config.qk_channels or (kv_dim if config.cross_attention_shape_for_attention == "kv" else d)
        self.cross_attention = PerceiverLayer(
            config, is_cross_attention=True, q_dim=d, kv_dim=kv_dim, qk_channels=qk, v_channels=config.v_channels or qk,
            num_heads=config.num_cross_attention_heads, widening_factor=config.cross_attention_widening_factor,
            use_query_residual=config.use_query_residual, **kw)
        qk = config.qk_channels or d
        self.self_attends = nnx.List([PerceiverLayer(
            config, is_cross_attention=False, q_dim=d, kv_dim=d, qk_channels=qk, v_channels=config.v_channels or qk,
            num_heads=config.num_self_attention_heads, widening_factor=config.self_attention_widening_factor,
            use_query_residual=True, **kw) for _ in range(config.num_self_attends_per_block)])
        self.num_blocks = config.num_blocks

    def __call__(self, latents: jax.Array, inputs: jax.Array, attention_mask: jax.Array, rng=None) -> jax.Array:
        rngs = split_rng(rng, 1 + self.num_blocks * len(self.self_attends))
        x = self.cross_attention(latents, inputs, padding_mask(attention_mask), rngs[0])
        layers = [layer for _ in range(self.num_blocks) for layer in self.self_attends]  # shared across blocks
        for layer, layer_rng in zip(layers, rngs[1:], strict=True):
            x = layer(x, rng=layer_rng)
        return x


class PerceiverTextPreprocessor(nnx.Module):
    """Byte embeddings plus trainable position embeddings."""

    def __init__(self, config: PerceiverConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        std = config.initializer_range
        self.embeddings = Embed(config.vocab_size, config.d_model, ("vocab", "embed"), std, **kw)
        self.position_embeddings = Embed(config.max_position_embeddings, config.d_model, (None, "embed"), std, **kw)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return self.embeddings(inputs) + self.position_embeddings.embedding[:inputs.shape[1]].astype(
            self.embeddings.dtype)


class PerceiverBasicDecoder(nnx.Module):
    """Cross-attention from `num_queries` trainable queries of width `num_channels` to the latents, then (if
    `output_num_channels`) a projection to that width. The caller picks how many queries to decode."""

    def __init__(self, config: PerceiverConfig, *, num_queries: int, num_channels: int, qk_channels: int,
                 v_channels: int, num_heads: int, use_query_residual: bool, output_num_channels: int | None = None,
                 dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.output_position_encodings = normal_param(rngs, (num_queries, num_channels), config.initializer_range,
                                                      (None, "embed"), param_dtype)
        self.decoding_cross_attention = PerceiverLayer(
            config, is_cross_attention=True, q_dim=num_channels, kv_dim=config.d_latents, qk_channels=qk_channels,
            v_channels=v_channels, num_heads=num_heads, widening_factor=1, use_query_residual=use_query_residual,
            **kw)
        if output_num_channels is not None:
            self.final_layer = Dense((num_channels,), (output_num_channels,), ("embed", None),
                                     config.initializer_range, use_bias=True, **kw)
        self.final_project = output_num_channels is not None
        self.dtype = dtype

    def __call__(self, latents: jax.Array, num_queries: int, rng=None) -> jax.Array:
        """[B, num_queries, width]: the first num_queries queries decoded from latents [B, N, d_latents]."""
        queries = self.output_position_encodings[:num_queries].astype(self.dtype)
        queries = jnp.broadcast_to(queries, (latents.shape[0], *queries.shape))
        out = self.decoding_cross_attention(queries, latents, rng=rng)
        return self.final_layer(out) if self.final_project else out


class PerceiverModel(nnx.Module):
    """The text preprocessor, the latents, the encoder and a decoder (the head classes choose it)."""

    def __init__(self, config: PerceiverConfig, decoder: PerceiverBasicDecoder, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_preprocessor = PerceiverTextPreprocessor(config, **kw)
        self.latents = normal_param(rngs, (config.num_latents, config.d_latents), config.initializer_range,
                                    (None, "embed"), param_dtype)
        self.encoder = PerceiverEncoder(config, config.d_model, **kw)
        self.decoder = decoder
        self.max_length = config.max_position_embeddings
        self.dtype = dtype

    def encode(self, inputs: jax.Array, attention_mask: jax.Array | None, rng=None) -> jax.Array:
        """The latents [B, num_latents, d_latents] after the encoder, from byte ids [B, S]."""
        if inputs.ndim != 2:
            raise ValueError(f"inputs must be byte ids [batch, length], got shape {inputs.shape}")
        if inputs.shape[1] > self.max_length:
            raise ValueError(f"inputs of {inputs.shape[1]} bytes are longer than max_position_embeddings="
                             f"{self.max_length}: truncate them (PerceiverTokenizer(truncation=True))")
        if attention_mask is None:
            attention_mask = jnp.ones(inputs.shape, jnp.int32)
        latents = jnp.broadcast_to(self.latents[...].astype(self.dtype), (inputs.shape[0], *self.latents[...].shape))
        return self.encoder(latents, self.input_preprocessor(inputs), attention_mask, rng)


def _inputs(inputs, input_ids):
    if (inputs is None) == (input_ids is None):
        raise ValueError("give the byte ids as `inputs` (or `input_ids`), exactly one of them")
    return inputs if inputs is not None else input_ids


class PerceiverForMaskedLM(PretrainedModel):
    """Masked byte prediction. Logits come for the input positions: `logits[:, :S]` of an input of S bytes.
    transformers' model always decodes all max_position_embeddings positions (its first S are these); each query
    decodes on its own, so the rest are logits of positions the input does not have."""

    config_class = PerceiverConfig
    conversion_rules = staticmethod(masked_lm_rules)

    def __init__(self, config: PerceiverConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        _channels("the masked-language decoder's values (d_model)", config.d_model, MLM_DECODER_HEADS)
        decoder = PerceiverBasicDecoder(
            config, num_queries=config.max_position_embeddings, num_channels=config.d_model,
            qk_channels=MLM_DECODER_QK_CHANNELS, v_channels=config.d_model, num_heads=MLM_DECODER_HEADS,
            use_query_residual=False, **kw)
        self.perceiver = PerceiverModel(config, decoder, **kw)
        self.embedding_decoder_bias = nnx.Param(jnp.zeros((config.vocab_size,), param_dtype), logical_axes=("vocab",))

    @float32_matmuls
    def __call__(self, inputs=None, attention_mask=None, *, input_ids=None,
                 dropout_rng=None) -> PerceiverMaskedLMOutput:
        """inputs: byte ids [B, S] (S <= max_position_embeddings); attention_mask [B, S], 1 for real bytes."""
        inputs = _inputs(inputs, input_ids)
        encoder_rng, decoder_rng = split_rng(dropout_rng, 2)
        latents = self.perceiver.encode(inputs, attention_mask, encoder_rng)
        decoded = self.perceiver.decoder(latents, inputs.shape[1], decoder_rng)
        logits = self.perceiver.input_preprocessor.embeddings.attend(decoded)
        logits = logits + self.embedding_decoder_bias[...].astype(logits.dtype)
        return PerceiverMaskedLMOutput(logits=logits.astype(jnp.float32), last_hidden_state=latents)


class PerceiverForSequenceClassification(PretrainedModel):
    """One trainable query decoded from the latents, projected to config.num_labels logits (one: regression)."""

    config_class = PerceiverConfig
    conversion_rules = staticmethod(sequence_classification_rules)

    def __init__(self, config: PerceiverConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.d_latents  # queries and latents have this width, so either cross_attention_shape_for_attention
        decoder = PerceiverBasicDecoder(config, num_queries=1, num_channels=d, qk_channels=d, v_channels=d,
                                        num_heads=1, use_query_residual=True, output_num_channels=config.num_labels,
                                        **kw)
        self.perceiver = PerceiverModel(config, decoder, **kw)

    @float32_matmuls
    def __call__(self, inputs=None, attention_mask=None, *, input_ids=None,
                 dropout_rng=None) -> PerceiverClassifierOutput:
        """inputs: byte ids [B, S] (S <= max_position_embeddings); attention_mask [B, S], 1 for real bytes."""
        inputs = _inputs(inputs, input_ids)
        encoder_rng, decoder_rng = split_rng(dropout_rng, 2)
        latents = self.perceiver.encode(inputs, attention_mask, encoder_rng)
        logits = self.perceiver.decoder(latents, 1, decoder_rng)[:, 0]
        return PerceiverClassifierOutput(logits=logits.astype(jnp.float32), last_hidden_state=latents)
