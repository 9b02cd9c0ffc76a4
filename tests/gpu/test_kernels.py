"""The GPU paths, compiled (not interpreted), at LSG-BART-base's width and at ByT5-small's head shape: `auto` picks
the fused kernels on the GPU, every fused path (LSG's; T5's cuDNN attention with its relative-position bias; GPT-2's
causal cuDNN attention and its Pallas kernels with attention dropout, Backpack's contextualization network) agrees
with the einsum formulation forward and backward within tolerances that a wrong softmax scale or a dropped bias
would break, the Hopper GEMM computes the exact GELU, not tanh's approximation, and the LayerNorm and
cross-entropy kernels match XLA's formulations."""
import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from backpack_jax import BackpackGPT2Config, BackpackGPT2LMHeadModel
from backpack_jax.modeling import attention_implementation as gpt2_attention_implementation
from jaxport import cross_entropy_kernels, layer_norm_kernels, layers, tasks, tree
from jaxport.dropout_mask import dropout_hashes, dropout_words
from lsg_jax import LSGBartConfig, LSGBartForConditionalGeneration, dispatch, hopper_gemm
from t5_jax import T5Config, T5ForConditionalGeneration
from t5_jax.modeling import attention_implementation
from tests.helpers import rel_err

SHAPE = dict(vocab_size=1024, d_model=768, encoder_layers=1, decoder_layers=1, encoder_attention_heads=12,
             decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=4096,
             block_size=128, sparse_block_size=128, num_global_tokens=16, dropout=0.0, attention_dropout=0.0,
             activation_dropout=0.0)
LENGTH, VALID = 4096 - 16, [4096 - 16, 2999]  # the global tokens are prepended; the second row padded
# The fused paths compute attention in bf16: their error against float32 einsum may exceed einsum-in-bf16's by this
# factor. A wrong softmax scale or a dropped query/value bias multiplies it by ten or more (each measured once).
FUSED_SLACK = 1.5


def test_auto_picks_the_fused_kernels_on_the_gpu():
    config = LSGBartConfig(**SHAPE, sparsity_type="none")
    assert config.attn_implementation == "auto"
    for training in (False, True):
        assert dispatch.resolve(config, jnp.bfloat16, training=training) == ("pallas", "pallas")
    assert dispatch.resolve(dataclasses.replace(config, sparsity_type="norm"), jnp.bfloat16, training=False) == (
        "cudnn", "pallas")
    assert dispatch.resolve(config, jnp.float32, training=False) == ("einsum", "einsum")


def random_model(config, dtype, model_class=LSGBartForConditionalGeneration):
    """Every parameter random, biases too (zeros would hide a dropped bias; T5's relative-position tables among
    them); LayerNorm scales near 1."""
    model = model_class(config, dtype=dtype, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)

    def draw(path, value):
        name = jax.tree_util.keystr(path)
        noise = jax.random.normal(jax.random.key(zlib.crc32(name.encode())), value.shape, jnp.float32)
        scale = 0.5 if "bias" in name else 0.05
        layer_norm = ("norm" in name or "ln" in name) and "scale" in name
        return (1.0 + 0.1 * noise if layer_norm else scale * noise).astype(value.dtype)

    nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(params)))
    nnx.update(model, params)
    return model


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, SHAPE["vocab_size"], (2, LENGTH)).astype(np.int32)
    mask = (np.arange(LENGTH)[None] < np.asarray(VALID)[:, None]).astype(np.int32)
    dec = rng.integers(3, SHAPE["vocab_size"], (2, 64)).astype(np.int32)
    return jnp.asarray(ids * mask + (1 - mask)), jnp.asarray(mask), jnp.asarray(dec)


def logits_and_grads(config, implementation, dtype):
    model = random_model(dataclasses.replace(config, attn_implementation=implementation), dtype)
    ids, mask, dec = batch()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cotangent = jax.random.normal(jax.random.key(7), (2, 64, SHAPE["vocab_size"]))

    @jax.jit
    def run(params):
        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(ids, mask, dec, dropout_rng=jax.random.key(0)).logits
            return jnp.sum(logits * cotangent), logits
        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, jnp.concatenate([g.ravel().astype(jnp.float32) for g in jax.tree.leaves(grads)])

    return jax.tree.map(np.asarray, run(params))


CASES = [("none", "pallas"), ("none", "cudnn"), ("norm", "cudnn")]


@pytest.fixture(scope="module")
def references():
    """Per sparsity type: einsum in float32 (the reference) and einsum in bf16 (the error bf16 itself brings)."""
    out = {}
    for sparsity in {s for s, _ in CASES}:
        config = LSGBartConfig(**SHAPE, sparsity_type=sparsity)
        out[sparsity] = (logits_and_grads(config, "einsum", jnp.float32),
                         logits_and_grads(config, "einsum", jnp.bfloat16))
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("sparsity, implementation", CASES)
def test_fused_paths_match_einsum_forward_and_backward(references, sparsity, implementation, dtype):
    """On a float32 model the fused paths still compute attention in bf16 (documented): the same bound holds."""
    (ref_logits, ref_grads), (bf16_logits, bf16_grads) = references[sparsity]
    logits, grads = logits_and_grads(LSGBartConfig(**SHAPE, sparsity_type=sparsity), implementation, jnp.dtype(dtype))
    for name, ours, ref, bf16 in (("logits", logits, ref_logits, bf16_logits), ("grads", grads, ref_grads, bf16_grads)):
        ours_err, bf16_err = rel_err(ours, ref), rel_err(bf16, ref)
        print(f"\nFUSED {implementation} {sparsity} {dtype} {name}: rel. err {ours_err:.2e} "
              f"(einsum bf16 {bf16_err:.2e})")
        assert np.isfinite(ours).all()
        assert ours_err <= FUSED_SLACK * bf16_err + 1e-4


# ByT5-small's heads (6 of 64) and lengths; one layer per stack. The second row is padded; lengths are even (cuDNN
# takes no odd length with a bias in training).
T5_SHAPE = dict(vocab_size=384, d_model=384, d_kv=64, num_heads=6, d_ff=1024, num_layers=1, num_decoder_layers=1,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
T5_LENGTH, T5_VALID, T5_TARGETS = 512, [512, 301], 128
T5_TABLES = ("encoder/layers/0/attention/relative_attention_bias/embedding",
             "decoder/layers/0/self_attention/relative_attention_bias/embedding")


def test_t5_auto_picks_cudnn_on_the_gpu():
    config = T5Config.create(**T5_SHAPE)
    assert config.attn_implementation == "auto"
    for training in (False, True):
        assert attention_implementation(config, jnp.bfloat16, (T5_LENGTH, T5_TARGETS), training) == "cudnn"
    assert attention_implementation(config, jnp.float32, (T5_LENGTH,), False) == "einsum"


def t5_logits_and_grads(implementation, dtype):
    """Logits, every parameter gradient (flat) and the relative-position tables' gradients, float32 numpy."""
    config = T5Config.create(**T5_SHAPE, attn_implementation=implementation)
    model = random_model(config, dtype, T5ForConditionalGeneration)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, T5_SHAPE["vocab_size"], (2, T5_LENGTH)).astype(np.int32)
    mask = (np.arange(T5_LENGTH)[None] < np.asarray(T5_VALID)[:, None]).astype(np.int32)
    dec = rng.integers(2, T5_SHAPE["vocab_size"], (2, T5_TARGETS)).astype(np.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cotangent = jax.random.normal(jax.random.key(7), (2, T5_TARGETS, T5_SHAPE["vocab_size"]))

    @jax.jit
    def run(params):
        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(ids, mask, dec, dropout_rng=jax.random.key(0)).logits
            return jnp.sum(logits * cotangent), logits
        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        flat = tree.flatten(nnx.to_pure_dict(grads))
        return (logits, jnp.concatenate([g.ravel().astype(jnp.float32) for g in flat.values()]),
                [flat[path].astype(jnp.float32) for path in T5_TABLES])

    return jax.tree.map(np.asarray, run(params))


@pytest.fixture(scope="module")
def t5_references():
    """einsum in float32 (the reference) and einsum in bf16 (the error bf16 itself brings)."""
    return t5_logits_and_grads("einsum", jnp.float32), t5_logits_and_grads("einsum", jnp.bfloat16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_t5_cudnn_attention_matches_einsum_forward_and_backward(t5_references, dtype):
    """cuDNN flash attention with the relative-position bias and the padding mask apart: logits, all gradients and
    the relative-position tables' gradients (the bias is trained through cuDNN's bias gradient) within FUSED_SLACK of
    einsum-in-bf16's error against float32 einsum."""
    (ref_logits, ref_grads, ref_tables), (bf16_logits, bf16_grads, bf16_tables) = t5_references
    logits, grads, tables = t5_logits_and_grads("cudnn", jnp.dtype(dtype))
    pairs = [("logits", logits, ref_logits, bf16_logits), ("grads", grads, ref_grads, bf16_grads)]
    pairs += [(path, *arrays) for path, *arrays in zip(T5_TABLES, tables, ref_tables, bf16_tables, strict=True)]
    for name, ours, ref, bf16 in pairs:
        ours_err, bf16_err = rel_err(ours, ref), rel_err(bf16, ref)
        print(f"\nT5 cudnn {dtype} {name}: rel. err {ours_err:.2e} (einsum bf16 {bf16_err:.2e})")
        assert np.isfinite(ours).all() and np.abs(ref).max() > 0
        assert ours_err <= FUSED_SLACK * bf16_err + 1e-4


BACKPACK_SHAPE = dict(vocab_size=1024, n_positions=512, n_embd=768, n_layer=2, n_head=12, num_senses=16,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def backpack_logits_and_grads(implementation, dtype, attn_pdrop=0.0):
    """Backpack-GPT2 (its GPT-2 stack is where the implementation acts): logits and every parameter gradient of a
    training pass (one dropout key)."""
    config = BackpackGPT2Config.create(**{**BACKPACK_SHAPE, "attn_pdrop": attn_pdrop},
                                       attn_implementation=implementation)
    graphdef, params, rest = nnx.split(random_model(config, dtype, BackpackGPT2LMHeadModel), nnx.Param, ...)
    ids = np.random.default_rng(0).integers(0, BACKPACK_SHAPE["vocab_size"], (2, 512)).astype(np.int32)
    cotangent = jax.random.normal(jax.random.key(7), (2, 512, BACKPACK_SHAPE["vocab_size"]))

    @jax.jit
    def run(params):
        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(ids, dropout_rng=jax.random.key(0)).logits
            return jnp.sum(logits * cotangent), logits
        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, jnp.concatenate([g.ravel().astype(jnp.float32) for g in jax.tree.leaves(grads)])

    return jax.tree.map(np.asarray, run(params))


def test_gpt2_auto_picks_pallas_in_training_and_cudnn_outside_on_the_gpu():
    config = BackpackGPT2Config.create(**BACKPACK_SHAPE)
    assert gpt2_attention_implementation(config, jnp.bfloat16, 512, training=True) == "pallas"
    assert gpt2_attention_implementation(config, jnp.bfloat16, 512, training=False) == "cudnn"
    assert gpt2_attention_implementation(config, jnp.float32, 512, training=True) == "einsum"


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gpt2_cudnn_attention_matches_einsum_forward_and_backward(dtype):
    """GPT-2's causal attention through cuDNN (inverse-layer scaling on, as Backpack's): logits and every gradient
    within FUSED_SLACK of einsum-in-bf16's error against float32 einsum."""
    ref_logits, ref_grads = backpack_logits_and_grads("einsum", jnp.float32)
    bf16_logits, bf16_grads = backpack_logits_and_grads("einsum", jnp.bfloat16)
    logits, grads = backpack_logits_and_grads("cudnn", jnp.dtype(dtype))
    for name, ours, ref, bf16 in (("logits", logits, ref_logits, bf16_logits), ("grads", grads, ref_grads, bf16_grads)):
        ours_err, bf16_err = rel_err(ours, ref), rel_err(bf16, ref)
        print(f"\nGPT-2 cudnn {dtype} {name}: rel. err {ours_err:.2e} (einsum bf16 {bf16_err:.2e})")
        assert np.isfinite(ours).all() and np.abs(ref).max() > 0
        assert ours_err <= FUSED_SLACK * bf16_err + 1e-4


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gpt2_pallas_attention_with_dropout_matches_einsum_forward_and_backward(dtype):
    """GPT-2's causal attention through jaxport.causal_attention's Triton kernels with attention dropout 0.1 (the
    einsums' masks, one key): logits and every gradient within FUSED_SLACK of einsum-in-bf16's error against float32
    einsum with the same dropout."""
    ref_logits, ref_grads = backpack_logits_and_grads("einsum", jnp.float32, attn_pdrop=0.1)
    bf16_logits, bf16_grads = backpack_logits_and_grads("einsum", jnp.bfloat16, attn_pdrop=0.1)
    logits, grads = backpack_logits_and_grads("pallas", jnp.dtype(dtype), attn_pdrop=0.1)
    for name, ours, ref, bf16 in (("logits", logits, ref_logits, bf16_logits), ("grads", grads, ref_grads, bf16_grads)):
        ours_err, bf16_err = rel_err(ours, ref), rel_err(bf16, ref)
        print(f"\nGPT-2 pallas {dtype} {name}: rel. err {ours_err:.2e} (einsum bf16 {bf16_err:.2e})")
        assert np.isfinite(ours).all() and np.abs(ref).max() > 0
        assert ours_err <= FUSED_SLACK * bf16_err + 1e-4


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows, width", [(4096, 1280), (16384, 768), (37, 1000)])
def test_layer_norm_kernels_match_xla_forward_and_backward(rows, width, dtype):
    """jaxport.layer_norm_kernels compiled through Triton (Perceiver's and Backpack's widths, and an odd one with
    fewer rows than programs) against jaxport.layers.layer_norm, both computed in float32 from the same inputs: the
    output and the input gradient in `dtype`, the parameter gradients in float32."""
    rng = np.random.default_rng(rows)
    x = jnp.asarray(rng.standard_normal((rows, width)) * 2 + 0.5, dtype)
    cotangent = jnp.asarray(rng.standard_normal((rows, width)), dtype)
    scale, bias = jnp.asarray(1 + 0.1 * rng.standard_normal((2, width)), jnp.float32)

    def run(norm):
        out, pullback = jax.vjp(lambda x, scale, bias: norm(x, scale, bias, 1e-5, jnp.dtype(dtype)), x, scale, bias)
        return jax.jit(lambda: (out, *pullback(cotangent)))()

    tolerance = 1e-5 if dtype == "float32" else 1e-2  # bf16: the output and the input gradient are rounded
    for name, got, want in zip(["out", "dx", "dscale", "dbias"], run(layer_norm_kernels.layer_norm),
                               run(layers.layer_norm), strict=True):
        err = rel_err(got.astype(jnp.float32), want.astype(jnp.float32))
        print(f"\nlayer norm {rows}x{width} {dtype} {name}: rel. err {err:.2e}")
        assert err < (1e-5 if name in ("dscale", "dbias") else tolerance), name


@pytest.mark.parametrize("rows, width, dtype, rate", [(16384, 768, "bfloat16", 0.1), (16384, 768, "float32", 0.1),
                                                    (37, 1000, "float32", 0.0)])
def test_add_layer_norm_kernels_match_xla_forward_and_backward(rows, width, dtype, rate):
    """jaxport.layer_norm_kernels.add_layer_norm compiled through Triton (GPT-2's residual adds, with dropout)
    against jaxport.layers.add_layer_norm from the same inputs: the sum and its gradient (float32), the normalised
    output and the branch's gradient in `dtype`, the parameters' gradients."""
    rng = np.random.default_rng(rows)
    normal = lambda *shape, dtype=jnp.float32: jnp.asarray(rng.standard_normal(shape), dtype)
    residual, branch = normal(rows, width) * 2 + 0.5, normal(rows, width, dtype=dtype)
    params = [normal(width) * 0.1, 1 + 0.1 * normal(width), normal(width) * 0.1]
    cotangents = (normal(rows, width), normal(rows, width, dtype=dtype))
    hashes = dropout_hashes((rows, width), dropout_words(jax.random.key(4)))

    def run(add):
        out, pullback = jax.vjp(lambda *a: add(*a, *hashes, 1e-5, jnp.dtype(dtype), rate), residual, branch, *params)
        return jax.jit(lambda: (*out, *pullback(cotangents)))()

    tolerance = 1e-5 if dtype == "float32" else 1e-2  # bf16: the output and the branch's gradient are rounded
    names = ["total", "out", "d_residual", "d_branch", "d_branch_bias", "dscale", "dbias"]
    for name, got, want in zip(names, run(layer_norm_kernels.add_layer_norm), run(layers.add_layer_norm),
                               strict=True):
        err = rel_err(got.astype(jnp.float32), want.astype(jnp.float32))
        print(f"\nadd layer norm {rows}x{width} {dtype} {name}: rel. err {err:.2e}")
        assert err < (tolerance if name in ("out", "d_branch") else 1e-5), name


def test_layer_norm_module_runs_the_kernels_on_the_gpu():
    norm = layers.LayerNorm(768, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(norm)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    assert "layer_norm_forward" in forward.lower(state, jnp.ones((4, 768), jnp.bfloat16)).as_text()
    branch = layers.Branch(jnp.ones((4, 768), jnp.bfloat16), jnp.zeros((768,)))
    add = jax.jit(lambda state, x: nnx.merge(graphdef, state).add_and_norm(x, branch, 0.1, jax.random.key(0)))
    assert "add_layer_norm_forward" in add.lower(state, jnp.ones((4, 768), jnp.float32)).as_text()


@pytest.mark.parametrize("rows, vocab, dtype", [(16384, 50264, "bfloat16"), (777, 262, "float32")])
def test_cross_entropy_kernels_match_optax(rows, vocab, dtype):
    """jaxport.cross_entropy_kernels compiled through Triton (Backpack-GPT2's step, and a byte vocabulary with a short
    last block) against optax on the same logits in float32: the losses, and the logits' gradient in their dtype."""
    rng = np.random.default_rng(rows)
    logits = jnp.asarray(rng.standard_normal((rows, vocab)) * 3, dtype)
    labels = jnp.asarray(rng.integers(0, vocab, rows), jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal(rows), jnp.float32)

    def run(cross_entropy):
        def losses_and_gradient(logits, labels, cotangent):
            losses, pullback = jax.vjp(lambda logits: cross_entropy(logits, labels), logits)
            return losses, *pullback(cotangent)
        return jax.jit(losses_and_gradient)(logits, labels, cotangent)

    plain = lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    (losses, gradient), (want_losses, want_gradient) = run(cross_entropy_kernels.cross_entropy), run(plain)
    assert gradient.dtype == logits.dtype
    assert rel_err(losses, want_losses) < 1e-6
    tolerance = 1e-6 if dtype == "float32" else 1e-2  # bf16: the gradient is rounded
    assert rel_err(gradient.astype(jnp.float32), want_gradient.astype(jnp.float32)) < tolerance


def test_token_cross_entropy_runs_the_kernels_on_the_gpu():
    logits, labels = jnp.zeros((2, 8, 300), jnp.bfloat16), jnp.zeros((2, 8), jnp.int32)
    lowered = jax.jit(jax.grad(lambda x: tasks.token_cross_entropy(x, labels, jnp.ones((2, 8)))[0])).lower(logits)
    text = lowered.as_text()
    assert "cross_entropy_forward" in text and "cross_entropy_backward" in text


def gemm_inputs(rows=16384, k=768, n=3072):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, k)), jnp.bfloat16)
    kernel = jnp.asarray(0.05 * rng.standard_normal((k, n)), jnp.bfloat16)
    bias = jnp.asarray(0.5 * rng.standard_normal(n), jnp.bfloat16)
    return x, kernel, bias


def test_hopper_gemm_computes_the_exact_gelu():
    """Where 2.2 <= |pre-activation| <= 3.5, tanh's GELU lies 2e-4 to 4.5e-4 above the exact one (the difference is
    even in y); bf16 rounding of the output is unbiased, so the mean error over the ~6M such outputs tells the two
    apart (tests/test_hopper_gemm.py checks the same in the interpreter)."""
    x, kernel, bias = gemm_inputs()
    assert hopper_gemm.kernel_applies(x, kernel)
    got = np.asarray(jax.jit(hopper_gemm.gemm_bias_gelu)(x, kernel, bias), np.float64)
    y = (np.asarray(x, np.float32) @ np.asarray(kernel, np.float32)).astype(np.float64) + np.asarray(bias, np.float64)
    exact = y * 0.5 * (1.0 + np.asarray(jax.scipy.special.erf(jnp.asarray(y / np.sqrt(2.0), jnp.float32)), np.float64))
    region = (np.abs(y) >= 2.2) & (np.abs(y) <= 3.5)
    tanh = 0.5 * y * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (y + 0.044715 * y ** 3)))
    mean_error, tanh_error = float((got - exact)[region].mean()), float((tanh - exact)[region].mean())
    print(f"\nGEMM mean error where 2.2 <= |y| <= 3.5: {mean_error:.2e} over {region.sum()} values (tanh's GELU: "
          f"{tanh_error:.2e})")
    assert tanh_error > 2e-4
    assert abs(mean_error) < 3e-5
    assert np.abs(got - exact).max() < 2 ** -7 * np.abs(exact).max()


def test_hopper_gemm_runs_outside_differentiation_only():
    x, kernel, bias = gemm_inputs(rows=1024)
    forward = jax.jit(hopper_gemm.dense_gelu).lower(x, kernel, bias).as_text()
    backward = jax.jit(jax.grad(lambda x: hopper_gemm.dense_gelu(x, kernel, bias).astype(jnp.float32).sum())).lower(
        x).as_text()
    assert "mosaic_gpu" in forward and "mosaic_gpu" not in backward
    np.testing.assert_array_equal(jax.jit(hopper_gemm.dense_gelu)(x, kernel, bias),
                                  jax.jit(hopper_gemm.gemm_bias_gelu)(x, kernel, bias))
