"""Autoregressive decoding shared by every decoder in the project: greedy, sampling and beam search.

Everything follows transformers' PyTorch `generate` decision for decision, so that greedy and beam search give
the same tokens; it is written for jit: static shapes ([rows, max_length] buffers), a `lax.while_loop` that stops
as soon as transformers would, and a key/value cache the model threads through its step function.

A model takes part through a step function and an initial cache (see `generate`). Encoder-decoder models with
`encode` / `init_cache` / `decode` methods get `seq2seq_generate`, which takes transformers' argument names and
computes the cross-attention keys/values once per call (in `init_cache`), not at every step; decoder-only models with
`init_cache` / `decode` get `causal_lm_generate`.
"""
import dataclasses
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

# step_fn(tokens int32[N, T], cache, position int32[]) -> (float32[N, V] logits of the last token, new cache)
StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
# processor(sequences int32[N, max_length], cur_len int32[], scores float32[N, V]) -> scores; only the first
# cur_len tokens of each row are meaningful.
Processor = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

DEFAULT_NEW_TOKENS = 20  # transformers' default max_length, counted on top of the prompt
_LARGE_NEGATIVE = -1.0e9  # transformers' beam-search penalty; also the score of unused beams


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings under transformers' names and defaults. Frozen, hence hashable: a static jit argument.

    Lengths count the prompt (for encoder-decoder models: the decoder start token). `resolve` turns
    max_new_tokens / min_new_tokens into absolute lengths once the prompt length is known.
    """
    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None

    def __post_init__(self):
        for name in ("eos_token_id", "forced_eos_token_id"):  # one or several ids -> tuple (or None)
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, (int(value),) if np.ndim(value) == 0 else tuple(map(int, value)))
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.num_beams < 1 or self.num_return_sequences < 1:
            raise ValueError("num_beams and num_return_sequences must be at least 1")
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError("greedy search returns one sequence per input: num_return_sequences needs "
                             "do_sample=True or num_beams >= num_return_sequences")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must not exceed "
                             f"num_beams ({self.num_beams})")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be positive when sampling, got {self.temperature}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1], got {self.top_p}")

    @property
    def expand_size(self) -> int:
        """Rows per input: the step function and cache work on batch * expand_size rows, as in transformers."""
        return max(self.num_beams, self.num_return_sequences)

    @property
    def fill_token_id(self) -> int:
        """Fills positions after a sequence ended: pad, else (as transformers) the first EOS."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else 0

    def resolve(self, prompt_len: int) -> "GenerationConfig":
        """Absolute max_length / min_length for a prompt of `prompt_len` tokens (idempotent)."""
        if self.max_new_tokens is not None:
            max_length = prompt_len + self.max_new_tokens
        elif self.max_length is None:
            max_length = prompt_len + DEFAULT_NEW_TOKENS
        else:
            max_length = self.max_length
        if prompt_len >= max_length:
            raise ValueError(f"prompt length {prompt_len} leaves nothing to generate with max_length={max_length}; "
                             "raise max_length or set max_new_tokens")
        min_length = self.min_length if self.min_new_tokens is None else prompt_len + self.min_new_tokens
        return dataclasses.replace(self, max_length=max_length, max_new_tokens=None, min_length=min_length,
                                   min_new_tokens=None)


@flax.struct.dataclass
class GenerateOutput:
    """sequences: int32[batch * num_sequences, max_length], prompt included, fill_token_id after the end.
    scores: beam search only, the length-penalised score of each returned sequence."""
    sequences: jax.Array
    scores: jax.Array | None = None


# ----------------------------------------------------------------------------------------------------------------
# Logits processors and warpers, each matching the transformers class of the same role.

def _eos_mask(vocab_size: int, eos_ids: tuple[int, ...]) -> jax.Array:
    return jnp.isin(jnp.arange(vocab_size), jnp.asarray(eos_ids))


def min_length_processor(min_length: int, eos_ids: tuple[int, ...]) -> Processor:
    """EOS is impossible while a row is shorter than min_length (MinLength / MinNewTokensLength)."""
    def process(sequences, cur_len, scores):
        suppress = _eos_mask(scores.shape[-1], eos_ids) & (cur_len < min_length)
        return jnp.where(suppress, -jnp.inf, scores)
    return process


def no_repeat_ngram_processor(ngram_size: int) -> Processor:
    """Bans every token that would complete an n-gram already present in the row (NoRepeatNGram)."""
    def process(sequences, cur_len, scores):
        rows, length = sequences.shape
        vocab_size = scores.shape[-1]
        num_windows = length - ngram_size + 1
        windows = jnp.stack([sequences[:, i:i + num_windows] for i in range(ngram_size)], axis=-1)
        # The n-1 latest tokens; a complete earlier window starting with them bans its last token.
        suffix = lax.dynamic_slice_in_dim(sequences, cur_len - (ngram_size - 1), ngram_size - 1, axis=1)
        complete = jnp.arange(num_windows) + ngram_size <= cur_len
        matches = complete & jnp.all(windows[..., :-1] == suffix[:, None, :], axis=-1)
        # Non-matching windows scatter into a spare column so they cannot unban anything.
        targets = jnp.where(matches, windows[..., -1], vocab_size)
        banned = jnp.zeros((rows, vocab_size + 1), bool).at[jnp.arange(rows)[:, None], targets].set(True)
        return jnp.where(banned[:, :vocab_size], -jnp.inf, scores)
    return process


def _force_tokens(scores: jax.Array, token_ids: tuple[int, ...], condition: jax.Array) -> jax.Array:
    forced = jnp.where(jnp.isin(jnp.arange(scores.shape[-1]), jnp.asarray(token_ids)), 0.0, -jnp.inf)
    return jnp.where(condition, forced.astype(scores.dtype), scores)


def forced_bos_processor(token_id: int) -> Processor:
    """Only `token_id` (score 0) as the token after the first one (ForcedBOSToken)."""
    return lambda sequences, cur_len, scores: _force_tokens(scores, (token_id,), cur_len == 1)


def forced_eos_processor(max_length: int, eos_ids: tuple[int, ...]) -> Processor:
    """Only EOS (score 0) as the last token max_length allows (ForcedEOSToken)."""
    return lambda sequences, cur_len, scores: _force_tokens(scores, eos_ids, cur_len == max_length - 1)


def _divide(x: jax.Array, divisor) -> jax.Array:
    """x / divisor rounded once, as torch computes it. XLA rewrites a division by a broadcast scalar into a
    multiplication by its reciprocal, which can be one ulp off; the barrier hides the broadcast."""
    return x / lax.optimization_barrier(jnp.full(x.shape, divisor, x.dtype))


def temperature_warper(temperature: float) -> Processor:
    return lambda sequences, cur_len, scores: _divide(scores, temperature)


def top_k_warper(top_k: int, min_tokens_to_keep: int = 1) -> Processor:
    """Keeps the tokens scoring at least the k-th best score (ties included), as TopKLogitsWarper."""
    def process(sequences, cur_len, scores):
        k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
        kth_best = lax.top_k(scores, k)[0][..., -1:]
        return jnp.where(scores < kth_best, -jnp.inf, scores)
    return process


def top_p_warper(top_p: float, min_tokens_to_keep: int = 1) -> Processor:
    """Keeps the most probable tokens whose mass reaches top_p (nucleus), as TopPLogitsWarper: ascending sort,
    drop the prefix whose cumulative probability stays within 1 - top_p, always keep min_tokens_to_keep."""
    def process(sequences, cur_len, scores):
        order = jnp.argsort(scores, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, axis=-1), axis=-1), axis=-1)
        drop_sorted = (cumulative <= 1 - top_p).at[:, scores.shape[-1] - min_tokens_to_keep:].set(False)
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(scores.shape[0])[:, None], order].set(drop_sorted)
        return jnp.where(drop, -jnp.inf, scores)
    return process


def logits_processors(config: GenerationConfig) -> list[Processor]:
    """The processors transformers builds for `config` (resolved), in its order."""
    eos = config.eos_token_id
    processors = []
    if config.no_repeat_ngram_size > 0:
        processors.append(no_repeat_ngram_processor(config.no_repeat_ngram_size))
    if config.min_length > 0 and eos:
        processors.append(min_length_processor(config.min_length, eos))
    if config.forced_bos_token_id is not None:
        processors.append(forced_bos_processor(config.forced_bos_token_id))
    if config.forced_eos_token_id is not None:
        processors.append(forced_eos_processor(config.max_length, config.forced_eos_token_id))
    return processors


def logits_warpers(config: GenerationConfig) -> list[Processor]:
    """Sampling-only warpers, in transformers' order. Beam sampling keeps one token more than there are EOS ids
    (2 without EOS), so that every beam can continue."""
    if not config.do_sample:
        return []
    num_eos = len(config.eos_token_id) if config.eos_token_id else 1
    min_keep = 1 if config.num_beams == 1 else num_eos + 1
    warpers = []
    if config.temperature != 1.0:
        warpers.append(temperature_warper(config.temperature))
    if config.top_k:
        warpers.append(top_k_warper(config.top_k, min_keep))
    if config.top_p < 1.0:
        warpers.append(top_p_warper(config.top_p, min_keep))
    return warpers


def _process(processors: list[Processor], sequences, cur_len, scores):
    for process in processors:
        scores = process(sequences, cur_len, scores)
    return scores


# ----------------------------------------------------------------------------------------------------------------
# Decoding loops.

def _is_eos(tokens: jax.Array, config: GenerationConfig) -> jax.Array:
    if not config.eos_token_id:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(config.eos_token_id))


def _run(step_fn: StepFn, cache, prompt_ids, state, advance, last_tokens):
    """Feeds the prompt, then one token per step, until `advance` marks the state done. The token chosen last
    is never fed, so the cache needs max_length - 1 positions."""
    logits, cache = step_fn(prompt_ids, cache, jnp.int32(0))
    state = advance(state, logits.astype(jnp.float32), cache)

    def body(state):
        logits, cache = step_fn(last_tokens(state), state.cache, state.cur_len - 1)
        return advance(state, logits.astype(jnp.float32), cache)

    return lax.while_loop(lambda state: ~state.done, body, state)


class _SearchState(NamedTuple):
    cur_len: jax.Array  # tokens written so far in every row
    sequences: jax.Array  # [N, max_length]
    unfinished: jax.Array  # [N]
    cache: Any  # None until the prompt step returns the model's cache
    done: jax.Array


def _greedy_or_sample(step_fn, cache, prompt_ids, config: GenerationConfig, rng) -> GenerateOutput:
    rows, prompt_len = prompt_ids.shape
    processors = logits_processors(config) + logits_warpers(config)

    def advance(state: _SearchState, logits, cache) -> _SearchState:
        scores = _process(processors, state.sequences, state.cur_len, logits)
        if config.do_sample:
            tokens = jax.random.categorical(jax.random.fold_in(rng, state.cur_len), scores, axis=-1)
        else:
            tokens = jnp.argmax(scores, axis=-1)
        tokens = jnp.where(state.unfinished, tokens, config.fill_token_id).astype(jnp.int32)
        sequences = lax.dynamic_update_slice_in_dim(state.sequences, tokens[:, None], state.cur_len, axis=1)
        unfinished = state.unfinished & ~_is_eos(tokens, config)
        cur_len = state.cur_len + 1
        return _SearchState(cur_len, sequences, unfinished, cache, ~unfinished.any() | (cur_len >= config.max_length))

    sequences = jnp.full((rows, config.max_length), config.fill_token_id, jnp.int32)
    state = _SearchState(cur_len=jnp.int32(prompt_len), sequences=sequences.at[:, :prompt_len].set(prompt_ids),
                         unfinished=jnp.ones(rows, bool), cache=None, done=jnp.bool_(False))
    def last_token(state):
        return lax.dynamic_slice_in_dim(state.sequences, state.cur_len - 1, 1, axis=1)

    state = _run(step_fn, cache, prompt_ids, state, advance, last_token)
    return GenerateOutput(sequences=state.sequences)


class _BeamState(NamedTuple):
    cur_len: jax.Array
    running_sequences: jax.Array  # [B, K, max_length] live beams, best first
    running_scores: jax.Array  # [B, K] their summed log-probs
    sequences: jax.Array  # [B, K, max_length] finished hypotheses, best first
    scores: jax.Array  # [B, K] their length-penalised scores (-1e9 while a slot is empty)
    is_finished: jax.Array  # [B, K] whether a slot holds a finished hypothesis
    improvable: jax.Array  # [B] transformers' is_early_stop_heuristic_unsatisfied
    cache: Any
    done: jax.Array


def _gather_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
    """x[b, indices[b, j]] for x of shape [B, K, ...] and indices [B, J]."""
    return x[jnp.arange(x.shape[0])[:, None], indices]


def _length_penalties(max_length: int, length_penalty: float) -> jax.Array:
    """float32 table of length ** length_penalty: transformers divides float32 scores by that Python float
    rounded to float32, which a float32 power computed in JAX would not always reproduce exactly."""
    lengths = np.maximum(np.arange(max_length + 1, dtype=np.float64), 1.0)  # length 0 never occurs
    return jnp.asarray((lengths ** length_penalty).astype(np.float32))


def _beam_search(step_fn, cache, prompt_ids, config: GenerationConfig, rng) -> GenerateOutput:
    batch, prompt_len = prompt_ids.shape[0] // config.num_beams, prompt_ids.shape[1]
    beams, max_length = config.num_beams, config.max_length
    # Enough candidates that num_beams of them are not EOS even if every beam's best tokens are.
    num_candidates = max(2, 1 + len(config.eos_token_id or ())) * beams
    processors = logits_processors(config) + logits_warpers(config)
    penalties = _length_penalties(max_length, config.length_penalty)
    early_stopping_true = config.early_stopping is True

    def top_candidates(totals, cur_len):
        if not config.do_sample:
            return lax.top_k(totals, num_candidates)
        # Gumbel top-k: a sample without replacement from softmax(totals), in draw order like torch.multinomial.
        gumbel = jax.random.gumbel(jax.random.fold_in(rng, cur_len), totals.shape)
        indices = lax.top_k(totals + gumbel, num_candidates)[1]
        return jnp.take_along_axis(totals, indices, axis=1), indices

    def may_improve(running_scores, scores, is_finished, cur_len):
        """Whether the best live beam could still beat the worst finished hypothesis (transformers' heuristic:
        at the current length, or at max_length for early_stopping='never' with a positive length penalty)."""
        if config.early_stopping == "never" and config.length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_possible = _divide(running_scores[:, :1], penalties[best_length])
        worst_finished = jnp.where(is_finished, scores.min(axis=1, keepdims=True), _LARGE_NEGATIVE)
        return jnp.any(best_possible > worst_finished, axis=-1)

    def advance(state: _BeamState, logits, cache) -> _BeamState:
        cur_len, vocab_size = state.cur_len, logits.shape[-1]
        flat_running = state.running_sequences.reshape(batch * beams, max_length)
        log_probs = _process(processors, flat_running, cur_len, jax.nn.log_softmax(logits, axis=-1))
        totals = log_probs.reshape(batch, beams, vocab_size) + state.running_scores[..., None]
        cand_scores, cand_indices = top_candidates(totals.reshape(batch, beams * vocab_size), cur_len)
        cand_beams, cand_tokens = cand_indices // vocab_size, cand_indices % vocab_size
        cand_sequences = _gather_beams(state.running_sequences, cand_beams).at[:, :, cur_len].set(cand_tokens)
        cand_stops = _is_eos(cand_tokens, config) | (cur_len + 1 >= max_length)

        # Live beams: the best candidates that did not stop.
        live_scores = cand_scores + cand_stops.astype(jnp.float32) * _LARGE_NEGATIVE
        keep = lax.top_k(live_scores, beams)[1]
        running_sequences = _gather_beams(cand_sequences, keep)
        running_scores = _gather_beams(live_scores, keep)
        source_rows = _gather_beams(cand_beams, keep) + jnp.arange(batch)[:, None] * beams
        cache = jax.tree.map(lambda x: x[source_rows.reshape(-1)], cache)

        # Finished hypotheses: stopped candidates among the top num_beams ranks compete for the num_beams slots.
        just_finished = cand_stops & (jnp.arange(num_candidates) < beams)
        finished_scores = _divide(cand_scores, penalties[cur_len + 1 - prompt_len])
        if early_stopping_true:  # a batch item with num_beams hypotheses takes no more
            finished_scores += state.is_finished.all(-1, keepdims=True).astype(jnp.float32) * _LARGE_NEGATIVE
        finished_scores += (~state.improvable[:, None]).astype(jnp.float32) * _LARGE_NEGATIVE
        finished_scores += (~just_finished).astype(jnp.float32) * _LARGE_NEGATIVE
        merged_scores = jnp.concatenate([state.scores, finished_scores], axis=1)
        best = lax.top_k(merged_scores, beams)[1]
        sequences = _gather_beams(jnp.concatenate([state.sequences, cand_sequences], axis=1), best)
        scores = _gather_beams(merged_scores, best)
        is_finished = _gather_beams(jnp.concatenate([state.is_finished, just_finished], axis=1), best)

        cur_len = cur_len + 1
        improvable = state.improvable & may_improve(running_scores, scores, is_finished, cur_len)
        open_beams = ~(is_finished.all() & early_stopping_true)
        done = ~(improvable.any() & open_beams & ~cand_stops.all())
        return _BeamState(cur_len, running_sequences, running_scores, sequences, scores, is_finished, improvable,
                          cache, done)

    start = jnp.full((batch, beams, max_length), config.fill_token_id, jnp.int32)
    start = start.at[:, :, :prompt_len].set(prompt_ids.reshape(batch, beams, prompt_len))
    # Only the first beam is live at first, so the beams do not all pick the same tokens.
    running_scores = jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(_LARGE_NEGATIVE)
    state = _BeamState(cur_len=jnp.int32(prompt_len), running_sequences=start, running_scores=running_scores,
                       sequences=start, scores=jnp.full((batch, beams), _LARGE_NEGATIVE, jnp.float32),
                       is_finished=jnp.zeros((batch, beams), bool), improvable=jnp.ones(batch, bool), cache=None,
                       done=jnp.bool_(False))
    def last_token(state):
        flat_running = state.running_sequences.reshape(batch * beams, max_length)
        return lax.dynamic_slice_in_dim(flat_running, state.cur_len - 1, 1, axis=1)

    state = _run(step_fn, cache, prompt_ids, state, advance, last_token)
    returned = config.num_return_sequences
    return GenerateOutput(sequences=state.sequences[:, :returned].reshape(batch * returned, max_length),
                          scores=state.scores[:, :returned].reshape(-1))


def generate(step_fn: StepFn, cache, prompt_ids: jax.Array, config: GenerationConfig,
             rng: jax.Array | None = None) -> GenerateOutput:
    """Greedy search, sampling (do_sample) or beam search (num_beams > 1; with do_sample, beam sampling).

    prompt_ids: int32[batch, P], the first P tokens of every sequence (encoder-decoder: the decoder start token).
    step_fn and cache work on N = batch * config.expand_size rows, row b * expand_size + e being copy e of
    input b: step_fn(tokens [N, T], cache, position) -> (logits [N, V] for the last of the T tokens, new cache),
    first called with the expanded prompt at position 0, then with one token at a time. Every cache leaf has
    leading dimension N (beam search reorders rows). rng: a PRNG key, needed for sampling.
    Pure and jit-able (the config is static); returns [batch * num_return_sequences, max_length] sequences.
    """
    config = config.resolve(prompt_ids.shape[1])
    if config.do_sample and rng is None:
        raise ValueError("do_sample=True needs an rng key")
    prompt_ids = jnp.repeat(prompt_ids.astype(jnp.int32), config.expand_size, axis=0)
    search = _beam_search if config.num_beams > 1 else _greedy_or_sample
    return search(step_fn, cache, prompt_ids, config, rng)


# ----------------------------------------------------------------------------------------------------------------
# Encoder-decoder convenience.

_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(GenerationConfig))


def _generation_config(model_config, kwargs: dict, defaults: dict | None = None) -> GenerationConfig:
    """GenerationConfig from transformers-style kwargs over `defaults` and the generation defaults found on
    `model_config`."""
    unknown = sorted(set(kwargs) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"unknown generation arguments: {', '.join(unknown)}")
    found = {name: getattr(model_config, name) for name in _CONFIG_FIELDS
             if getattr(model_config, name, None) is not None}
    return GenerationConfig(**{**(defaults or {}), **found, **kwargs})


def seq2seq_config(model_config, **kwargs) -> GenerationConfig:
    """GenerationConfig from transformers-style kwargs over the generation defaults found on `model_config`,
    resolved for the one-token decoder prompt."""
    defaults = {}
    if getattr(model_config, "bos_token_id", None) is not None:
        defaults["decoder_start_token_id"] = model_config.bos_token_id  # transformers' fallback
    config = _generation_config(model_config, kwargs, defaults)
    if config.decoder_start_token_id is None:
        raise ValueError("encoder-decoder generation needs decoder_start_token_id (or bos_token_id)")
    return config.resolve(prompt_len=1)


def seq2seq_cache(encoder_hidden, max_length: int, num_heads: int, head_dim: int, dtype, cross_attentions) -> dict:
    """An encoder-decoder model's `init_cache`: per decoder layer an empty self-attention key/value buffer
    [B, max_length, num_heads, head_dim] ("layers", filled by decoding) and the cross-attention keys/values of
    encoder_hidden ("cross", from each of `cross_attentions`' `key_value`), computed here once, not at every step."""
    shape = (encoder_hidden.shape[0], max_length, num_heads, head_dim)
    return {"layers": [{"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)} for _ in cross_attentions],
            "cross": [attention.key_value(encoder_hidden) for attention in cross_attentions]}


@jax.jit(static_argnums=(0, 6))
def _seq2seq_generate(graphdef, state, input_ids, attention_mask, encode_kwargs, rng,
                      config: GenerationConfig):
    model = nnx.merge(graphdef, state)
    encoder_hidden = model.encode(input_ids, attention_mask, **encode_kwargs)
    # Each input becomes expand_size rows (beams or samples), copies of it: row b * expand_size + e. The cache is
    # built per input, so its cross-attention keys/values are projected once per input, then copied like the rest.
    def expand(x):
        return jnp.repeat(x, config.expand_size, axis=0)

    cache = jax.tree.map(expand, model.init_cache(encoder_hidden, config.max_length))
    # The cross-attention keys/values do not change while decoding: step_fn closes over them, so the loop does not
    # carry them and beam search does not reorder them. They need no reordering: beams move only among the rows
    # of their own input, which are copies of the same encoder states.
    cross = cache.pop("cross")
    encoder_hidden, encoder_mask = expand(encoder_hidden), expand(attention_mask)

    def step_fn(tokens, cache, position):
        # Merged afresh here: the loop body is a trace of its own, and a module from the outer trace could not
        # update its state (e.g. an rng stream) in it.
        model = nnx.merge(graphdef, state)
        logits, cache = model.decode(tokens, encoder_hidden, encoder_mask, {**cache, "cross": cross}, position)
        cache.pop("cross")
        return logits[:, -1], cache

    prompt_ids = jnp.full((input_ids.shape[0], 1), config.decoder_start_token_id, jnp.int32)
    return generate(step_fn, cache, prompt_ids, config, rng)


def seq2seq_generate(model: nnx.Module, input_ids, attention_mask=None, *, rng=None, encode_kwargs=None,
                     **kwargs) -> GenerateOutput:
    """transformers-style `generate` for an encoder-decoder nnx.Module with `config`, `encode(input_ids,
    attention_mask) -> encoder_hidden`, `init_cache(encoder_hidden, max_length) -> cache` and `decode(tokens,
    encoder_hidden, encoder_mask, cache, position) -> (logits, cache)`. The cache is a dict whose entry "cross"
    holds what stays fixed while decoding (the cross-attention keys/values of encoder_hidden, computed once by
    init_cache); decode returns it as it came. encode_kwargs: extra keyword arrays for `encode` (e.g. LSG-BART's
    lsh_key), traced, not static. kwargs: GenerationConfig fields (transformers' names). Compiled once per model
    structure, input shapes and settings: the model's graphdef is a static argument, so its config must hash
    (frozen, as every model config here). sequences[:, 0] is the decoder start token."""
    config = seq2seq_config(model.config, **kwargs)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    graphdef, state = nnx.split(model)
    return _seq2seq_generate(graphdef, state, input_ids, attention_mask, encode_kwargs or {}, rng, config)


# ----------------------------------------------------------------------------------------------------------------
# Decoder-only convenience.


@jax.jit(static_argnums=(0, 4))
def _causal_lm_generate(graphdef, state, input_ids, rng, config: GenerationConfig):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(input_ids.shape[0] * config.expand_size, config.max_length)

    def step_fn(tokens, cache, position):
        model = nnx.merge(graphdef, state)  # merged afresh in the loop's own trace, as in _seq2seq_generate
        logits, cache = model.decode(tokens, cache, position, logits_to_keep=1)
        return logits[:, -1], cache

    return generate(step_fn, cache, input_ids, config, rng)


def causal_lm_generate(model: nnx.Module, input_ids, *, rng=None, max_positions: int | None = None,
                       **kwargs) -> GenerateOutput:
    """transformers-style `generate` for a decoder-only nnx.Module with `config`, `init_cache(batch_size,
    max_length) -> cache` and `decode(tokens, cache, position, logits_to_keep=1) -> (logits [B, 1, V] of the last
    token, cache)`, which writes the tokens' keys/values (and whatever else the model caches per token) at
    `position`. input_ids [B, P]: the prompt,
    the same length in every row (no padding). kwargs: GenerationConfig fields (transformers' names). max_positions:
    the positions the model has (learned position embeddings): a max_length that would feed more tokens is refused.
    Returns sequences [B * num_return_sequences, max_length], the prompt first. Compiled once per model structure,
    input shape and settings (the model's graphdef is static: its config must hash)."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    config = _generation_config(model.config, kwargs).resolve(input_ids.shape[1])
    # The last token is never fed: max_length - 1 positions.
    if max_positions is not None and config.max_length - 1 > max_positions:
        raise ValueError(f"generating up to max_length={config.max_length} tokens (prompt included) needs "
                         f"{config.max_length - 1} positions; the model has n_positions={max_positions}")
    graphdef, state = nnx.split(model)
    return _causal_lm_generate(graphdef, state, input_ids, rng, config)
