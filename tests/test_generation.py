"""jaxport.generation against transformers' PyTorch generate.

Logits processors are compared with transformers' own processor classes on random inputs; greedy and beam search
token for token (and beam scores) with transformers' `generate` on a table-driven toy decoder-only LM and on a
tiny random T5; sampling, which cannot match torch's random stream, through its statistics.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.generation import logits_process as hf
from transformers.modeling_outputs import CausalLMOutput

from jaxport.generation import (
    GenerationConfig,
    forced_bos_processor,
    forced_eos_processor,
    generate,
    min_length_processor,
    no_repeat_ngram_processor,
    seq2seq_config,
    seq2seq_generate,
    temperature_warper,
    top_k_warper,
    top_p_warper,
)

EOS, PAD = 1, 0


def hf_padded(sequences, prompt_len: int, max_length: int, eos_ids=(EOS,), pad=PAD) -> np.ndarray:
    """transformers' output in this module's layout: [rows, max_length], pad after the first generated EOS.
    (transformers' beam search fills with EOS instead when pad_token_id is 0, a tensor-truthiness quirk.)"""
    sequences = np.asarray(sequences)
    out = np.full((sequences.shape[0], max_length), pad, sequences.dtype)
    for row, seq in zip(out, sequences, strict=True):
        ends = np.flatnonzero(np.isin(seq[prompt_len:], eos_ids))
        length = prompt_len + ends[0] + 1 if len(ends) else len(seq)
        row[:length] = seq[:length]
    return out


def ends_early(sequences, max_length: int, pad=PAD) -> bool:
    return bool((np.asarray(sequences)[:, max_length - 1] == pad).any())


# ----------------------------------------------------------------------------------------------------------------
# Logits processors against transformers' classes.

def random_inputs(seed, rows=6, cur_len=7, length=16, vocab=10, token_range=4):
    """Scores, the first cur_len tokens (few distinct ids, so n-grams repeat) and our buffer of `length` tokens
    whose tail is junk the processors must ignore."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(rows, vocab)).astype(np.float32) * 3
    buffer = rng.integers(0, token_range, (rows, length))
    return scores, buffer[:, :cur_len], buffer


def assert_same_processing(ours, theirs, cur_len, seed=0, **kwargs):
    scores, input_ids, buffer = random_inputs(seed, cur_len=cur_len, **kwargs)
    expected = theirs(torch.tensor(input_ids), torch.tensor(scores)).numpy()
    got = ours(jnp.asarray(buffer), jnp.int32(cur_len), jnp.asarray(scores))
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("cur_len", [3, 4, 5, 6])
def test_min_length_matches_min_length_and_min_new_tokens(cur_len):
    ours = min_length_processor(5, (1, 3))
    assert_same_processing(ours, hf.MinLengthLogitsProcessor(5, [1, 3]), cur_len)
    assert_same_processing(ours, hf.MinNewTokensLengthLogitsProcessor(2, 3, [1, 3]), cur_len)


@pytest.mark.parametrize("ngram_size", [1, 2, 3])
@pytest.mark.parametrize("cur_len", [1, 2, 3, 9, 16])
def test_no_repeat_ngram(ngram_size, cur_len):
    for seed in range(3):
        assert_same_processing(no_repeat_ngram_processor(ngram_size), hf.NoRepeatNGramLogitsProcessor(ngram_size),
                               cur_len, seed)


@pytest.mark.parametrize("cur_len", [1, 2, 6, 7])
def test_forced_bos_and_eos(cur_len):
    assert_same_processing(forced_bos_processor(2), hf.ForcedBOSTokenLogitsProcessor(2), cur_len)
    assert_same_processing(forced_eos_processor(8, (1, 3)), hf.ForcedEOSTokenLogitsProcessor(8, [1, 3]), cur_len)


@pytest.mark.parametrize("min_keep", [1, 3])
def test_warpers(min_keep):
    for seed in range(5):
        assert_same_processing(temperature_warper(0.7), hf.TemperatureLogitsWarper(0.7), 4, seed)
        for k in (1, 3, 12):
            assert_same_processing(top_k_warper(k, min_keep), hf.TopKLogitsWarper(k, min_tokens_to_keep=min_keep),
                                   4, seed)
        for p in (0.0, 0.3, 0.8, 1.0):
            assert_same_processing(top_p_warper(p, min_keep), hf.TopPLogitsWarper(p, min_tokens_to_keep=min_keep),
                                   4, seed)


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
    kept = lambda p: np.isfinite(np.asarray(top_p_warper(p)(None, None, logits)))[0]
    np.testing.assert_array_equal(kept(0.65), [False, True, False, True])  # 0.4 + 0.3
    np.testing.assert_array_equal(kept(0.75), [False, True, True, True])  # + 0.2
    np.testing.assert_array_equal(kept(0.35), [False, True, False, False])
    np.testing.assert_array_equal(kept(1.0), [True, True, True, True])


# ----------------------------------------------------------------------------------------------------------------
# Configuration.

def test_resolve_lengths_like_transformers():
    assert GenerationConfig().resolve(1).max_length == 21  # 20 new tokens by default
    assert GenerationConfig(max_length=9, max_new_tokens=4).resolve(3).max_length == 7  # max_new_tokens wins
    resolved = GenerationConfig(max_length=9, min_length=2, min_new_tokens=3).resolve(4)
    assert (resolved.max_length, resolved.min_length) == (9, 7)
    assert resolved.resolve(4) == resolved
    with pytest.raises(ValueError, match="max_length"):
        GenerationConfig(max_length=3).resolve(3)


@pytest.mark.parametrize("kwargs", [dict(early_stopping="sometimes"), dict(num_return_sequences=2),
                                    dict(num_beams=2, num_return_sequences=3),
                                    dict(do_sample=True, temperature=0.0), dict(top_p=1.5)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        GenerationConfig(**kwargs)


def test_seq2seq_config_defaults_and_unknown_arguments():
    @dataclasses.dataclass
    class ModelConfig:  # generation defaults as older transformers configs carry them
        eos_token_id: list = dataclasses.field(default_factory=lambda: [1, 5])
        pad_token_id: int = 0
        bos_token_id: int = 3
        num_beams: int = 4
        no_repeat_ngram_size: int = 3

    config = seq2seq_config(ModelConfig(), num_beams=2, max_new_tokens=5)
    assert (config.num_beams, config.no_repeat_ngram_size, config.max_length) == (2, 3, 6)
    assert (config.eos_token_id, config.decoder_start_token_id) == ((1, 5), 3)
    with pytest.raises(TypeError, match="num_beam, top_n"):
        seq2seq_config(ModelConfig(), num_beam=2, top_n=3)


# ----------------------------------------------------------------------------------------------------------------
# A toy decoder-only LM: logits = A[token] + B[previous token] + C[position]. The JAX side keeps the previous
# token in its cache, so beam search must reorder the cache to stay equal to transformers.

TOY_VOCAB, TOY_MAX_POSITIONS = 12, 32


def toy_tables(seed=2):
    rng = np.random.default_rng(seed)
    a, b = (rng.normal(size=(TOY_VOCAB, TOY_VOCAB)).astype(np.float32) for _ in range(2))
    c = rng.normal(size=(TOY_MAX_POSITIONS, TOY_VOCAB)).astype(np.float32) * 0.5
    a[:, EOS] += 2.0
    a[:, PAD] -= 3.0
    return a, b, c


class ToyConfig(transformers.PretrainedConfig):
    model_type = "toy-generation"


class TorchToyLM(transformers.PreTrainedModel, transformers.GenerationMixin):
    config_class = ToyConfig

    def __init__(self, config, tables):
        super().__init__(config)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # a PreTrainedModel needs a parameter
        self.a, self.b, self.c = map(torch.tensor, tables)

    def forward(self, input_ids, **unused):
        previous = torch.cat([torch.zeros_like(input_ids[:, :1]), input_ids[:, :-1]], dim=1)
        positions = torch.arange(input_ids.shape[1])
        return CausalLMOutput(logits=self.a[input_ids] + self.b[previous] + self.c[positions][None])


def toy_step_fn(tables):
    a, b, c = map(jnp.asarray, tables)

    def step_fn(tokens, previous, position):
        previous = jnp.concatenate([previous[:, None], tokens], axis=1)[:, -2]
        logits = a[tokens[:, -1]] + b[previous] + c[position + tokens.shape[1] - 1]
        return logits, tokens[:, -1]

    return step_fn


def toy_generate(tables, prompt, config, rng=None):
    rows = prompt.shape[0] * config.expand_size
    return jax.jit(lambda p, key: generate(toy_step_fn(tables), jnp.zeros(rows, jnp.int32), p, config, key))(
        jnp.asarray(prompt), rng)


@pytest.fixture(scope="module")
def torch_toy():
    tables = toy_tables()
    model = TorchToyLM(ToyConfig(vocab_size=TOY_VOCAB), tables).eval()
    model.generation_config = transformers.GenerationConfig(eos_token_id=EOS, pad_token_id=PAD)
    return tables, model


TOY_CASES = [
    dict(),
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=5),
    dict(eos_token_id=[1, 4]),
    dict(num_beams=3),
    dict(num_beams=4, length_penalty=0.6, early_stopping=True),
    dict(num_beams=4, length_penalty=2.0, num_return_sequences=3),
    dict(num_beams=4, early_stopping="never"),
    dict(num_beams=3, early_stopping="never", length_penalty=-0.5),
    dict(num_beams=4, no_repeat_ngram_size=3, num_return_sequences=2),
    dict(num_beams=3, min_length=8),
    dict(num_beams=2, eos_token_id=[1, 4], num_return_sequences=2),
]


@pytest.mark.parametrize("kwargs", TOY_CASES, ids=str)
def test_toy_lm_matches_transformers(torch_toy, kwargs):
    tables, model = torch_toy
    prompt = np.array([[3, 4, 5], [6, 7, 8], [9, 10, 11]])
    max_length = 12
    with torch.no_grad():
        expected = model.generate(torch.tensor(prompt), max_length=max_length, use_cache=False,
                                  return_dict_in_generate=True, output_scores=True, **kwargs)
    config = GenerationConfig(max_length=max_length, **{"eos_token_id": EOS, "pad_token_id": PAD, **kwargs})
    out = toy_generate(tables, prompt, config)
    np.testing.assert_array_equal(
        np.asarray(out.sequences), hf_padded(expected.sequences, 3, max_length, config.eos_token_id))
    assert ends_early(out.sequences, max_length)
    if config.num_beams > 1:
        np.testing.assert_allclose(np.asarray(out.scores), expected.sequences_scores.numpy(), rtol=1e-5, atol=1e-6)


def test_toy_lm_forced_tokens_after_a_one_token_prompt(torch_toy):
    tables, model = torch_toy
    prompt = np.array([[3], [6]])
    for kwargs in (dict(), dict(num_beams=3)):
        kwargs.update(forced_bos_token_id=9, forced_eos_token_id=EOS, max_new_tokens=6)
        with torch.no_grad():
            expected = model.generate(torch.tensor(prompt), use_cache=False, **kwargs)
        out = toy_generate(tables, prompt, GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, **kwargs))
        np.testing.assert_array_equal(np.asarray(out.sequences), hf_padded(expected, 1, 7))
        assert (np.asarray(out.sequences)[:, 1] == 9).all()


# ----------------------------------------------------------------------------------------------------------------
# Sampling.

def test_top_k_one_sampling_is_greedy():
    tables, prompt = toy_tables(), np.array([[3, 4], [5, 6]])
    greedy = toy_generate(tables, prompt, GenerationConfig(max_length=10, eos_token_id=EOS))
    sampled = toy_generate(tables, prompt, GenerationConfig(max_length=10, eos_token_id=EOS, do_sample=True,
                                                             top_k=1), jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(sampled.sequences), np.asarray(greedy.sequences))


def test_sampling_is_deterministic_per_key():
    tables, prompt = toy_tables(), np.array([[3, 4], [5, 6]])
    config = GenerationConfig(max_length=12, do_sample=True, num_return_sequences=4, top_k=0)
    first, again, other = (toy_generate(tables, prompt, config, jax.random.key(seed)).sequences for seed in (0, 0, 1))
    assert first.shape == (8, 12)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert (np.asarray(first) != np.asarray(other)).any()
    assert len({tuple(row) for row in np.asarray(first)[:4]}) > 1  # the 4 samples of one prompt differ


def test_sampled_frequencies_follow_the_warped_distribution():
    """temperature, then top-k, then top-p, on a fixed distribution: the sample's support and frequencies."""
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5], np.float32)
    config = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=0.5, top_k=4, top_p=0.9)
    rows = 20000
    step_fn = lambda tokens, cache, position: (jnp.broadcast_to(jnp.asarray(logits), (rows, 6)), cache)
    out = jax.jit(lambda key: generate(step_fn, (), jnp.zeros((rows, 1), jnp.int32), config, key))(
        jax.random.key(0))
    counts = np.bincount(np.asarray(out.sequences[:, 1]), minlength=6)
    # logits / 0.5 -> probabilities ~ [.64, .24, .09, .03, ...]; top-4 then nucleus 0.9 keeps the first three.
    probs = np.exp(logits / 0.5)
    expected = np.where(np.arange(6) < 3, probs, 0) / probs[:3].sum()
    assert (counts[3:] == 0).all()
    np.testing.assert_allclose(counts / rows, expected, atol=4 * np.sqrt(0.25 / rows))


def test_beam_sampling_at_low_temperature_is_beam_search(torch_toy):
    tables, prompt = toy_tables(), np.array([[3, 4, 5], [6, 7, 8]])
    config = GenerationConfig(max_length=12, num_beams=3, eos_token_id=EOS, pad_token_id=PAD)
    searched = toy_generate(tables, prompt, config)
    sampled = toy_generate(tables, prompt, dataclasses.replace(config, do_sample=True, temperature=1e-4, top_k=0),
                           jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(sampled.sequences), np.asarray(searched.sequences))


# ----------------------------------------------------------------------------------------------------------------
# seq2seq_generate with a toy nnx model: compilation is cached.

@dataclasses.dataclass(frozen=True)
class ToySeq2SeqConfig:  # frozen, hence hashable, as every model config: the graphdef is a static jit argument
    vocab_size: int = 8
    eos_token_id: int = 1
    pad_token_id: int = 0
    decoder_start_token_id: int = 0


class ToySeq2Seq(nnx.Module):
    traces = 0

    def __init__(self, config, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, 4, rngs=rngs)
        self.out = nnx.Linear(4, config.vocab_size, rngs=rngs)

    def encode(self, input_ids, attention_mask):
        ToySeq2Seq.traces += 1
        return self.embed(input_ids) * attention_mask[..., None]

    def init_cache(self, encoder_hidden, max_length):
        return {"cross": encoder_hidden.sum(1), "hidden": jnp.zeros((encoder_hidden.shape[0], 4))}

    def decode(self, tokens, encoder_hidden, encoder_mask, cache, position):
        hidden = cache["hidden"] + self.embed(tokens).sum(1) + cache["cross"]
        return self.out(hidden)[:, None], {"cross": cache["cross"], "hidden": hidden}


def test_seq2seq_generate_compiles_once_per_shape_and_settings():
    model = ToySeq2Seq(ToySeq2SeqConfig(), nnx.Rngs(0))
    ids = np.array([[2, 3, 4], [5, 6, 7]])
    ToySeq2Seq.traces = 0
    first = seq2seq_generate(model, ids, num_beams=2, max_length=6)
    again = seq2seq_generate(ToySeq2Seq(ToySeq2SeqConfig(), nnx.Rngs(1)), ids, num_beams=2, max_length=6)
    assert ToySeq2Seq.traces == 1  # a second model of the same structure reuses the compilation
    assert first.sequences.shape == (2, 6) and (np.asarray(first.sequences[:, 0]) == 0).all()
    assert (np.asarray(first.sequences) != np.asarray(again.sequences)).any()
    seq2seq_generate(model, ids, num_beams=3, max_length=6)
    seq2seq_generate(model, ids[:1], num_beams=2, max_length=6)
    assert ToySeq2Seq.traces == 3
    with pytest.raises(TypeError, match="beams"):
        seq2seq_generate(model, ids, beams=2)


# ----------------------------------------------------------------------------------------------------------------
# A tiny random T5 against transformers' T5ForConditionalGeneration.generate.

T5_CASES = [
    dict(max_new_tokens=12),
    dict(),  # transformers' default: 20 new tokens
    dict(max_new_tokens=12, min_length=6, no_repeat_ngram_size=2),
    dict(max_new_tokens=12, num_beams=3),
    dict(max_new_tokens=12, num_beams=4, length_penalty=0.6, early_stopping=True),
    dict(max_new_tokens=12, num_beams=4, length_penalty=2.0, num_return_sequences=2),
    dict(max_new_tokens=12, num_beams=3, early_stopping="never", no_repeat_ngram_size=2),
    dict(max_length=10, num_beams=4, min_new_tokens=4, num_return_sequences=4),
]


@pytest.fixture(scope="module")
def t5_pair(tmp_path_factory):
    from t5_jax.modeling import T5ForConditionalGeneration
    folder = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=60, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   dropout_rate=0.0, decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    reference = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.5)
        reference.shared.weight[EOS] *= 5.0  # (tied lm_head) so that hypotheses finish at different lengths
    reference.save_pretrained(folder)
    return reference, T5ForConditionalGeneration.from_pretrained(folder)


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default `max_length`")
@pytest.mark.parametrize("kwargs", T5_CASES, ids=str)
def test_t5_matches_transformers(t5_pair, kwargs):
    reference, model = t5_pair
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 60, (3, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                      return_dict_in_generate=True, output_scores=True, **kwargs)
    out = model.generate(ids, mask, **kwargs)
    max_length = out.sequences.shape[1]
    assert max_length == seq2seq_config(model.config, **kwargs).max_length
    np.testing.assert_array_equal(np.asarray(out.sequences), hf_padded(expected.sequences, 1, max_length))
    assert ends_early(out.sequences, max_length)
    if kwargs.get("num_beams", 1) > 1:
        np.testing.assert_allclose(np.asarray(out.scores), expected.sequences_scores.numpy(), rtol=1e-4, atol=1e-5)


def _dot_operand_shapes(jaxpr, in_loop=False):
    """(in_loop, operand shapes) of every matrix product in `jaxpr` and the jaxprs nested in it (jit, while)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield in_loop, [tuple(var.aval.shape) for var in eqn.invars]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _dot_operand_shapes(sub, in_loop or eqn.primitive.name == "while")


def test_seq2seq_generate_projects_encoder_states_once(t5_pair):
    """The cross-attention keys/values are computed before the decoding loop, once per input: no matrix product
    in a loop takes [rows, encoder length, d_model] encoder states, none outside it takes them per beam."""
    _, model = t5_pair
    batch, length, beams, d_model = 2, 13, 3, model.config.d_model
    ids = np.random.default_rng(0).integers(2, 60, (batch, length))
    jaxpr = jax.make_jaxpr(lambda ids: model.generate(ids, num_beams=beams, max_new_tokens=5).sequences)(ids)
    encoder_products = [(in_loop, shapes[0]) for in_loop, shapes in _dot_operand_shapes(jaxpr.jaxpr)
                        if shapes[0][-2:] == (length, d_model)]
    assert encoder_products, "no product of the encoder states found: the test no longer sees them"
    assert [shape for in_loop, shape in encoder_products if in_loop] == []
    assert {shape[0] for _, shape in encoder_products} == {batch}
