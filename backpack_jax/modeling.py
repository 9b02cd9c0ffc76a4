"""GPT-2 and Backpack-GPT2 in Flax NNX, numerically matching transformers' GPT2LMHeadModel and the authors'
BackpackGPT2LMHeadModel ("Backpack Language Models", Hewitt et al., ACL 2023; the modeling file of
stanfordnlp/backpack-gpt2, shipped in pyvene 0.1.8).

A Backpack predicts from a weighted sum of sense vectors: each token has `num_senses` vectors computed from its
embedding alone (the sense network), and a GPT-2 (the contextualization network, the same GPT2Model class as plain
GPT-2 here) gives, per sense, causal attention-like weights over the sequence. The output embedding is the
(tied) input embedding. Neither model has a padding mask (the originals take none); generation keeps a cache of
GPT-2's keys/values and of the senses and sense-weight keys of every token fed.
Parameters carry logical axes (embed, heads, kv, mlp, vocab; senses share "heads").
"""
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from backpack_jax.configuration import BackpackGPT2Config, GPT2Config
from backpack_jax.convert import backpack_rules, gpt2_rules
from jaxport import attention
from jaxport.causal_attention import causal_attention
from jaxport.causal_attention import supported as causal_kernels_supported
from jaxport.generation import causal_lm_generate
from jaxport.hf import PretrainedModel
from jaxport.layers import (
    ACTIVATIONS,
    Branch,
    Dense,
    Embed,
    LayerNorm,
    causal_mask,
    dropout,
    float32_matmuls,
    mask_bias,
    remat,
    split_rng,
)

RESIDUAL_DTYPE = jnp.float32  # of the residual streams, whatever the computation dtype (GPT2Model.hidden)


@flax.struct.dataclass
class GPT2ModelOutput:
    last_hidden_state: jax.Array  # [B, T, n_embd]


@flax.struct.dataclass
class CausalLMOutput:
    logits: jax.Array  # [B, T, V] in the model's dtype (as transformers' Flax models)


@flax.struct.dataclass
class BackpackGPT2BaseModelOutput:
    hidden_states: jax.Array  # [B, T, n_embd]: the weighted sum of senses
    contextualization: jax.Array  # [B, num_senses, T, T], float32


@flax.struct.dataclass
class BackpackGPT2LMHeadModelOutput:
    logits: jax.Array  # [B, T, V] in the model's dtype (as transformers' Flax models)
    contextualization: jax.Array  # [B, num_senses, T, T], float32


def check_length(config: GPT2Config, length: int, position_ids=None) -> None:
    """GPT-2 has n_positions learned positions: refuse a longer sequence (or, given concretely, larger position
    ids) rather than let the embedding lookup clamp them silently."""
    if length > config.n_positions:
        raise ValueError(f"sequence of {length} tokens is longer than the model's n_positions={config.n_positions}")
    if position_ids is not None and not isinstance(position_ids, jax.core.Tracer):
        largest = int(np.max(np.asarray(position_ids))) if np.size(position_ids) else 0
        if largest >= config.n_positions:
            raise ValueError(f"position id {largest} is out of range for n_positions={config.n_positions}")


def causal_weights(q: jax.Array, k: jax.Array, scale: float, mask: jax.Array, dropout_rate: float = 0.0,
                   rng=None) -> jax.Array:
    """softmax(q.k * scale) over the keys `mask` allows, float32 [B, heads, T, S], for q [B, T, heads, dim] and
    k [B, S, heads, dim]: GPT-2's attention probabilities, and Backpack's contextualization weights per sense."""
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    return dropout(jax.nn.softmax(scores + mask_bias(mask), axis=-1), dropout_rate, rng)


def attention_implementation(config: GPT2Config, dtype, length: int, training: bool) -> str:
    """config.attn_implementation for one forward pass without a cache over `length` tokens. "auto" in training on
    an NVIDIA GPU with half-precision compute is "pallas" (jaxport.causal_attention: the only fused attention with
    dropout, and faster than cuDNN's forward and backward without it; bench/RESULTS.md); otherwise "auto" and the
    others go through jaxport.attention.resolve, and "pallas" stays as it is."""
    name = config.attn_implementation
    if name == "pallas" or (name == "auto" and training and causal_kernels_supported(config.head_dim)
                            and attention.cudnn_supported(dtype, config.head_dim, attention.default_platform())):
        return "pallas"
    return attention.resolve(name, dtype, config.head_dim, lengths=(length,),
                             dropout=training and config.attn_pdrop > 0)


def write_cache(buffer: jax.Array, new: jax.Array, position) -> jax.Array:
    """`new` [B, T, ...] written into the cache buffer [B, max_length, ...] at `position`."""
    return jax.lax.dynamic_update_slice_in_dim(buffer, new.astype(buffer.dtype), position, axis=1)


class GPT2Attention(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, h, k = config.n_embd, config.n_head, config.head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        std = config.initializer_range
        # One projection to q, k and v (transformers' c_attn), kept (embed, 3, heads, kv) so heads can be sharded.
        self.c_attn = Dense((d,), (3, h, k), ("embed", None, "heads", "kv"), std, use_bias=True, **kw)
        # GPT-2 scales the residual projections' initialisation by 1/sqrt(2 n_layer).
        self.c_proj = Dense((h, k), (d,), ("heads", "kv", "embed"), std / (2 * config.n_layer) ** 0.5,
                            use_bias=True, **kw)
        self.scale = (k ** -0.5 if config.scale_attn_weights else 1.0)
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.attn_pdrop = config.attn_pdrop
        self.dtype = dtype

    def __call__(self, x, mask, cache=None, position=0, rng=None, implementation: str = "einsum"):
        """x [B, T, D] attends to the keys the boolean `mask` [1, 1, T, S] allows: its own, or with `cache`
        ({"key", "value"} [B, max_length, heads, kv]) the cache's after writing its own at `position`.
        implementation: "einsum", "pallas" (jaxport.causal_attention) or fused (jaxport.attention); the last two
        without a cache, causal over x itself. Returns (c_proj's Branch, for the next LayerNorm to drop out and add
        to the residual stream; cache)."""
        qkv = self.c_attn(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if cache is not None:
            k, v = write_cache(cache["key"], k, position), write_cache(cache["value"], v, position)
            cache = {"key": k, "value": v}
        if implementation == "pallas":
            out = causal_attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                                   scale=self.scale, dropout_rate=self.attn_pdrop, rng=rng)
        elif implementation != "einsum":
            out = attention.fused_attention(q, k, v, None, None, implementation, scale=self.scale, is_causal=True)
        else:
            probs = causal_weights(q, k, self.scale, mask, self.attn_pdrop, rng).astype(self.dtype)
            out = jnp.einsum("bhts,bshd->bthd", probs, v.astype(self.dtype))
        return self.c_proj.branch(out.astype(self.dtype)), cache


class GPT2MLP(nnx.Module):
    """c_fc, activation, c_proj, dropout: GPT-2's MLP, and the Backpack sense network's (the original's BackpackMLP
    is the same computation), whose last one projects to every sense at once (out_shape (num_senses, n_embd))."""

    def __init__(self, config: GPT2Config, in_dim: int, inner_dim: int, out_shape: tuple[int, ...],
                 out_axes: tuple[str | None, ...], proj_std: float, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_fc = Dense((in_dim,), (inner_dim,), ("embed", "mlp"), config.initializer_range, use_bias=True, **kw)
        self.c_proj = Dense((inner_dim,), out_shape, ("mlp", *out_axes), proj_std, use_bias=True, **kw)
        self.act = ACTIVATIONS[config.activation_function]
        self.resid_pdrop = config.resid_pdrop

    def __call__(self, x, rng=None):
        return dropout(self.c_proj(self.act(self.c_fc(x))), self.resid_pdrop, rng)

    def branch(self, x) -> Branch:
        """c_fc, activation, c_proj without its bias and dropout: for LayerNorm.add_and_norm."""
        return self.c_proj.branch(self.act(self.c_fc(x)))


class GPT2Block(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = LayerNorm(d, eps, **kw)
        self.attn = GPT2Attention(config, layer_idx, **kw)
        self.ln_2 = LayerNorm(d, eps, **kw)
        self.mlp = GPT2MLP(config, d, config.inner_dim, (d,), ("embed",),
                           config.initializer_range / (2 * config.n_layer) ** 0.5, **kw)
        self.resid_pdrop = config.resid_pdrop

    def __call__(self, x, branch, mask, cache=None, position=0, rng=None, implementation: str = "einsum"):
        """(residual stream, the MLP's Branch, cache) of the residual stream x and the previous block's MLP Branch
        (None in the first block): each branch joins the stream, dropped out, in the LayerNorm after it
        (LayerNorm.add_and_norm, one kernel on a GPU), as flash-attention's GPT-2 runs; the last block's in ln_f."""
        rngs = split_rng(rng, 3)
        x, h = self.ln_1.add_and_norm(x, branch, self.resid_pdrop, rngs[0])
        attn_branch, cache = self.attn(h, mask, cache, position, rngs[1], implementation)
        x, h = self.ln_2.add_and_norm(x, attn_branch, self.resid_pdrop, rngs[2])
        return x, self.mlp.branch(h), cache


class GPT2Model(PretrainedModel):
    """transformers' GPT2Model: token and position embeddings, pre-LayerNorm blocks, final LayerNorm. Also
    Backpack's contextualization network."""

    config_class = GPT2Config
    conversion_rules = staticmethod(lambda config: gpt2_rules(config, with_head=False))

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        std = config.initializer_range
        self.wte = Embed(config.vocab_size, config.n_embd, ("vocab", "embed"), std, **kw)
        self.wpe = Embed(config.n_positions, config.n_embd, (None, "embed"), std, **kw)
        self.h = nnx.List([GPT2Block(config, i, **kw) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon, **kw)

    def hidden(self, input_ids, position_ids=None, cache=None, position=0, rng=None):
        """(final hidden states [B, T, D], cache). Without `cache`: the whole sequence, causally. With `cache`
        (`init_cache`): the tokens sit at `position`, after the cached ones, and the cache comes back updated.
        position_ids default to the tokens' places; the causal mask always follows the places."""
        length = input_ids.shape[1]
        places = position + jnp.arange(length)
        if position_ids is None:
            position_ids = places[None]
        rngs = split_rng(rng, len(self.h) + 2)
        # The residual stream stays float32 under bf16 compute, as torch.autocast keeps it (embedding lookups are not
        # autocast, and bf16 block outputs add to float32): rounded to bf16 at every addition, the full-size Backpack
        # trained on one batch fell far behind the original (bench/RESULTS.md, Backpack losses).
        x = self.wte(input_ids, RESIDUAL_DTYPE) + self.wpe(position_ids, RESIDUAL_DTYPE)
        x = dropout(x, self.config.embd_pdrop, rngs[-1])
        branch = None
        num_keys = length if cache is None else cache["layers"][0]["key"].shape[1]
        mask = causal_mask(places, jnp.arange(num_keys))
        if cache is not None:
            new_cache = []
            for block, layer_cache, block_rng in zip(self.h, cache["layers"], rngs[:len(self.h)], strict=True):
                x, branch, layer_cache = block(x, branch, mask, layer_cache, position, block_rng)
                new_cache.append(layer_cache)
            return self.ln_f.add_and_norm(x, branch)[1], {"layers": new_cache}
        implementation = attention_implementation(self.config, self.dtype, length, training=rng is not None)

        def apply(block, x, branch, mask, rng):
            return block(x, branch, mask, rng=rng, implementation=implementation)[:2]

        apply = remat(apply, self.config.remat)
        for block, block_rng in zip(self.h, rngs[:len(self.h)], strict=True):
            x, branch = apply(block, x, branch, mask, block_rng)
        return self.ln_f.add_and_norm(x, branch, self.config.resid_pdrop, rngs[-2])[1], None

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        """Empty key/value buffers [batch_size, max_length, heads, kv] per layer."""
        shape = (batch_size, max_length, self.config.n_head, self.config.head_dim)
        return {"layers": [{"key": jnp.zeros(shape, self.dtype), "value": jnp.zeros(shape, self.dtype)}
                           for _ in self.h]}

    @float32_matmuls
    def __call__(self, input_ids, position_ids=None, *, dropout_rng=None) -> GPT2ModelOutput:
        check_length(self.config, input_ids.shape[1], position_ids)
        return GPT2ModelOutput(self.hidden(input_ids, position_ids, rng=dropout_rng)[0])


class CausalLM(PretrainedModel):
    """What the two language models share: transformers-style `generate` over `init_cache` / `decode`, and the
    length checks."""

    def generate(self, input_ids, *, rng=None, **kwargs):
        """Greedy or sampled decoding (do_sample, temperature, top_k, top_p, ...; transformers' names, see
        jaxport.generation.GenerationConfig) with a cache; `.sequences` [B, prompt + new tokens]: the prompt, then
        the generated tokens (after an EOS, pad_token_id, else EOS). rng: a PRNG key, needed for sampling."""
        return causal_lm_generate(self, jnp.asarray(input_ids, jnp.int32), rng=rng,
                                  max_positions=self.config.n_positions, **kwargs)


class GPT2LMHeadModel(CausalLM):
    """transformers' GPT2LMHeadModel: GPT2Model and an output layer tied to the token embedding (or, with
    tie_word_embeddings False, its own)."""

    config_class = GPT2Config
    conversion_rules = staticmethod(gpt2_rules)
    tied_head_keys = ("lm_head.weight", "transformer.wte.weight")

    def __init__(self, config: GPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = Dense((config.n_embd,), (config.vocab_size,), ("embed", "vocab"),
                                 config.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        return self.transformer.init_cache(batch_size, max_length)

    @float32_matmuls
    def decode(self, input_ids, cache=None, position=0, *, position_ids=None, logits_to_keep: int = 0,
               dropout_rng=None):
        """(logits [B, T, V], cache): GPT2Model.hidden, then the output layer; logits_to_keep > 0: of the last that
        many tokens only (generation's prompt step needs one row of logits, not T x V)."""
        hidden, cache = self.transformer.hidden(input_ids, position_ids, cache, position, dropout_rng)
        hidden = hidden[:, -logits_to_keep:]
        head = self.transformer.wte.attend if self.config.tie_word_embeddings else self.lm_head
        return head(hidden), cache

    @float32_matmuls
    def __call__(self, input_ids, position_ids=None, *, dropout_rng=None) -> CausalLMOutput:
        check_length(self.config, input_ids.shape[1], position_ids)
        return CausalLMOutput(self.decode(input_ids, position_ids=position_ids, dropout_rng=dropout_rng)[0])


# ---------------------------------------------------------------------------------------------------------------
# Backpack


class BackpackNoMixBlock(nnx.Module):
    """A transformer block without attention: each token on its own."""

    def __init__(self, config: BackpackGPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = LayerNorm(d, eps, **kw)
        self.ln_2 = LayerNorm(d, eps, **kw)
        # 4 * n_embd whatever n_inner says, as the original.
        self.mlp = GPT2MLP(config, d, 4 * d, (d,), ("embed",), config.initializer_range, **kw)
        self.resid_pdrop = config.resid_pdrop

    def __call__(self, x, residual, rng=None):
        """The original's resid_dropout1(x) + residual, ln_1, mlp (whose output is dropped out twice, by the MLP
        and by resid_dropout2: in distribution one dropout of rate 1 - (1 - p)^2), + residual, ln_2; each
        dropout-add-LayerNorm one LayerNorm.add_and_norm."""
        rngs = split_rng(rng, 2)
        p = self.resid_pdrop
        residual, h = self.ln_1.add_and_norm(residual, Branch(x, None), p, rngs[0])
        return self.ln_2.add_and_norm(residual, self.mlp.branch(h), 1 - (1 - p) ** 2, rngs[1])[1]


class BackpackSenseNetwork(nnx.Module):
    """num_senses vectors per token, from its embedding alone: LayerNorm, a no-mix block, then an MLP to
    n_embd -> sense_intermediate_scale * n_embd -> (num_senses, n_embd)."""

    def __init__(self, config: BackpackGPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.n_embd
        self.ln = LayerNorm(d, config.layer_norm_epsilon, **kw)
        self.block = BackpackNoMixBlock(config, **kw)
        self.final_mlp = GPT2MLP(config, d, config.sense_intermediate_scale * d, (config.num_senses, d),
                                 ("heads", "embed"), config.initializer_range, **kw)
        self.embd_pdrop = config.embd_pdrop

    def __call__(self, embeds, rng=None):
        """Senses [B, T, num_senses, D] of token embeddings [B, T, D]."""
        rngs = split_rng(rng, 3)
        residual = dropout(embeds, self.embd_pdrop, rngs[0])
        return self.final_mlp(self.block(self.ln(residual), residual, rngs[1]), rngs[2])


class BackpackWeightNetwork(nnx.Module):
    """Per sense, causal attention-like weights over the sequence from the contextualization network's states: one
    query and one key of n_embd // num_senses per sense and token, no values."""

    def __init__(self, config: BackpackGPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.c_attn = Dense((config.n_embd,), (2, config.num_senses, config.sense_head_dim),
                            ("embed", None, "heads", "kv"), config.initializer_range, use_bias=True, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
        self.scale = config.sense_head_dim ** -0.5

    def query_key(self, hidden):
        """Queries and keys [B, T, num_senses, head] of the states [B, T, D]."""
        projected = self.c_attn(hidden)
        return projected[:, :, 0], projected[:, :, 1]

    def __call__(self, query, key, mask, dtype):
        """Contextualization weights [B, num_senses, T, S] in float32 (what the model returns) and in `dtype` (what
        weighs the senses)."""
        return contextualization_weights(query, key, mask, self.scale, jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def contextualization_weights(query, key, mask, scale: float, dtype):
    """causal_weights(query, key, scale, mask), returned in float32 and in `dtype`. The backward pass keeps the
    weights in `dtype` (autodiff kept a float32 copy of [B, num_senses, T, T] to read back) and hands the scores'
    gradient to the query/key products in the queries' dtype."""
    weights = causal_weights(query, key, scale, mask)
    return weights, weights.astype(dtype)


def _contextualization_weights_fwd(query, key, mask, scale, dtype):
    weights, cast = contextualization_weights(query, key, mask, scale, dtype)
    return (weights, cast), (query, key, cast)


def _contextualization_weights_bwd(scale, dtype, residuals, grads):
    query, key, cast = residuals
    weights = cast.astype(jnp.float32)
    grad = grads[0] + grads[1].astype(jnp.float32)
    scores_grad = (weights * (grad - (weights * grad).sum(-1, keepdims=True)) * scale).astype(query.dtype)
    d_query = jnp.einsum("bhts,bshd->bthd", scores_grad, key, preferred_element_type=jnp.float32)
    d_key = jnp.einsum("bhts,bthd->bshd", scores_grad, query, preferred_element_type=jnp.float32)
    return d_query.astype(query.dtype), d_key.astype(key.dtype), None


contextualization_weights.defvjp(_contextualization_weights_fwd, _contextualization_weights_bwd)


def weighted_senses(contextualization, senses, dtype):
    """sum over senses and positions s of contextualization [B, senses, T, S] times senses [B, S, senses, D].
    Contracted over (position, sense), the senses' own order, so that they are read as they lie, as one
    [B, S * senses, D] matrix (jnp.einsum orders the pair (sense, position), and XLA then transposes the senses, the
    largest activation of the step); the weights' side is laid out by the softmax that writes them."""
    return jax.lax.dot_general(contextualization.astype(dtype), senses.astype(dtype),
                               (((3, 1), (1, 2)), ((0,), (0,))))


class BackpackGPT2Model(PretrainedModel):
    """The authors' BackpackGPT2Model: senses, contextualization weights and their weighted sum; the word and
    position embeddings are the contextualization network's (wte, wpe)."""

    config_class = BackpackGPT2Config
    conversion_rules = staticmethod(lambda config: backpack_rules(config, with_head=False))

    def __init__(self, config: BackpackGPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gpt2_model = GPT2Model(config, **kw)
        self.sense_network = BackpackSenseNetwork(config, **kw)
        self.sense_weight_net = BackpackWeightNetwork(config, **kw)

    def token_senses(self, input_ids, rng=None):
        """Senses [B, T, num_senses, D]."""
        return self.sense_network(self.gpt2_model.wte(input_ids, RESIDUAL_DTYPE), rng)

    def hidden(self, input_ids, position_ids=None, cache=None, position=0, rng=None, keep: int = 0):
        """(weighted sums of senses [B, T, D], contextualization float32 [B, senses, T, S], cache); with `cache`
        (`init_cache`) as GPT2Model.hidden, the senses and sense-weight keys of the tokens fed are cached too
        (each token's senses depend on it alone: caching them spares the sense network, the widest part of the
        model, every earlier token at every step). keep > 0: outputs of the last `keep` tokens only."""
        sense_rng, gpt2_rng = split_rng(rng, 2)
        senses = self.token_senses(input_ids, sense_rng)
        states, gpt2_cache = self.gpt2_model.hidden(input_ids, position_ids, None if cache is None else cache["gpt2"],
                                                    position, gpt2_rng)
        query, key = self.sense_weight_net.query_key(states)
        if cache is not None:
            senses = write_cache(cache["senses"], senses, position)
            key = write_cache(cache["sense_keys"], key, position)
            cache = {"gpt2": gpt2_cache, "senses": senses, "sense_keys": key}
        places = (position + jnp.arange(input_ids.shape[1]))[-keep:]
        mask = causal_mask(places, jnp.arange(key.shape[1]))
        query = query[:, -keep:]
        contextualization, weights = self.sense_weight_net(query, key, mask, self.dtype)
        return weighted_senses(weights, senses, self.dtype), contextualization, cache

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        c = self.config
        return {"gpt2": self.gpt2_model.init_cache(batch_size, max_length),
                "senses": jnp.zeros((batch_size, max_length, c.num_senses, c.n_embd), self.dtype),
                "sense_keys": jnp.zeros((batch_size, max_length, c.num_senses, c.sense_head_dim), self.dtype)}

    @float32_matmuls
    def senses(self, input_ids):
        """The sense vectors of each token, [B, num_senses, T, D] (the original's layout)."""
        return self.token_senses(jnp.asarray(input_ids)).transpose(0, 2, 1, 3)

    @float32_matmuls
    def __call__(self, input_ids, position_ids=None, *, dropout_rng=None) -> BackpackGPT2BaseModelOutput:
        check_length(self.config, input_ids.shape[1], position_ids)
        hidden, contextualization, _ = self.hidden(input_ids, position_ids, rng=dropout_rng)
        return BackpackGPT2BaseModelOutput(hidden, contextualization)

    @float32_matmuls
    def run_with_custom_contextualization(self, input_ids, contextualization) -> BackpackGPT2BaseModelOutput:
        """The weighted sum of the senses under the given weights [B, num_senses, T, T], used exactly as given (no
        mask, no normalisation)."""
        batch, length = input_ids.shape
        expected = (batch, self.config.num_senses, length, length)
        if tuple(contextualization.shape) != expected:
            raise ValueError(f"contextualization of shape {tuple(contextualization.shape)}: expected {expected} "
                             "(batch, num_senses, length, length)")
        check_length(self.config, length)
        hidden = weighted_senses(jnp.asarray(contextualization), self.token_senses(input_ids), self.dtype)
        return BackpackGPT2BaseModelOutput(hidden, jnp.asarray(contextualization))


class BackpackGPT2LMHeadModel(CausalLM):
    """The authors' BackpackGPT2LMHeadModel: the weighted sum of senses through the output embedding, which is
    the word embedding (always tied)."""

    config_class = BackpackGPT2Config
    conversion_rules = staticmethod(backpack_rules)

    def __init__(self, config: BackpackGPT2Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.backpack = BackpackGPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def lm_logits(self, hidden):
        return self.backpack.gpt2_model.wte.attend(hidden)

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        return self.backpack.init_cache(batch_size, max_length)

    @float32_matmuls
    def decode(self, input_ids, cache=None, position=0, *, position_ids=None, logits_to_keep: int = 0,
               dropout_rng=None):
        """(logits [B, T, V], cache); see BackpackGPT2Model.hidden. logits_to_keep > 0: of the last that many tokens
        only (their contextualization weights and sums of senses only, too)."""
        hidden, _, cache = self.backpack.hidden(input_ids, position_ids, cache, position, dropout_rng,
                                                logits_to_keep)
        return self.lm_logits(hidden), cache

    @float32_matmuls
    def senses(self, input_ids):
        """The sense vectors of each token, [B, num_senses, T, D]."""
        return self.backpack.senses(input_ids)

    @float32_matmuls
    def __call__(self, input_ids, position_ids=None, *, dropout_rng=None) -> BackpackGPT2LMHeadModelOutput:
        out = self.backpack(input_ids, position_ids, dropout_rng=dropout_rng)
        return BackpackGPT2LMHeadModelOutput(self.lm_logits(out.hidden_states), out.contextualization)

    @float32_matmuls
    def run_with_custom_contextualization(self, input_ids, contextualization) -> BackpackGPT2LMHeadModelOutput:
        """Logits [B, T, V] from the senses weighted by `contextualization` [B, num_senses, T, T], exactly as given
        (no mask, no normalisation), as the original's method of that name."""
        out = self.backpack.run_with_custom_contextualization(input_ids, contextualization)
        return BackpackGPT2LMHeadModelOutput(self.lm_logits(out.hidden_states), out.contextualization)
