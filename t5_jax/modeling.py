"""T5 encoder-decoder in Flax NNX, numerically matching transformers' PyTorch T5ForConditionalGeneration.

Covers T5 v1.0 (relu, tied and rescaled lm_head), v1.1 / LM-adapted / ByT5 (gated-gelu, own lm_head), and what
transformers 5 builds from a v1.1 config: a tied but unscaled lm_head.
Attention keeps heads as a separate axis ([batch, length, heads, d_kv]) so it can be sharded.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxport import attention
from jaxport.generation import seq2seq_cache, seq2seq_generate
from jaxport.hf import PretrainedModel
from jaxport.layers import (
    ACTIVATIONS,
    Dense,
    Embed,
    causal_mask,
    dropout,
    float32_matmuls,
    mask_bias,
    padding_mask,
    remat,
    split_rng,
)
from jaxport.seq2seq import Seq2SeqLMOutput, shift_right
from jaxport.sharding import HIDDEN, constrain
from t5_jax.configuration import T5Config
from t5_jax.convert import t5_rules


class RMSNorm(nnx.Module):
    """T5's layer norm: scale only, no mean subtraction, statistics in float32."""

    def __init__(self, size: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((size,), param_dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(jnp.float32) * x32).astype(self.dtype)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """Exact small offsets, logarithmic buckets up to max_distance, as in Mesh TensorFlow's T5."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
        relative_position = jnp.abs(relative_position)
    else:
        relative_position = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # Clamp before the log so position 0 does not produce -inf (that branch is masked out anyway).
    scaled = (jnp.log(jnp.maximum(relative_position, 1).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
    return buckets + jnp.where(is_small, relative_position, large)


def attention_implementation(config: T5Config, dtype, lengths: tuple[int, ...], training: bool) -> str:
    """config.attn_implementation for one forward pass over queries and keys of these lengths (jaxport.attention.
    resolve); T5's attention dropout is its dropout_rate."""
    return attention.resolve(config.attn_implementation, dtype, config.d_kv, lengths=lengths,
                             dropout=training and config.dropout_rate > 0)


def attend(q, k, v, bias, mask, dropout_rate: float, rng, implementation: str = "einsum") -> jax.Array:
    """Softmax attention [B, T, heads, d_kv] in v's dtype: scores plus `bias` (float32 position bias
    [1, heads, T, S], or None) over the keys `mask` (boolean, broadcastable to [B, heads, T, S]) allows; softmax in
    float32. T5 folds the 1/sqrt(d_kv) scaling into its weight initialisation: no scaling here. `implementation`
    (attention_implementation's): "einsum" below, with attention dropout, or jaxport.attention.fused_attention."""
    if implementation != "einsum":
        return attention.fused_attention(q, k, v, bias, mask, implementation, scale=1.0).astype(v.dtype)
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        scores = scores + bias
    probs = dropout(jax.nn.softmax(scores + mask_bias(mask), axis=-1).astype(v.dtype), dropout_rate, rng)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


class T5Attention(nnx.Module):
    def __init__(self, config: T5Config, *, has_relative_bias: bool, bidirectional: bool, dtype, param_dtype,
                 rngs: nnx.Rngs):
        d, h, k, f = config.d_model, config.num_heads, config.d_kv, config.initializer_factor
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = Dense((d,), (h, k), ("embed", "heads", "kv"), f * (d * k) ** -0.5, **kw)
        self.key = Dense((d,), (h, k), ("embed", "heads", "kv"), f * d ** -0.5, **kw)
        self.value = Dense((d,), (h, k), ("embed", "heads", "kv"), f * d ** -0.5, **kw)
        self.out = Dense((h, k), (d,), ("heads", "kv", "embed"), f * (h * k) ** -0.5, **kw)
        if has_relative_bias:
            self.relative_attention_bias = Embed(config.relative_attention_num_buckets, h, (None, "heads"),
                                                 f * d ** -0.5, **kw)
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.dropout_rate = config.dropout_rate
        self.dtype = dtype

    def position_bias(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """Learned relative-position bias, float32 [1, heads, T, S]."""
        buckets = relative_position_bucket(key_positions[None, :] - query_positions[:, None], self.bidirectional,
                                           self.num_buckets, self.max_distance)
        # A one-hot product instead of a gather: its gradient is a matmul, not a scatter-add with heavy
        # index collisions (slow on GPUs). HIGHEST precision keeps the selected values exact.
        one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=jnp.float32)
        table = self.relative_attention_bias.embedding[...].astype(jnp.float32)
        return jnp.einsum("tsb,bh->hts", one_hot, table, precision=jax.lax.Precision.HIGHEST)[None]

    def key_value(self, source: jax.Array) -> dict:
        """Keys and values [B, S, heads, d_kv] of `source`."""
        return {"key": self.key(source), "value": self.value(source)}

    def __call__(self, x: jax.Array, mask: jax.Array, position_bias: jax.Array | None = None, *,
                 context: jax.Array | None = None, context_key_value: dict | None = None, cache: dict | None = None,
                 position=0, rng=None, implementation: str = "einsum") -> tuple[jax.Array, dict | None]:
        """Attend from x [B, T, D] to context (x itself when None), to the keys the boolean `mask` [B|1, 1, T|1, S]
        allows, with `position_bias` [1, heads, T, S] (the first layer's `position_bias()`) added to the scores.
        `context_key_value`: the context's `key_value`, precomputed (cross-attention while decoding: the encoder
        states do not change from step to step). With `cache` (self-attention while decoding), the new keys/values
        are written at `position` and the query attends over the whole cache. `implementation`: see `attend`."""
        q = self.query(x)
        if context_key_value is None:
            context_key_value = self.key_value(x if context is None else context)
        k, v = context_key_value["key"], context_key_value["value"]
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache["key"], k.astype(cache["key"].dtype), position, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["value"], v.astype(cache["value"].dtype), position, axis=1)
            cache = {"key": k, "value": v}
        out = attend(q, k, v.astype(self.dtype), position_bias, mask, self.dropout_rate, rng, implementation)
        return self.out(out), cache


class T5MLP(nnx.Module):
    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, ff, f = config.d_model, config.d_ff, config.initializer_factor
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if config.is_gated_act:
            self.wi_0 = Dense((d,), (ff,), ("embed", "mlp"), f * d ** -0.5, **kw)
            self.wi_1 = Dense((d,), (ff,), ("embed", "mlp"), f * d ** -0.5, **kw)
        else:
            self.wi = Dense((d,), (ff,), ("embed", "mlp"), f * d ** -0.5, **kw)
        self.wo = Dense((ff,), (d,), ("mlp", "embed"), f * ff ** -0.5, **kw)
        self.gated = config.is_gated_act
        self.act = ACTIVATIONS[config.activation]
        self.dropout_rate = config.dropout_rate

    def __call__(self, x: jax.Array, rng=None) -> jax.Array:
        hidden = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(dropout(hidden, self.dropout_rate, rng))


class T5EncoderBlock(nnx.Module):
    def __init__(self, config: T5Config, *, has_relative_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, **kw)
        self.attention = T5Attention(config, has_relative_bias=has_relative_bias, bidirectional=True, **kw)
        self.mlp_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, **kw)
        self.mlp = T5MLP(config, **kw)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, mask, position_bias, rng=None, implementation: str = "einsum"):
        rngs = split_rng(rng, 4)
        h, _ = self.attention(self.attention_norm(x), mask, position_bias, rng=rngs[0], implementation=implementation)
        x = x + dropout(h, self.dropout_rate, rngs[1])
        return x + dropout(self.mlp(self.mlp_norm(x), rngs[2]), self.dropout_rate, rngs[3])


class T5DecoderBlock(nnx.Module):
    def __init__(self, config: T5Config, *, has_relative_bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        eps = config.layer_norm_epsilon
        self.self_attention_norm = RMSNorm(config.d_model, eps, **kw)
        self.self_attention = T5Attention(config, has_relative_bias=has_relative_bias, bidirectional=False, **kw)
        self.cross_attention_norm = RMSNorm(config.d_model, eps, **kw)
        self.cross_attention = T5Attention(config, has_relative_bias=False, bidirectional=True, **kw)
        self.mlp_norm = RMSNorm(config.d_model, eps, **kw)
        self.mlp = T5MLP(config, **kw)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, self_mask, position_bias, context, cross_mask, cache=None, cross_key_value=None, position=0,
                 rng=None, implementation: str = "einsum"):
        """cache: this layer's self-attention keys/values (decoding); cross_key_value: the cross-attention's
        `key_value(context)`, precomputed by init_cache (decoding), else computed here from context."""
        rngs = split_rng(rng, 6)
        h, cache = self.self_attention(self.self_attention_norm(x), self_mask, position_bias, cache=cache,
                                       position=position, rng=rngs[0], implementation=implementation)
        x = x + dropout(h, self.dropout_rate, rngs[1])
        h, _ = self.cross_attention(self.cross_attention_norm(x), cross_mask, context=context,
                                    context_key_value=cross_key_value, rng=rngs[2], implementation=implementation)
        x = x + dropout(h, self.dropout_rate, rngs[3])
        x = x + dropout(self.mlp(self.mlp_norm(x), rngs[4]), self.dropout_rate, rngs[5])
        return x, cache


class T5Encoder(nnx.Module):
    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Only the first layer owns the relative-position table; its bias is shared by all layers.
        self.layers = nnx.List([T5EncoderBlock(config, has_relative_bias=i == 0, **kw)
                                for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, **kw)
        self.dropout_rate = config.dropout_rate
        self.config = config
        self.dtype = dtype

    def __call__(self, embeds: jax.Array, attention_mask: jax.Array, rng=None) -> jax.Array:
        positions = jnp.arange(embeds.shape[1])
        position_bias = self.layers[0].attention.position_bias(positions, positions)
        mask = padding_mask(attention_mask)
        rngs = split_rng(rng, len(self.layers) + 2)
        x = constrain(dropout(embeds, self.dropout_rate, rngs[-2]), HIDDEN)
        implementation = attention_implementation(self.config, self.dtype, (embeds.shape[1],), rng is not None)

        def apply(layer, x, mask, position_bias, rng):
            return layer(x, mask, position_bias, rng, implementation)

        apply = remat(apply, self.config.remat)
        for layer, layer_rng in zip(self.layers, rngs[:len(self.layers)], strict=True):
            x = constrain(apply(layer, x, mask, position_bias, layer_rng), HIDDEN)
        return dropout(self.final_norm(x), self.dropout_rate, rngs[-1])


class T5Decoder(nnx.Module):
    def __init__(self, config: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List([T5DecoderBlock(config, has_relative_bias=i == 0, **kw)
                                for i in range(config.num_decoder_layers)])
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, **kw)
        self.dropout_rate = config.dropout_rate
        self.config = config
        self.dtype = dtype

    def __call__(self, embeds, encoder_hidden, encoder_attention_mask, decoder_attention_mask=None, cache=None,
                 position=0, rng=None):
        num_queries = embeds.shape[1]
        query_positions = position + jnp.arange(num_queries)
        num_keys = num_queries if cache is None else cache["layers"][0]["key"].shape[1]
        key_positions = jnp.arange(num_keys)
        position_bias = self.layers[0].self_attention.position_bias(query_positions, key_positions)
        self_mask = causal_mask(query_positions, key_positions)
        if decoder_attention_mask is not None:
            self_mask = self_mask & padding_mask(decoder_attention_mask)
        cross_mask = padding_mask(encoder_attention_mask)
        rngs = split_rng(rng, len(self.layers) + 2)
        x = constrain(dropout(embeds, self.dropout_rate, rngs[-2]), HIDDEN)
        # Teacher forcing (training, evaluation, scoring) as configured; incremental decoding (one query a step, no
        # backward pass) through the einsums.
        teacher_forcing = cache is None
        implementation = "einsum" if not teacher_forcing else attention_implementation(
            self.config, self.dtype, (num_queries, encoder_hidden.shape[1]), rng is not None)

        def apply(layer, x, self_mask, position_bias, encoder_hidden, cross_mask, layer_cache, cross_key_value, rng):
            return layer(x, self_mask, position_bias, encoder_hidden, cross_mask, layer_cache, cross_key_value,
                         position, rng, implementation)

        if teacher_forcing:
            apply = remat(apply, self.config.remat)
        new_cache = []
        for i, (layer, layer_rng) in enumerate(zip(self.layers, rngs[:len(self.layers)], strict=True)):
            layer_cache, cross_key_value = (None, None) if cache is None else (cache["layers"][i], cache["cross"][i])
            x, layer_cache = apply(layer, x, self_mask, position_bias, encoder_hidden, cross_mask, layer_cache,
                                   cross_key_value, layer_rng)
            x = constrain(x, HIDDEN)
            new_cache.append(layer_cache)
        x = dropout(self.final_norm(x), self.dropout_rate, rngs[-1])
        return x, (None if cache is None else {"layers": new_cache, "cross": cache["cross"]})


class T5ForConditionalGeneration(PretrainedModel):
    config_class = T5Config
    conversion_rules = staticmethod(t5_rules)
    tied_head_keys = ("lm_head.weight", "shared.weight")

    def __init__(self, config: T5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.shared = Embed(config.vocab_size, config.d_model, ("vocab", "embed"), config.initializer_factor, **kw)
        self.encoder = T5Encoder(config, **kw)
        self.decoder = T5Decoder(config, **kw)
        if not config.tie_word_embeddings:
            self.lm_head = Dense((config.d_model,), (config.vocab_size,), ("embed", "vocab"),
                                 config.initializer_factor, **kw)

    @float32_matmuls
    def encode(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, dropout_rng=None) -> jax.Array:
        """Encoder states [B, S, D] from token ids or from ready embeddings (SIP prepends its own)."""
        if inputs_embeds is None:
            inputs_embeds = self.shared(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones(inputs_embeds.shape[:2], jnp.int32)
        return self.encoder(inputs_embeds, attention_mask, dropout_rng)

    @float32_matmuls
    def init_cache(self, encoder_hidden: jax.Array, max_length: int) -> dict:
        """The cache for incremental decoding against encoder_hidden [B, S, D] (jaxport.generation.seq2seq_cache)."""
        return seq2seq_cache(encoder_hidden, max_length, self.config.num_heads, self.config.d_kv, self.dtype,
                             [layer.cross_attention for layer in self.decoder.layers])

    @float32_matmuls
    def decode(self, decoder_input_ids, encoder_hidden, encoder_attention_mask, cache=None, position=0, *,
               decoder_attention_mask=None, dropout_rng=None):
        """Logits [B, T, V] for decoder tokens; with `cache` (from `init_cache(encoder_hidden, ...)`), tokens sit
        at `position`, cross-attention uses the cache's keys/values of the encoder states and the cache is
        returned updated (incremental decoding), otherwise the whole target is processed causally."""
        hidden, cache = self.decoder(self.shared(decoder_input_ids), encoder_hidden, encoder_attention_mask,
                                     decoder_attention_mask, cache, position, dropout_rng)
        return self.lm_logits(hidden), cache

    @float32_matmuls
    def lm_logits(self, hidden: jax.Array) -> jax.Array:
        if self.config.scale_decoder_outputs:
            hidden = hidden * self.config.d_model ** -0.5
        logits = self.shared.attend(hidden) if self.config.tie_word_embeddings else self.lm_head(hidden)
        return logits.astype(jnp.float32)

    @float32_matmuls
    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 *, inputs_embeds=None, labels=None, dropout_rng=None) -> Seq2SeqLMOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5ForConditionalGeneration needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        if attention_mask is None:
            shape = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
            attention_mask = jnp.ones(shape, jnp.int32)
        encoder_rng, decoder_rng = split_rng(dropout_rng, 2)
        hidden = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, dropout_rng=encoder_rng)
        logits, _ = self.decode(decoder_input_ids, hidden, attention_mask,
                                decoder_attention_mask=decoder_attention_mask, dropout_rng=decoder_rng)
        return Seq2SeqLMOutput(logits=logits, encoder_last_hidden_state=hidden)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """Greedy, beam or sampled decoding with transformers' argument names; returns `.sequences`."""
        return seq2seq_generate(self, input_ids, attention_mask, **kwargs)

