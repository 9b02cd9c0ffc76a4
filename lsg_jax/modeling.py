"""LSG-BART (and plain BART) in Flax NNX, numerically matching the PyTorch LSG-BART of lsg-converter 0.1.9.

BART: learned positions with an offset of 2, post-LayerNorm layers, layernorm_embedding, optional
sqrt(d_model) embedding scale, final_logits_bias and a tied lm_head. The LSG encoder prepends
num_global_tokens learned global tokens and uses `lsg_jax.dispatch.lsg_attention` (or, through the Pallas
kernels, `lsg_jax.pallas_attention.pallas_lsg_attention` on one packed q/k/v projection), the implementation chosen
per forward pass by `lsg_jax.dispatch.resolve`; the decoder is BART's, with a key/value cache for `generate`
(jaxport.generation). Parameters carry logical axes (embed, heads, kv, mlp, vocab).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxport.generation import seq2seq_cache, seq2seq_generate
from jaxport.hf import PretrainedModel, find_weights, select_tensors
from jaxport.layers import (
    ACTIVATIONS,
    Dense,
    Embed,
    LayerNorm,
    causal_mask,
    dot_product_attention,
    dropout,
    float32_matmuls,
    layer_drop,
    mask_bias,
    padding_mask,
    remat,
    split_rng,
)
from jaxport.seq2seq import Seq2SeqLMOutput, Seq2SeqModelOutput, shift_right
from jaxport.sharding import HIDDEN, constrain
from lsg_jax.attention import draw_lsh_projections
from lsg_jax.configuration import MAX_GLOBAL_TOKENS, POSITION_OFFSET, LSGBartConfig
from lsg_jax.convert import lsg_bart_rules
from lsg_jax.dispatch import lsg_attention, padded_attention, resolve
from lsg_jax.hopper_gemm import dense_gelu
from lsg_jax.pallas_attention import pallas_lsg_attention

DEFAULT_LSH_SEED = 0  # LSH projections use jax.random.key(DEFAULT_LSH_SEED) when a call passes no key nor rng


class Attention(nnx.Module):
    """BART multi-head attention projections; the attention itself depends on the caller (full, LSG, cached)."""

    def __init__(self, config: LSGBartConfig, num_heads: int, *, dtype, param_dtype, rngs):
        d, h = config.d_model, num_heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        std = config.init_std
        self.query = Dense((d,), (h, d // h), ("embed", "heads", "kv"), std, use_bias=True, **kw)
        self.key = Dense((d,), (h, d // h), ("embed", "heads", "kv"), std, use_bias=True, **kw)
        self.value = Dense((d,), (h, d // h), ("embed", "heads", "kv"), std, use_bias=True, **kw)
        self.out = Dense((h, d // h), (d,), ("heads", "kv", "embed"), std, use_bias=True, **kw)
        self.dropout_rate = config.attention_dropout
        self.dtype = dtype

    def packed_projection(self, x):
        """q, k and v of x without biases, packed [B, L, 3, H, D] by one GEMM (EncoderLayer.lsg_self_attention)."""
        kernel = jnp.stack([proj.kernel[...] for proj in (self.query, self.key, self.value)], axis=1)  # [E, 3, H, D]
        packed = jnp.dot(x.astype(self.dtype), kernel.reshape(kernel.shape[0], -1).astype(self.dtype))
        return packed.reshape(*x.shape[:-1], *kernel.shape[1:])

    def key_value(self, source):
        """Keys and values [B, S, H, D] of `source`."""
        return {"key": self.key(source), "value": self.value(source)}

    def attend(self, x, mask, *, context=None, context_key_value=None, cache=None, position=0, rng=None,
               key_valid=None, implementation: str = "einsum"):
        """Full attention from x [B,T,E] to context (x when None) over the keys of the boolean `mask` (broadcastable
        to [B,H,T,S]), or of `key_valid` [B, S] when mask is None. `context_key_value`: the context's
        `key_value`, precomputed (cross-attention while decoding: the encoder states do not change from step to
        step). With `cache`, new keys/values are written at `position` and the query attends over the whole cache.
        `implementation` other than "einsum" (dispatch.resolve's `cross`: teacher forcing, no attention dropout)
        attends over `key_valid` through fused attention."""
        q = self.query(x)  # [B, T, H, D]
        if context_key_value is None:
            context_key_value = self.key_value(x if context is None else context)
        k, v = context_key_value["key"], context_key_value["value"]
        if implementation != "einsum":
            return self.out(padded_attention(q, k, v, key_valid, self.dtype, implementation)), cache
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache["key"], k.astype(cache["key"].dtype), position, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["value"], v.astype(cache["value"].dtype), position, axis=1)
            cache = {"key": k, "value": v}
        if mask is None:
            mask = padding_mask(key_valid)
        return self.out(dot_product_attention(q, k, v.astype(self.dtype), mask, dropout_rate=self.dropout_rate,
                                              rng=rng)), cache


class EncoderLayer(nnx.Module):
    def __init__(self, config: LSGBartConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, ff, std = config.d_model, config.encoder_ffn_dim, config.init_std
        self.self_attn = Attention(config, config.encoder_attention_heads, **kw)
        self.self_attn_layer_norm = LayerNorm(d, **kw)
        self.fc1 = Dense((d,), (ff,), ("embed", "mlp"), std, use_bias=True, **kw)
        self.fc2 = Dense((ff,), (d,), ("mlp", "embed"), std, use_bias=True, **kw)
        self.final_layer_norm = LayerNorm(d, **kw)
        self.config = config
        self.act = ACTIVATIONS[config.activation_function]
        self.dtype = dtype

    def __call__(self, x, bias, implementation: str, lsh_projections=None, rng=None):
        """x [B, L, E]; bias [B, L] additive float32 over keys; implementation: dispatch.resolve's `lsg`."""
        cfg = self.config
        rngs = split_rng(rng, 4)
        if cfg.lsg:
            h = self.lsg_self_attention(x, bias, implementation, lsh_projections, rngs[0])
        else:
            h, _ = self.self_attn.attend(x, padding_mask(bias == 0), rng=rngs[0])  # bias: 0 on the keys to attend
        x = self.self_attn_layer_norm(x + dropout(h, cfg.dropout, rngs[1]))
        h = dropout(self.expand(x), cfg.activation_dropout, rngs[2])
        return self.final_layer_norm(x + dropout(self.fc2(h), cfg.dropout, rngs[3]))

    def expand(self, x):
        """fc1 and the activation. BART's exact GELU goes through lsg_jax.hopper_gemm.dense_gelu: one GEMM with the
        bias and GELU in its epilogue on an H100 (the GELU pass was 0.5 ms of the LSG-BART-base encoder at 16384
        tokens), XLA's fc1 then GELU elsewhere and under differentiation."""
        if self.config.activation_function == "gelu":
            return dense_gelu(x.astype(self.dtype), self.fc1.kernel[...], self.fc1.bias[...])
        return self.act(self.fc1(x))

    def lsg_self_attention(self, x, bias, implementation: str, lsh_projections, rng):
        """LSG self-attention of x [B, L, E] with its output projection. Through the Pallas kernels, q, k and v come
        from one GEMM without biases, read in place, and the kernels add the query and value biases (the key bias
        cannot change a softmax): XLA merges the three projections into one GEMM anyway but adds each bias in a
        pass of its own over the output, which cuBLAS' epilogue takes only for a bias that is a parameter itself
        (0.33 ms of the 4.8 ms LSG-BART-base encoder at 16384 tokens on an H100)."""
        cfg, attn = self.config, self.self_attn
        if implementation == "pallas":
            out = pallas_lsg_attention(attn.packed_projection(x), attn.query.bias[...], attn.value.bias[...], bias,
                                       cfg, self.dtype)
        else:
            q, k, v = (jnp.swapaxes(proj(x), 1, 2) for proj in (attn.query, attn.key, attn.value))  # [B,H,L,D]
            out = jnp.swapaxes(lsg_attention(q, k, v, bias, cfg, self.dtype, implementation, lsh_projections, rng),
                               1, 2)
        return attn.out(out.astype(self.dtype))


class DecoderLayer(nnx.Module):
    def __init__(self, config: LSGBartConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, ff, std = config.d_model, config.decoder_ffn_dim, config.init_std
        self.self_attn = Attention(config, config.decoder_attention_heads, **kw)
        self.self_attn_layer_norm = LayerNorm(d, **kw)
        self.encoder_attn = Attention(config, config.decoder_attention_heads, **kw)
        self.encoder_attn_layer_norm = LayerNorm(d, **kw)
        self.fc1 = Dense((d,), (ff,), ("embed", "mlp"), std, use_bias=True, **kw)
        self.fc2 = Dense((ff,), (d,), ("mlp", "embed"), std, use_bias=True, **kw)
        self.final_layer_norm = LayerNorm(d, **kw)
        self.config = config
        self.act = ACTIVATIONS[config.activation_function]

    def __call__(self, x, self_mask, context, context_valid, cache=None, cross_key_value=None, position=0, rng=None,
                 cross_implementation: str = "einsum"):
        """self_mask: boolean [B|1, 1, T, S], the decoder's keys to attend to; context_valid [B, S]: the encoder
        states to attend to; cache: this layer's self-attention keys/values (decoding); cross_key_value: the
        cross-attention's `key_value(context)`, precomputed by init_cache (decoding), else computed here from
        context; cross_implementation: dispatch.resolve's `cross` (teacher forcing)."""
        cfg = self.config
        rngs = split_rng(rng, 7)
        h, cache = self.self_attn.attend(x, self_mask, cache=cache, position=position, rng=rngs[0])
        x = self.self_attn_layer_norm(x + dropout(h, cfg.dropout, rngs[1]))
        h, _ = self.encoder_attn.attend(x, None, context=context, context_key_value=cross_key_value, rng=rngs[2],
                                        key_valid=context_valid, implementation=cross_implementation)
        x = self.encoder_attn_layer_norm(x + dropout(h, cfg.dropout, rngs[3]))
        h = dropout(self.act(self.fc1(x)), cfg.activation_dropout, rngs[4])
        return self.final_layer_norm(x + dropout(self.fc2(h), cfg.dropout, rngs[5])), cache


def _tokens_embed(config, dtype, param_dtype, rngs):
    return Embed(config.vocab_size, config.d_model, ("vocab", "embed"), config.init_std, dtype=dtype,
                 param_dtype=param_dtype, rngs=rngs)


def _positions_embed(config, dtype, param_dtype, rngs):
    return Embed(config.max_position_embeddings + POSITION_OFFSET, config.d_model, (None, "embed"), config.init_std,
                 dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Encoder(nnx.Module):
    def __init__(self, config: LSGBartConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_positions = _positions_embed(config, **kw)
        if config.separate_token_embeddings:
            self.embed_tokens = _tokens_embed(config, **kw)
        if config.lsg:
            self.global_embeddings = Embed(MAX_GLOBAL_TOKENS, config.d_model, (None, "embed"), config.init_std, **kw)
        self.layernorm_embedding = LayerNorm(config.d_model, **kw)
        self.layers = nnx.List([EncoderLayer(config, **kw) for _ in range(config.encoder_layers)])
        self.config = config
        self.dtype = dtype

    def __call__(self, embeds, attention_mask, lsh_key=None, rng=None):
        """embeds [B, T, E] (scaled token embeddings, T already a multiple of block_size where LSG needs it),
        attention_mask [B, T] -> states [B, G + T, E] (G = 0 for plain BART)."""
        cfg = self.config
        B, T, _ = embeds.shape
        x = embeds + self.embed_positions.embedding[POSITION_OFFSET:POSITION_OFFSET + T].astype(self.dtype)
        bias = mask_bias(attention_mask > 0)
        if cfg.lsg:
            G = cfg.num_global_tokens
            glob = self.global_embeddings.embedding[:G].astype(self.dtype)
            x = jnp.concatenate([jnp.broadcast_to(glob[None], (B, G, glob.shape[-1])), x], axis=1)
            bias = jnp.concatenate([jnp.zeros((B, G), jnp.float32), bias], axis=1)
        rngs = split_rng(rng, len(self.layers) + 1)
        x = constrain(dropout(self.layernorm_embedding(x), cfg.dropout, rngs[-1]), HIDDEN)
        heads, head_dim = cfg.encoder_attention_heads, cfg.d_model // cfg.encoder_attention_heads
        implementation = resolve(cfg, self.dtype, training=rng is not None).lsg

        def apply(layer, x, bias, projections, rng):
            return layer(x, bias, implementation, projections, rng)

        apply = remat(apply, cfg.remat)  # the backward pass may recompute each layer instead of keeping activations
        for i, (layer, layer_rng) in enumerate(zip(self.layers, rngs[:len(self.layers)], strict=True)):
            projections = None
            if cfg.lsg and cfg.sparsity_type == "lsh" and cfg.has_sparse:
                projections = draw_lsh_projections(jax.random.fold_in(lsh_key, i), cfg, heads, head_dim)
            x = constrain(layer_drop(lambda x: apply(layer, x, bias, projections, layer_rng), x,
                                     cfg.encoder_layerdrop, layer_rng), HIDDEN)
        return x


class Decoder(nnx.Module):
    def __init__(self, config: LSGBartConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_positions = _positions_embed(config, **kw)
        if config.separate_token_embeddings:
            self.embed_tokens = _tokens_embed(config, **kw)
        self.layernorm_embedding = LayerNorm(config.d_model, **kw)
        self.layers = nnx.List([DecoderLayer(config, **kw) for _ in range(config.decoder_layers)])
        self.config = config
        self.dtype = dtype

    def __call__(self, embeds, encoder_hidden, encoder_valid, decoder_attention_mask=None, cache=None, position=0,
                 rng=None):
        cfg = self.config
        num_queries = embeds.shape[1]
        query_positions = position + jnp.arange(num_queries)
        positions = jax.lax.dynamic_slice_in_dim(self.embed_positions.embedding[...], position + POSITION_OFFSET,
                                                 num_queries, axis=0)
        x = embeds + positions.astype(self.dtype)
        num_keys = num_queries if cache is None else cache["layers"][0]["key"].shape[1]
        self_mask = causal_mask(query_positions, jnp.arange(num_keys))
        if decoder_attention_mask is not None:
            self_mask = self_mask & padding_mask(decoder_attention_mask)
        rngs = split_rng(rng, len(self.layers) + 1)
        x = constrain(dropout(self.layernorm_embedding(x), cfg.dropout, rngs[-1]), HIDDEN)
        cross = resolve(cfg, self.dtype, training=rng is not None).cross
        new_cache = []
        for i, (layer, layer_rng) in enumerate(zip(self.layers, rngs[:len(self.layers)], strict=True)):
            layer_cache, cross_key_value = (None, None) if cache is None else (cache["layers"][i], cache["cross"][i])
            if cache is None:  # teacher forcing (training, evaluation): LayerDrop applies
                x = layer_drop(lambda x: layer(x, self_mask, encoder_hidden, encoder_valid, rng=layer_rng,
                                               cross_implementation=cross)[0], x, cfg.decoder_layerdrop, layer_rng)
            else:
                x, layer_cache = layer(x, self_mask, encoder_hidden, encoder_valid, layer_cache, cross_key_value,
                                       position, layer_rng)
            x = constrain(x, HIDDEN)
            new_cache.append(layer_cache)
        return x, (None if cache is None else {"layers": new_cache, "cross": cache["cross"]})


def _typed_key(key):
    key = key if isinstance(key, jax.Array) else jnp.asarray(key)
    return key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


class LSGBartModel(PretrainedModel):
    """The encoder-decoder without the language-model head (the original's LSGBartModel)."""

    config_class = LSGBartConfig
    _with_head = False

    def __init__(self, config: LSGBartConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.shared = _tokens_embed(config, **kw)
        self.encoder = Encoder(config, **kw)
        self.decoder = Decoder(config, **kw)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0

    @classmethod
    def conversion_rules(cls, config: LSGBartConfig):
        return lsg_bart_rules(config, with_head=cls._with_head)

    @classmethod
    def folder_config(cls, folder, **config_overrides) -> LSGBartConfig:
        """As PretrainedModel's, with separate token embeddings where a PyTorch checkpoint holds the encoder's
        apart from `shared` (an untied BART written by transformers 5)."""
        config = super().folder_config(folder, **config_overrides)
        weights = find_weights(folder)
        if config.tie_word_embeddings or config.separate_token_embeddings or weights.format == "flax":
            return config
        names = ("shared.weight", "encoder.embed_tokens.weight")
        found = dict(select_tensors(weights.files, [prefix + name for prefix in ("", "model.") for name in names]))
        for prefix in ("", "model."):
            shared, encoder = (found.get(prefix + name) for name in names)
            if shared is not None and encoder is not None and not np.array_equal(shared, encoder):
                return dataclasses.replace(config, separate_token_embeddings=True)
        return config

    def token_embeddings(self, side: nnx.Module) -> Embed:
        """The token embedding the encoder or decoder (`side`) reads its inputs through."""
        return side.embed_tokens if self.config.separate_token_embeddings else self.shared

    # --- encoder ---------------------------------------------------------------------------------------

    def prepare_inputs(self, input_ids, attention_mask=None, *, truncation: bool = False):
        """Checks (or with truncation=True, cuts) the input length against max_position_embeddings; returns
        (input_ids, attention_mask) as int32 arrays."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        limit = self.config.max_position_embeddings
        if self.config.lsg and self.config.adaptive and input_ids.shape[1] > 2 * self.config.block_size:
            limit -= limit % self.config.block_size  # padding up to a whole block must stay within the table
        if input_ids.shape[1] > limit:
            if not truncation:
                raise ValueError(
                    f"input length {input_ids.shape[1]} exceeds what the position table allows ({limit} tokens: "
                    f"max_position_embeddings={self.config.max_position_embeddings}, padded to whole blocks of "
                    f"{self.config.block_size}); pass truncation=True to cut inputs, or convert the checkpoint "
                    "for a longer length (lsg_jax.bart_to_lsg)")
            input_ids, mask = input_ids[:, :limit], mask[:, :limit]
        return input_ids, mask

    @float32_matmuls
    def encode(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, lsh_key=None, dropout_rng=None,
               truncation: bool = False) -> jax.Array:
        """Encoder states [B, G + T, E] with pass_global_tokens_to_decoder (LSG), [B, T, E] otherwise.

        lsh_key: PRNG key (typed, or raw uint32 key data) for the random projections of sparsity_type='lsh'
        (layer i uses fold_in(key, i)). When None: fold_in(dropout_rng, 7) if dropout_rng is given (training
        draws fresh projections per step), else the constant jax.random.key(0) (deterministic inference). The key
        is a call argument only, never model state: an integer state leaf would break the trainer's grad."""
        cfg = self.config
        if inputs_embeds is None:
            input_ids, attention_mask = self.prepare_inputs(input_ids, attention_mask, truncation=truncation)
            inputs_embeds = self.token_embeddings(self.encoder)(input_ids) * self.embed_scale
        elif attention_mask is None:
            attention_mask = jnp.ones(inputs_embeds.shape[:2], jnp.int32)
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
        B, T = attention_mask.shape
        if lsh_key is None:
            lsh_key = (jax.random.fold_in(_typed_key(dropout_rng), 7) if dropout_rng is not None
                       else jax.random.key(DEFAULT_LSH_SEED))
        lsh_key = _typed_key(lsh_key)
        if not cfg.lsg:
            if T > cfg.max_position_embeddings:
                raise ValueError(f"input length {T} exceeds max_position_embeddings={cfg.max_position_embeddings}")
            return self.encoder(inputs_embeds, attention_mask, lsh_key, dropout_rng)
        bs, G = cfg.block_size, cfg.num_global_tokens
        if cfg.mask_first_token:
            attention_mask = attention_mask.at[:, 0].set(0)
        padded = T
        if T > 2 * bs and T % bs:
            if not cfg.adaptive:
                raise ValueError(f"input length {T} is not a multiple of block_size {bs} and adaptive=False")
            padded = T + bs - T % bs
            inputs_embeds = jnp.pad(inputs_embeds, ((0, 0), (0, padded - T), (0, 0)))
            # Padded token ids would be pad_token_id; embeds of padding do not matter beyond being masked, but
            # the original embeds the pad token: do the same for identical states at padded positions.
            if input_ids is not None:
                pad_token = jnp.full((1, 1), cfg.pad_token_id, jnp.int32)
                pad_embed = self.token_embeddings(self.encoder)(pad_token) * self.embed_scale
                inputs_embeds = inputs_embeds.at[:, T:].set(jnp.broadcast_to(pad_embed, (B, padded - T,
                                                                                        inputs_embeds.shape[-1])))
            attention_mask = jnp.pad(attention_mask, ((0, 0), (0, padded - T)))
        if padded > cfg.max_position_embeddings:
            raise ValueError(f"input length {T} (padded to {padded}) exceeds max_position_embeddings="
                             f"{cfg.max_position_embeddings}; pass truncation=True or convert for a longer length")
        hidden = self.encoder(inputs_embeds, attention_mask, lsh_key, dropout_rng)
        if cfg.pass_global_tokens_to_decoder:
            return hidden[:, :G + T]
        if cfg.pool_with_global:
            hidden = hidden.at[:, G].set(hidden[:, 0])
        return hidden[:, G:G + T]

    def cross_attention_mask(self, attention_mask, encoder_length: int):
        """The decoder's mask over encoder states from the encoder's input mask [B, T]: the original masks the
        first token too with mask_first_token (its encoder edits the caller's mask in place) and prepends ones
        for the global tokens it passes to the decoder."""
        mask = jnp.asarray(attention_mask, jnp.int32)
        cfg = self.config
        if cfg.lsg and mask.shape[1] != encoder_length:
            if cfg.mask_first_token:
                mask = mask.at[:, 0].set(0)
            if cfg.pass_global_tokens_to_decoder:
                mask = jnp.concatenate([jnp.ones((mask.shape[0], cfg.num_global_tokens), jnp.int32), mask], axis=1)
        elif cfg.lsg and cfg.mask_first_token and not cfg.pass_global_tokens_to_decoder:
            mask = mask.at[:, 0].set(0)
        if mask.shape[1] != encoder_length:
            raise ValueError(f"encoder attention mask of length {mask.shape[1]} does not fit {encoder_length} "
                             "encoder states")
        return mask

    # --- decoder -----------------------------------------------------------------------------------------

    @float32_matmuls
    def init_cache(self, encoder_hidden, max_length: int) -> dict:
        """The cache for incremental decoding against encoder_hidden [B, S, E], `encode`'s states
        (jaxport.generation.seq2seq_cache)."""
        cfg = self.config
        if max_length > cfg.max_position_embeddings:
            raise ValueError(f"max_length {max_length} exceeds max_position_embeddings={cfg.max_position_embeddings}")
        heads = cfg.decoder_attention_heads
        return seq2seq_cache(encoder_hidden, max_length, heads, cfg.d_model // heads, self.dtype,
                             [layer.encoder_attn for layer in self.decoder.layers])

    @float32_matmuls
    def decode_hidden(self, decoder_input_ids, encoder_hidden, encoder_attention_mask=None, cache=None, position=0,
                      *, decoder_attention_mask=None, dropout_rng=None):
        if encoder_attention_mask is None:
            encoder_valid = jnp.ones(encoder_hidden.shape[:2], bool)
        else:
            encoder_valid = self.cross_attention_mask(encoder_attention_mask, encoder_hidden.shape[1]) > 0
        embeds = self.token_embeddings(self.decoder)(decoder_input_ids) * self.embed_scale
        return self.decoder(embeds, encoder_hidden, encoder_valid, decoder_attention_mask, cache, position,
                            dropout_rng)

    @float32_matmuls
    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 *, inputs_embeds=None, lsh_key=None, dropout_rng=None, truncation=False) -> Seq2SeqModelOutput:
        if decoder_input_ids is None:
            decoder_input_ids = shift_right(input_ids, self.config.decoder_start_token_id, self.config.pad_token_id)
        if inputs_embeds is None:
            had_mask = attention_mask is not None
            input_ids, attention_mask = self.prepare_inputs(input_ids, attention_mask, truncation=truncation)
            # Without a mask, the original's decoder sees every encoder state (globals, first token included).
            attention_mask_for_decoder = attention_mask if had_mask else None
        else:
            attention_mask_for_decoder = attention_mask
        encoder_rng, decoder_rng = split_rng(dropout_rng, 2)
        hidden = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, lsh_key=lsh_key,
                             dropout_rng=encoder_rng)
        attention_mask = attention_mask_for_decoder
        states, _ = self.decode_hidden(decoder_input_ids, hidden, attention_mask,
                                       decoder_attention_mask=decoder_attention_mask, dropout_rng=decoder_rng)
        return Seq2SeqModelOutput(last_hidden_state=states, encoder_last_hidden_state=hidden)


class LSGBartForConditionalGeneration(LSGBartModel):
    """LSG-BART with its language-model head (tied to the embedding unless tie_word_embeddings=False)."""

    _with_head = True

    def __init__(self, config: LSGBartConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.final_logits_bias = nnx.Param(jnp.zeros((1, config.vocab_size), param_dtype),
                                           logical_axes=(None, "vocab"))
        if not config.tie_word_embeddings:
            self.lm_head = Embed(config.vocab_size, config.d_model, ("vocab", "embed"), config.init_std,
                                 dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    @float32_matmuls
    def lm_logits(self, hidden):
        head = self.shared if self.config.tie_word_embeddings else self.lm_head
        return (head.attend(hidden).astype(jnp.float32) + self.final_logits_bias[...].astype(jnp.float32))

    @float32_matmuls
    def decode(self, decoder_input_ids, encoder_hidden, encoder_attention_mask=None, cache=None, position=0, *,
               decoder_attention_mask=None, dropout_rng=None):
        """Logits [B, T, V]. encoder_attention_mask is the encoder's input mask [B, T_in] (global tokens and
        mask_first_token are applied here). With `cache` (from `init_cache(encoder_hidden, ...)`), tokens sit at
        `position` and cross-attention uses the cache's keys/values of the encoder states (incremental
        decoding)."""
        hidden, cache = self.decode_hidden(decoder_input_ids, encoder_hidden, encoder_attention_mask, cache, position,
                                           decoder_attention_mask=decoder_attention_mask, dropout_rng=dropout_rng)
        return self.lm_logits(hidden), cache

    @float32_matmuls
    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 *, inputs_embeds=None, labels=None, lsh_key=None, dropout_rng=None,
                 truncation=False) -> Seq2SeqLMOutput:
        if decoder_input_ids is None:
            decoder_input_ids = shift_right(input_ids if labels is None else labels,
                                            self.config.decoder_start_token_id, self.config.pad_token_id)
        out = super().__call__(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                               inputs_embeds=inputs_embeds, lsh_key=lsh_key, dropout_rng=dropout_rng,
                               truncation=truncation)
        return Seq2SeqLMOutput(logits=self.lm_logits(out.last_hidden_state),
                               encoder_last_hidden_state=out.encoder_last_hidden_state)

    def generate(self, input_ids, attention_mask=None, *, lsh_key=None, truncation=False, **kwargs):
        """Greedy, beam or sampled decoding with transformers' argument names (jaxport.generation); returns
        `.sequences`. lsh_key: the key of the LSH projections for this call (sparsity_type='lsh'); None uses
        jax.random.key(DEFAULT_LSH_SEED), as `encode` does."""
        input_ids, attention_mask = self.prepare_inputs(input_ids, attention_mask, truncation=truncation)
        encode_kwargs = {} if lsh_key is None else {"lsh_key": _typed_key(lsh_key)}
        return seq2seq_generate(self, input_ids, attention_mask, encode_kwargs=encode_kwargs, **kwargs)

