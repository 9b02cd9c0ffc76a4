"""SIP's two models in Flax NNX, each the shared t5_jax T5 plus what SIP puts in front of its encoder.

- `SIPPreTrainingModel` (the original's sip/fst_pretrain.py:171-239): an FST encoder turns every transition
  (from state, input symbol, output symbol, to state[, final flag]) into one d_model vector; these vectors
  are put before the embedded input string and the attention mask gets ones in front.
- `SIPFinetuningModel` (sip/embed_finetune.py:195-285; the Hub model namednil/sip-d4): a tunable prefix of
  `prefix_length` vectors instead, initialised as the average of stored FST encodings (`prefix_init_tensor`).

As in the original, the prepended positions are never masked, FST padding included (the original's mask is
all ones over them: fst_pretrain.py:228-231, embed_finetune.py:259-262).

Generation goes through `jaxport.generation.seq2seq_generate`: `encode` prepends, `decode` extends the
encoder mask it is given by the prepended length, so the input's own mask is all a caller passes.
"""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxport.convert import ConversionError
from jaxport.generation import seq2seq_generate
from jaxport.hf import PretrainedModel, find_weights, resolve_folder, select_tensors
from jaxport.layers import Embed, dropout, float32_matmuls, split_rng
from jaxport.seq2seq import Seq2SeqLMOutput
from sip_jax.configuration import SIPFinetuningConfig, SIPPreTrainingConfig
from sip_jax.rules import T5_PYTORCH_PREFIX, sip_finetune_rules, sip_pretrain_rules
from t5_jax.modeling import T5ForConditionalGeneration

FST_MLP_DROPOUT = 0.1  # fixed in the original (sip/fst_pretrain.py:186)


class FSTInputError(ValueError):
    """A transition array of the wrong shape or with ids outside the model's tables."""


class StoredTensor(nnx.Param):
    """A tensor kept with the weights but never used by the forward pass (the original's persistent buffer
    `prefix_init_tensor`). A Param subclass so that from_pretrained / save_pretrained carry it; the
    fine-tuning config gives it learning rate 0."""


class Linear(nnx.Module):
    """torch.nn.Linear: kernel [in, out] plus bias, initialised as torch does (uniform, bound 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, out_axis: str | None, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(in_features)
        self.dtype = dtype
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (in_features, out_features), param_dtype,
                                                   -bound, bound), logical_axes=(None, out_axis))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (out_features,), param_dtype, -bound, bound),
                              logical_axes=(out_axis,))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


def check_fst_rep_shape(fst_rep, config: SIPPreTrainingConfig) -> None:
    """Static checks (they hold under jit): [batch, transitions, 4 or 5], and a flag column when the
    model has final-state embeddings (the original's input layer would not fit otherwise)."""
    if fst_rep.ndim != 3:
        raise FSTInputError(f"fst_rep must be [batch, transitions, 4 or 5], got shape {tuple(fst_rep.shape)}")
    width = fst_rep.shape[-1]
    if width not in (4, 5):
        raise FSTInputError(f"a transition has 4 or 5 entries (from state, input symbol, output symbol, to state"
                            f"[, is final]), got {width} (fst_rep shape {tuple(fst_rep.shape)})")
    if width == 4 and config.final_state_embedding_dim > 0:
        raise FSTInputError(f"this model embeds the final-state flag (final_state_embedding_dim="
                            f"{config.final_state_embedding_dim}): transitions need 5 entries, got 4")
    if fst_rep.shape[1] == 0:
        raise FSTInputError("fst_rep has no transitions")


def check_fst_rep_values(fst_rep, config: SIPPreTrainingConfig) -> None:
    """Host-side range checks on concrete ids (inside jit an out-of-range id would silently become NaN)."""
    fst_rep = np.asarray(fst_rep)
    check_fst_rep_shape(fst_rep, config)
    limits = {0: ("from state", config.num_states), 1: ("input symbol", config.fst_tokenizer_vocab_size),
              2: ("output symbol", config.fst_tokenizer_vocab_size), 3: ("to state", config.num_states)}
    if fst_rep.shape[-1] == 5:
        limits[4] = ("final flag", config.num_final_state_info)
    for column, (name, limit) in limits.items():
        values = fst_rep[..., column]
        bad = np.argwhere((values < 0) | (values >= limit))
        if len(bad):
            where = tuple(int(i) for i in bad[0])
            raise FSTInputError(f"{name} id {int(values[where])} at (example, transition) {where} is outside "
                                f"[0, {limit})")


class FSTEncoder(nnx.Module):
    """One vector per transition (sip/fst_pretrain.py:179-216): state embeddings of its source and target,
    FST-tokenizer embeddings of its input and output symbols, and (5-wide transitions) an embedding of the
    target's final flag, concatenated in that order, then a linear layer to d_model, or
    Linear -> GELU (exact) -> Dropout(0.1) -> Linear when `mlp_hidden_dim` is set."""

    def __init__(self, config: SIPPreTrainingConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.config = config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # torch.nn.Embedding's initialisation: N(0, 1).
        self.state_embeddings = Embed(config.num_states, config.state_embedding_dim, (None, None), 1.0, **kw)
        self.token_embeddings = Embed(config.fst_tokenizer_vocab_size, config.token_embedding_dim, (None, None),
                                      1.0, **kw)
        self.final_state_embedding = Embed(config.num_final_state_info, config.final_state_embedding_dim,
                                           (None, None), 1.0, **kw)
        features = config.transition_features
        if config.mlp_hidden_dim is None:
            self.input_layer = Linear(features, config.d_model, "embed", **kw)
        else:
            self.down_project = Linear(features, config.mlp_hidden_dim, "mlp", **kw)
            self.output_layer = Linear(config.mlp_hidden_dim, config.d_model, "embed", **kw)

    def __call__(self, fst_rep: jax.Array, dropout_rng=None) -> jax.Array:
        """[batch, transitions, 4 or 5] int ids -> [batch, transitions, d_model]."""
        check_fst_rep_shape(fst_rep, self.config)
        fst_rep = fst_rep.astype(jnp.int32)
        batch, length = fst_rep.shape[:2]
        parts = [self.state_embeddings(fst_rep[..., 0]), self.state_embeddings(fst_rep[..., 3]),
                 self.token_embeddings(fst_rep[..., 1:3]).reshape(batch, length, -1)]
        if fst_rep.shape[-1] == 5:
            parts.append(self.final_state_embedding(fst_rep[..., 4]))
        features = jnp.concatenate(parts, axis=-1)
        if self.config.mlp_hidden_dim is None:
            return self.input_layer(features)
        hidden = jax.nn.gelu(self.down_project(features), approximate=False)
        return self.output_layer(dropout(hidden, FST_MLP_DROPOUT, dropout_rng))


def _prepend(prefix: jax.Array, embeds: jax.Array, attention_mask: jax.Array | None):
    """prefix ++ embeds along the length, and the mask with ones for the prefix (all ones when None)."""
    batch = embeds.shape[0]
    prefix = jnp.broadcast_to(prefix.astype(embeds.dtype), (batch, *prefix.shape[1:]))
    if attention_mask is None:
        attention_mask = jnp.ones(embeds.shape[:2], jnp.int32)
    ones = jnp.ones((batch, prefix.shape[1]), attention_mask.dtype)
    return jnp.concatenate([prefix, embeds], axis=1), jnp.concatenate([ones, attention_mask], axis=1)


def extend_encoder_mask(encoder_attention_mask: jax.Array, encoder_length: int) -> jax.Array:
    """The mask of the input string alone -> the mask of prefix ++ input (ones in front); a mask that already
    covers the encoder states is returned unchanged."""
    missing = encoder_length - encoder_attention_mask.shape[1]
    if missing < 0:
        raise ValueError(f"encoder mask of length {encoder_attention_mask.shape[1]} for {encoder_length} states")
    if missing == 0:
        return encoder_attention_mask
    ones = jnp.ones((encoder_attention_mask.shape[0], missing), encoder_attention_mask.dtype)
    return jnp.concatenate([ones, encoder_attention_mask], axis=1)


class _PrefixedT5(PretrainedModel):
    """What both SIP models share: `self.model` (the T5) and the decoder side."""

    tied_head_keys = tuple(T5_PYTORCH_PREFIX + key for key in T5ForConditionalGeneration.tied_head_keys)

    @float32_matmuls
    def init_cache(self, encoder_hidden: jax.Array, max_length: int) -> dict:
        """T5's cache for decoding against `encode`'s states (prefix ++ input)."""
        return self.model.init_cache(encoder_hidden, max_length)

    @float32_matmuls
    def decode(self, decoder_input_ids, encoder_hidden, encoder_attention_mask, cache=None, position=0, *,
               decoder_attention_mask=None, dropout_rng=None):
        """T5's decode over prefix ++ input states; `encoder_attention_mask` may be the input's own mask."""
        mask = extend_encoder_mask(encoder_attention_mask, encoder_hidden.shape[1])
        return self.model.decode(decoder_input_ids, encoder_hidden, mask, cache, position,
                                 decoder_attention_mask=decoder_attention_mask, dropout_rng=dropout_rng)

    def _forward(self, embeds, attention_mask, decoder_input_ids, decoder_attention_mask, labels, dropout_rng):
        return self.model(attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                          decoder_attention_mask=decoder_attention_mask, inputs_embeds=embeds, labels=labels,
                          dropout_rng=dropout_rng)


class SIPPreTrainingModel(_PrefixedT5):
    """T5 reading an FST encoding followed by the input string (model_type sip_pretrain)."""

    config_class = SIPPreTrainingConfig
    conversion_rules = staticmethod(sip_pretrain_rules)

    def __init__(self, config: SIPPreTrainingConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.model = T5ForConditionalGeneration(config.t5_config(), **kw)
        self.fst_encoder = FSTEncoder(config, **kw)

    @float32_matmuls
    def encode_fst(self, fst_rep: jax.Array, dropout_rng=None) -> jax.Array:
        """[batch, transitions, 4 or 5] -> [batch, transitions, d_model], what is put before the input."""
        return self.fst_encoder(jnp.asarray(fst_rep), dropout_rng)

    @float32_matmuls
    def embed_inputs(self, input_ids, attention_mask=None, *, fst_rep, dropout_rng=None):
        """(FST encoding ++ embedded input [B, T + S, D], mask [B, T + S] with ones over the FST)."""
        return _prepend(self.encode_fst(fst_rep, dropout_rng), self.model.shared(input_ids), attention_mask)

    @float32_matmuls
    def encode(self, input_ids, attention_mask=None, *, fst_rep, dropout_rng=None) -> jax.Array:
        fst_rng, encoder_rng = split_rng(dropout_rng, 2)
        embeds, mask = self.embed_inputs(input_ids, attention_mask, fst_rep=fst_rep, dropout_rng=fst_rng)
        return self.model.encode(attention_mask=mask, inputs_embeds=embeds, dropout_rng=encoder_rng)

    @float32_matmuls
    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 fst_rep, labels=None, dropout_rng=None) -> Seq2SeqLMOutput:
        fst_rng, t5_rng = split_rng(dropout_rng, 2)
        embeds, mask = self.embed_inputs(input_ids, attention_mask, fst_rep=fst_rep, dropout_rng=fst_rng)
        return self._forward(embeds, mask, decoder_input_ids, decoder_attention_mask, labels, t5_rng)

    def generate(self, input_ids, attention_mask=None, *, fst_rep, **kwargs):
        """transformers-style generation (greedy, beam, sampling) conditioned on the FSTs in `fst_rep`."""
        return seq2seq_generate(FSTConditioned(self, fst_rep), input_ids, attention_mask, **kwargs)


class FSTInput(nnx.Variable):
    """The transitions a generation call is conditioned on (state, so a new FST does not recompile)."""


class FSTConditioned(nnx.Module):
    """A pre-training model with its FSTs bound: the `encode(input_ids, attention_mask)` / `init_cache` /
    `decode` interface jaxport.generation.seq2seq_generate expects."""

    def __init__(self, model: SIPPreTrainingModel, fst_rep):
        self.sip = model
        self.config = model.config
        self.fst_rep = FSTInput(jnp.asarray(fst_rep, jnp.int32))

    def encode(self, input_ids, attention_mask=None):
        fst_rep = self.fst_rep[...]
        if fst_rep.shape[0] != input_ids.shape[0]:
            raise FSTInputError(f"fst_rep has {fst_rep.shape[0]} rows for {input_ids.shape[0]} inputs")
        return self.sip.encode(input_ids, attention_mask, fst_rep=fst_rep)

    def init_cache(self, encoder_hidden: jax.Array, max_length: int) -> dict:
        return self.sip.init_cache(encoder_hidden, max_length)

    def decode(self, *args, **kwargs):
        return self.sip.decode(*args, **kwargs)


class SIPFinetuningModel(_PrefixedT5):
    """T5 reading a tunable prefix followed by the input string (model_type sip_finetune; namednil/sip-d4).

    As in the original, a freshly built model's prefix is NaN (sip/embed_finetune.py:212) and
    `from_pretrained` initialises a NaN (or absent) prefix from `prefix_init_tensor` (embed_finetune.py:
    215-235): the average over `num_examples` of the stored encodings (a random choice of them when
    `random_selection`, drawn with an explicit PRNG key), cut to `prefix_length` positions.
    """

    config_class = SIPFinetuningConfig
    conversion_rules = staticmethod(sip_finetune_rules)

    def __init__(self, config: SIPFinetuningConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.model = T5ForConditionalGeneration(config.t5_config(), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.d_model
        self.prefix_init_tensor = StoredTensor(
            jnp.zeros((config.num_precomputed_examples, config.prefix_max_init_length, d), param_dtype),
            logical_axes=(None, None, "embed"))
        self.prefix_embedding = nnx.Param(jnp.full((1, config.prefix_length, d), jnp.nan, param_dtype),
                                          logical_axes=(None, None, "embed"))

    # -- the prefix

    def prefix_is_initialized(self) -> bool:
        return not bool(jnp.all(jnp.isnan(self.prefix_embedding[...])))

    def initialize_prefix(self, rng: jax.Array | None = None) -> None:
        """Set the prefix from `prefix_init_tensor` (the original's `_initialize_prefix`); `rng` (a PRNG key)
        chooses the encodings when `config.random_selection`, and is then required."""
        self.prefix_embedding[...] = prefix_from_init_tensor(self.prefix_init_tensor[...], self.config, rng).astype(
            self.prefix_embedding[...].dtype)

    @classmethod
    def from_pretrained(cls, path, *, prefix_init_rng: jax.Array | None = None, initialize_prefix: bool = True,
                        strict: bool = True, **kwargs):
        """jaxport's from_pretrained, then, as the original, initialise a prefix that is all NaN or absent from
        the checkpoint (then a `prefix_length` override may differ from the stored NaN prefix's length).
        `prefix_init_rng` draws the random selection; by default jax.random.key(0), so loads are reproducible.
        `initialize_prefix=False` keeps a NaN prefix NaN (format conversion: the folder written then behaves
        like the one read, under this loader and the original's)."""
        try:
            model = super().from_pretrained(path, strict=strict, **kwargs)
        except ConversionError as error:
            offending = set(error.missing) | set(error.mismatched)
            if error.unexpected or error.conflicting or offending != {"prefix_embedding"} \
                    or _stored_prefix_is_trained(path):
                raise
            with warnings.catch_warnings():  # only the prefix is missing or misshapen, and it was never trained
                warnings.simplefilter("ignore")
                model = super().from_pretrained(path, strict=False, **kwargs)
        if initialize_prefix and not model.prefix_is_initialized():
            model.initialize_prefix(jax.random.key(0) if prefix_init_rng is None else prefix_init_rng)
        return model

    @classmethod
    def convert(cls, src, dst, *, dtype=jnp.float32, pytorch: bool = False, max_shard_size=None, **config_overrides):
        """Through this loader (it takes a checkpoint whose untrained prefix is missing or of another length), keeping
        a NaN prefix NaN, so that the folder written behaves like the one read, under this loader and the original's:
        the prefix is initialised where the model is used."""
        model = cls.from_pretrained(src, dtype=dtype, param_dtype=dtype, initialize_prefix=False, **config_overrides)
        model.save_pretrained(dst, pytorch=pytorch, max_shard_size=max_shard_size)

    # -- the forward pass

    @float32_matmuls
    def embed_inputs(self, input_ids, attention_mask=None):
        """(prefix ++ embedded input [B, P + S, D], mask [B, P + S] with ones over the prefix)."""
        return _prepend(self.prefix_embedding[...], self.model.shared(input_ids), attention_mask)

    @float32_matmuls
    def encode(self, input_ids, attention_mask=None, *, dropout_rng=None) -> jax.Array:
        embeds, mask = self.embed_inputs(input_ids, attention_mask)
        return self.model.encode(attention_mask=mask, inputs_embeds=embeds, dropout_rng=dropout_rng)

    @float32_matmuls
    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None, *,
                 labels=None, dropout_rng=None) -> Seq2SeqLMOutput:
        embeds, mask = self.embed_inputs(input_ids, attention_mask)
        return self._forward(embeds, mask, decoder_input_ids, decoder_attention_mask, labels, dropout_rng)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        """transformers-style generation (greedy, beam, sampling); returns `.sequences`."""
        return seq2seq_generate(self, input_ids, attention_mask, **kwargs)


def prefix_from_init_tensor(init_tensor: jax.Array, config: SIPFinetuningConfig,
                            rng: jax.Array | None = None) -> jax.Array:
    """[1, prefix_length, d_model]: the mean over the first `num_examples` encodings of `init_tensor`
    [N, max_len, d_model] (after a random permutation of the N when `config.random_selection`), each cut
    to `prefix_length` positions (sip/embed_finetune.py:215-223). Like torch's slicing, fewer than
    `num_examples` stored encodings means averaging all of them."""
    if init_tensor.ndim != 3:
        raise ValueError(f"prefix_init_tensor must be [examples, length, d_model], got {init_tensor.shape}")
    if config.prefix_length > init_tensor.shape[1]:
        raise ValueError(f"prefix_length={config.prefix_length} is longer than the stored encodings "
                         f"({init_tensor.shape[1]} positions, prefix_max_init_length); the original cannot "
                         "initialise such a prefix either")
    if config.random_selection:
        if rng is None:
            raise ValueError("random_selection=True: initialise the prefix with an explicit PRNG key (rng=...)")
        init_tensor = init_tensor[jax.random.permutation(rng, init_tensor.shape[0])]
    chosen = init_tensor[:config.num_examples, :config.prefix_length].astype(jnp.float32)
    total = jnp.sum(chosen, axis=0, keepdims=True)
    # sum / count rounded once, as torch's mean; XLA would turn a division by a constant into a multiplication
    # by its (rounded) reciprocal, one ulp off at times. The barrier keeps the count opaque.
    count = jax.lax.optimization_barrier(jnp.full(total.shape, chosen.shape[0], jnp.float32))
    return (total / count).astype(init_tensor.dtype)


def _stored_prefix_is_trained(path) -> bool:
    """Whether the checkpoint holds a prefix_embedding with a non-NaN value (flat Flax and PyTorch layouts
    both name it `prefix_embedding`)."""
    stored = dict(select_tensors(find_weights(resolve_folder(path)).files, ["prefix_embedding"]))
    prefix = stored.get("prefix_embedding")
    return prefix is not None and not bool(np.all(np.isnan(np.asarray(prefix, np.float32))))
