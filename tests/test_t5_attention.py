"""T5's attention dispatch: `attn_implementation` resolves once per forward pass (auto: cuDNN on an NVIDIA GPU with
half-precision compute, einsum elsewhere), the fused formulation ("xla" here, the code path cuDNN takes on a GPU:
tests/gpu/test_kernels.py) equals the einsums forward and backward, the relative-position bias gets its gradient
through it, and remat recomputes the same numbers. SIP inherits all of it through T5Config."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxport import attention, tree
from sip_jax.configuration import SIPPreTrainingConfig
from t5_jax import T5Config, T5ForConditionalGeneration
from t5_jax.modeling import attend, attention_implementation
from tests import helpers
from tests.helpers import rel_err

VOCAB = 64
TINY = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, dropout_rate=0.0)


def attention_inputs(seed=0, batch=3, queries=6, keys=10, heads=4, dim=8):
    """q, k, v, a float32 bias [1, heads, T, S], and a boolean mask [B, 1, 1, S] with padding at the end, a hole in
    the middle, and a row with no key left."""
    q, k, v, bias = (jax.random.normal(key, shape, jnp.float32) for key, shape in zip(
        jax.random.split(jax.random.key(seed), 4),
        [(batch, queries, heads, dim), (batch, keys, heads, dim), (batch, keys, heads, dim), (1, heads, queries, keys)],
        strict=True))
    valid = np.ones((batch, keys), bool)
    valid[0, 7:], valid[1, 2:5], valid[2] = False, False, False
    return q, k, v, bias, jnp.asarray(valid)[:, None, None, :]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_the_einsums_forward_and_backward(with_bias, causal):
    """The path cuDNN takes (jaxport.attention.fused_attention with scale 1 and the bias and mask apart), through
    XLA: the same output and the same gradients of q, k, v and the bias."""
    q, k, v, bias, mask = attention_inputs()
    if causal:  # decoder self-attention: the causal mask [1, 1, T, T] combined with the padding one
        q, k, v, bias = q[:, :6], k[:, :6], v[:, :6], bias[..., :6]
        mask = mask[..., :6] & jnp.tril(jnp.ones((6, 6), bool))[None, None]
    bias = bias if with_bias else None
    # The row without any key gets the same output either way (an even average of all values), but gradients as
    # different as meaningless: the einsums' masked scores carry the finite NEG_INF added to them, XLA's a constant.
    # Its cotangent is 0, as a loss gives a padding row.
    cotangent = jax.random.normal(jax.random.key(9), q.shape).at[2].set(0.0)

    def run(implementation):
        def loss(q, k, v, bias):
            out = attend(q, k, v, bias, mask, 0.0, None, implementation)
            return jnp.sum(out * cotangent), out
        with jax.default_matmul_precision("highest"):
            grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3) if with_bias else (0, 1, 2), has_aux=True)
            (_, out), grads = jax.jit(grad)(q, k, v, bias)
        return out, grads

    (out, grads), (expected, expected_grads) = run("xla"), run("einsum")
    assert rel_err(out, expected) < 1e-6
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert rel_err(grad, expected_grad) < 1e-5
    if with_bias:
        assert np.abs(np.asarray(grads[3])).max() > 1e-3  # the bias is trained: its gradient is not zero


def test_auto_resolves_to_einsum_here_and_to_cudnn_on_an_nvidia_gpu_with_half_precision():
    config = T5Config.create(**TINY)
    assert config.attn_implementation == "auto"
    assert attention.default_platform() == "cpu"
    for dtype in (jnp.float32, jnp.bfloat16):
        assert attention_implementation(config, dtype, (16, 8), training=False) == "einsum"  # this CPU

    def gpu(dtype, lengths=(16, 8), training=False, **fields):
        config = T5Config.create(**{**TINY, **fields})
        return attention.resolve(config.attn_implementation, dtype, config.d_kv, lengths=lengths, platform="gpu",
                                 dropout=training and config.dropout_rate > 0)

    assert gpu(jnp.bfloat16) == gpu(jnp.float16) == "cudnn"
    assert gpu(jnp.float32) == "einsum"  # float32 models keep float32 attention
    assert gpu(jnp.bfloat16, lengths=(16, 7)) == "einsum"  # cuDNN takes no odd length with a bias in training
    assert gpu(jnp.bfloat16, d_kv=160) == "einsum"  # beyond cuDNN's head dims
    assert gpu(jnp.bfloat16, training=True) == "cudnn"
    for name in ("auto", "cudnn", "xla"):  # attention dropout needs the einsums
        assert gpu(jnp.bfloat16, training=True, dropout_rate=0.1, attn_implementation=name) == "einsum"
    assert gpu(jnp.bfloat16, dropout_rate=0.1) == "cudnn"  # evaluation: no dropout
    assert gpu(jnp.float32, attn_implementation="cudnn") == "cudnn"  # explicit names hold
    for platform in ("tpu", "rocm"):
        assert attention.resolve("auto", jnp.bfloat16, 64, dropout=False, platform=platform) == "einsum"
    with pytest.raises(ValueError, match="cudnn.*NVIDIA GPU"):
        attention_implementation(dataclasses.replace(config, attn_implementation="cudnn"), jnp.bfloat16, (8,), False)


def test_runtime_keys_are_validated_and_stay_out_of_config_json(tmp_path):
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        T5Config.create(**TINY, attn_implementation="flash")
    with pytest.raises(ValueError, match="remat='some'"):
        T5Config.create(**TINY, remat="some")
    config = T5Config.create(**TINY, attn_implementation="xla", remat=True)
    assert config.remat == "full"
    assert "attn_implementation" not in config.to_dict() and "remat" not in config.to_dict()
    # A folder from transformers carries neither: auto, no remat; from_pretrained takes them as overrides.
    helpers.random_torch_t5(0, **TINY).save_pretrained(tmp_path)
    assert (T5ForConditionalGeneration.folder_config(tmp_path).attn_implementation,
            T5ForConditionalGeneration.folder_config(tmp_path).remat) == ("auto", "none")
    model = T5ForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="xla", remat="dots")
    assert (model.config.attn_implementation, model.config.remat) == ("xla", "dots")
    # SIP's configs are T5Configs: the same keys, handed to the shared T5.
    sip = SIPPreTrainingConfig.create(**TINY, attn_implementation="xla", remat="full").t5_config()
    assert (sip.attn_implementation, sip.remat) == ("xla", "full")


def model_batch():
    ids, mask, dec = helpers.padded_batch(np.random.default_rng(0), VOCAB, (12, 9, 4), 6)
    mask[1, 3:5] = 0  # a hole
    dec_mask = np.ones_like(dec)
    dec_mask[2, 4:] = 0
    return tuple(jnp.asarray(x) for x in (ids, mask, dec, dec_mask))


def run_model(**runtime):
    """Logits and every parameter gradient of a random tiny T5 (float32, the same weights for every setting)."""
    model = T5ForConditionalGeneration(T5Config.create(**TINY, **runtime), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids, mask, dec, dec_mask = model_batch()
    cotangent = jax.random.normal(jax.random.key(3), (*dec.shape, VOCAB))

    def loss(params):
        out = nnx.merge(graphdef, params, rest)(ids, mask, dec, dec_mask, dropout_rng=jax.random.key(1))
        return jnp.sum(out.logits * cotangent), out.logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits), {path: np.asarray(g) for path, g in tree.flatten(nnx.to_pure_dict(grads)).items()}


@pytest.fixture(scope="module")
def einsum_run():
    return run_model(attn_implementation="einsum")


@pytest.mark.parametrize("runtime", [dict(attn_implementation="xla"), dict(attn_implementation="xla", remat="full"),
                                     dict(attn_implementation="einsum", remat="dots")])
def test_model_gives_the_same_logits_and_gradients(einsum_run, runtime, monkeypatch):
    """The whole model (padded encoder input with a hole, padded decoder input) with the fused path and with each
    remat mode: the same logits and parameter gradients, the relative-position tables' included; the fused path is
    the one taken (every attention of both stacks)."""
    calls = []
    fused = attention.fused_attention
    monkeypatch.setattr(attention, "fused_attention", lambda *args, **kw: calls.append(args[5]) or fused(*args, **kw))
    logits, grads = run_model(**runtime)
    expected_logits, expected_grads = einsum_run
    assert rel_err(logits, expected_logits) < 1e-6
    assert grads.keys() == expected_grads.keys()
    for path, grad in grads.items():
        assert rel_err(grad, expected_grads[path]) < 1e-5, path
    for table in ("encoder/layers/0/attention", "decoder/layers/0/self_attention"):
        assert np.abs(grads[f"{table}/relative_attention_bias/embedding"]).max() > 0
    fused_per_trace = TINY["num_layers"] + 2 * TINY["num_decoder_layers"]
    assert len(calls) == (fused_per_trace if runtime["attn_implementation"] == "xla" else 0) and set(calls) <= {"xla"}


def test_generation_decodes_through_the_einsums(monkeypatch):
    """Incremental decoding (one query a step) leaves the fused path out; the encoder takes it."""
    calls = []
    fused = attention.fused_attention
    monkeypatch.setattr(attention, "fused_attention", lambda *args, **kw: calls.append(args[5]) or fused(*args, **kw))
    ids, mask, _, _ = model_batch()
    sequences = {}
    for name in ("einsum", "xla"):
        model = T5ForConditionalGeneration(T5Config.create(**TINY, attn_implementation=name), rngs=nnx.Rngs(0))
        sequences[name] = np.asarray(model.generate(ids, mask, max_new_tokens=5).sequences)
    np.testing.assert_array_equal(sequences["xla"], sequences["einsum"])
    assert calls == ["xla"] * TINY["num_layers"]
