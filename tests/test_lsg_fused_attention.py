"""The fused LSG attention (lsg_jax.fused_attention, implementation "xla": the formulation the "cudnn" path runs on
GPU; lsg_jax.pallas_attention, "pallas", in Pallas' interpreter) against the einsum path, float32 on CPU: outputs
and gradients for block sizes, global-token counts, every sparsity type, lengths that are not a multiple of the
block, padding at the end and in the middle, short inputs; the whole model; encoder rematerialisation (same loss
and gradients); and which implementation lsg_jax.dispatch.resolve picks."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxport.layers import NEG_INF
from lsg_jax import LSGBartConfig, LSGBartForConditionalGeneration
from lsg_jax.attention import draw_lsh_projections, full_attention
from lsg_jax.dispatch import Implementations, lsg_attention, padded_attention, resolve
from lsg_jax.pallas_attention import pallas_lsg_attention
from tests.helpers import import_graph
from tests.lsg_reference.harness import VOCAB, tiny_config

HEADS, HEAD_DIM = 4, 8

# name -> (LSG fields, tokens after the global ones: a multiple of block_size, or short enough for full attention)
CASES = {
    "none-b8-g2": (dict(block_size=8, sparsity_type="none", num_global_tokens=2), 48),
    "none-b16-g1": (dict(block_size=16, sparsity_type="none", num_global_tokens=1), 64),
    "none-b4-g7": (dict(block_size=4, sparsity_type="none", num_global_tokens=7), 28),
    "norm-b8-s4": (dict(block_size=8, sparse_block_size=4, sparsity_factor=2, sparsity_type="norm",
                        num_global_tokens=2), 40),
    "pooling-b8-s4-f4": (dict(block_size=8, sparse_block_size=4, sparsity_factor=4, sparsity_type="pooling",
                              num_global_tokens=2), 48),
    "pooling-f1": (dict(block_size=8, sparse_block_size=8, sparsity_factor=1, sparsity_type="pooling",
                        num_global_tokens=1), 40),
    "stride-g4": (dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="stride",
                       num_global_tokens=4), 48),
    "block_stride-s4": (dict(block_size=8, sparse_block_size=4, sparsity_factor=2, sparsity_type="block_stride",
                             num_global_tokens=1), 56),
    "bos_pooling-f4": (dict(block_size=8, sparse_block_size=8, sparsity_factor=4, sparsity_type="bos_pooling",
                            num_global_tokens=2), 48),
    "lsh-b16-s8-f4-pre2": (dict(block_size=16, sparse_block_size=8, sparsity_factor=4, sparsity_type="lsh",
                                num_global_tokens=2, lsh_num_pre_rounds=2), 64),
    "odd-step-b4-f4": (dict(block_size=4, sparse_block_size=2, sparsity_factor=4, sparsity_type="pooling",
                            num_global_tokens=2), 32),
    "short-full-attention": (dict(block_size=32, sparsity_type="norm", sparse_block_size=32, num_global_tokens=2),
                             45),
}


def lsg_config(lsg: dict, **runtime) -> LSGBartConfig:
    return LSGBartConfig.from_dict({**tiny_config(), "sparse_block_size": 8, **lsg, **runtime})


def attention_inputs(config, tokens: int, seed: int = 0, head_dim: int = HEAD_DIM):
    """q/k/v [3, H, G + tokens, D], a bias, LSH projections (or None) and a cotangent for the output. Row 0 is
    unpadded, row 1 padded at the end (more than a block), row 2 has holes: single tokens and a whole block."""
    G, bs = config.num_global_tokens, config.block_size
    L = G + tokens
    rng = np.random.default_rng(seed)
    q, k, v, cotangent = (rng.standard_normal((3, HEADS, L, head_dim), np.float32) for _ in range(4))
    mask = np.ones((3, L), bool)
    mask[1, L - bs - 3:] = False
    mask[2, [G, G + 3, L - 1]] = False
    mask[2, G + bs:G + 2 * bs] = False
    bias = np.where(mask, 0.0, NEG_INF).astype(np.float32)
    projections = None
    if config.has_sparse and config.sparsity_type == "lsh":
        projections = draw_lsh_projections(jax.random.key(seed), config, HEADS, head_dim)
    return (q, k, v), bias, projections, cotangent


def attention_and_grads(config, implementation, qkv, bias, projections, cotangent):
    """The output and d<out, cotangent>/d(q, k, v), jitted (one compilation instead of one per operation)."""
    def run(qkv, bias, projections, cotangent):
        out, vjp = jax.vjp(lambda *qkv: lsg_attention(*qkv, bias, config, jnp.float32, implementation, projections),
                           *qkv)
        return out, vjp(cotangent)
    return jax.jit(run)(qkv, bias, projections, cotangent)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_attention_equals_einsum(case):
    lsg, tokens = CASES[case]
    config = lsg_config(lsg)
    qkv, bias, projections, cotangent = attention_inputs(config, tokens)
    expected, expected_grads = attention_and_grads(config, "einsum", qkv, bias, projections, cotangent)
    out, grads = attention_and_grads(config, "xla", qkv, bias, projections, cotangent)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5, rtol=1e-5)
    for name, grad, expected_grad in zip("qkv", grads, expected_grads, strict=True):
        np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), atol=1e-5, rtol=1e-5,
                                   err_msg=f"d{name}")


def test_fused_attention_without_global_tokens():
    """num_global_tokens = 0 (no config has it; the attention reads only the fields given here): equal wherever a
    query has a valid key; finite where it has none (the last block of row 1, whose keys are all padding)."""
    config = types.SimpleNamespace(num_global_tokens=0, block_size=4, has_sparse=False, attention_dropout=0.0)
    qkv, _, _, _ = attention_inputs(config, 24)
    mask = np.ones((3, 24), bool)
    mask[1, 14:] = False  # blocks 4 and 5 are padding: block 5 sees no valid key
    mask[2, [0, 5, 9, 10]] = False
    bias = np.where(mask, 0.0, NEG_INF).astype(np.float32)
    expected, out = (np.asarray(jax.jit(lambda qkv: lsg_attention(*qkv, bias, config, jnp.float32, name))(qkv))
                     for name in ("einsum", "xla"))
    assert np.isfinite(out).all()
    has_key = np.ones((3, 24), bool)
    has_key[1, 20:] = False
    np.testing.assert_allclose(out.transpose(0, 2, 1, 3)[has_key], expected.transpose(0, 2, 1, 3)[has_key],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
@pytest.mark.parametrize("holes", [False, True])
def test_padded_cross_attention(holes, implementation):
    """padded_attention (the decoder's cross-attention) equals plain masked attention, output and gradients:
    right-padded keys (taken in place by xla/cudnn) and keys with holes (permuted valid-first); pallas: the split
    kernels in Pallas' interpreter, over several key chunks."""
    rng = np.random.default_rng(3)
    q, k, v, cotangent = (rng.standard_normal((2, length, HEADS, 16), np.float32) for length in (5, 300, 300, 5))
    valid = np.ones((2, 300), bool)
    valid[1, 210:] = False
    if holes:
        valid[0, [3, 17, 130]] = False
    bias = jnp.where(jnp.asarray(valid)[:, None, None, :], 0.0, NEG_INF)
    plain = lambda q, k, v: jnp.swapaxes(full_attention(*(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), bias,
                                                        jnp.float32), 1, 2)
    fused = lambda q, k, v: padded_attention(q, k, v, jnp.asarray(valid), jnp.float32, implementation)
    run = lambda f: jax.tree.leaves(jax.jit(lambda *qkv: (lambda out, vjp: (out, vjp(cotangent)))(
        *jax.vjp(f, *qkv)))(q, k, v))
    for got, want in zip(run(fused), run(plain), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_bfloat16_compute():
    """bf16 through the fused path (what cuDNN computes in) stays near the float32 einsum result."""
    lsg, tokens = CASES["none-b8-g2"]
    config = lsg_config(lsg)
    qkv, bias, _, _ = attention_inputs(config, tokens)
    expected = jax.jit(lambda qkv: lsg_attention(*qkv, bias, config, jnp.float32, "einsum"))(qkv)
    out = jax.jit(lambda qkv: lsg_attention(*(x.astype(jnp.bfloat16) for x in qkv), bias, config, jnp.bfloat16,
                                            "xla"))(qkv)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected), atol=3e-2)


MODEL_LSG = dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="stride", num_global_tokens=2,
                 decoder_layers=1, dropout=0.1, activation_dropout=0.1)


def run_model(ids, mask, labels, **runtime):
    """(encoder states, logits, loss, parameter gradients) of the tiny model (the same weights whatever `runtime`),
    dropout on with a fixed rng, in one jitted call."""
    model = LSGBartForConditionalGeneration(lsg_config(MODEL_LSG, **runtime), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        out = nnx.merge(graphdef, params, rest)(input_ids=ids, attention_mask=mask, labels=labels,
                                                dropout_rng=jax.random.key(3))
        nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out.logits), labels[..., None], axis=-1))
        return nll, out

    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return {"encoder states": out.encoder_last_hidden_state, "logits": out.logits, "loss": value,
            "grads": jax.tree.leaves(grads)}


@pytest.fixture(scope="module")
def model_runs():
    """The tiny model on 45 tokens (padded to 48 by the model; row 1 padded at the end, row 2 in the middle):
    einsum, fused ("xla") and fused with each remat mode."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (3, 45))
    mask = np.ones_like(ids)
    mask[1, 32:] = 0
    mask[2, 5:9] = 0
    mask[2, 20:31] = 0
    labels = rng.integers(3, VOCAB, (3, 7))
    return {name: run_model(ids, mask, labels, **runtime) for name, runtime in
            (("einsum", dict(attn_implementation="einsum")), ("xla", dict(attn_implementation="xla")),
             ("xla+remat", dict(attn_implementation="xla", remat=True)),
             ("xla+dots", dict(attn_implementation="xla", remat="dots")))}


def assert_runs_close(out, expected, atol, rtol):
    for name in ("encoder states", "logits", "loss"):
        np.testing.assert_allclose(np.asarray(out[name]), np.asarray(expected[name]), atol=atol, rtol=rtol,
                                   err_msg=name)
    for grad, expected_grad in zip(out["grads"], expected["grads"], strict=True):
        np.testing.assert_allclose(np.asarray(grad), np.asarray(expected_grad), atol=atol, rtol=10 * rtol)


def test_model_with_fused_attention(model_runs):
    """LSGBartForConditionalGeneration with attn_implementation switched: the same encoder states, logits, loss and
    parameter gradients."""
    assert_runs_close(model_runs["xla"], model_runs["einsum"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["xla+remat", "xla+dots"])
def test_remat_gives_the_same_loss_and_grads(model_runs, mode):
    """remat=True ("full") and "dots" recompute encoder layers in the backward pass (dropout included, from the
    same rng)."""
    assert_runs_close(model_runs[mode], model_runs["xla"], atol=1e-6, rtol=1e-6)


def sized_config(head_dim: int = 64, **fields) -> LSGBartConfig:
    """A config with LSG attention the Pallas kernels take (block 64, no sparse keys) and heads of head_dim."""
    return lsg_config({"block_size": 64, "sparsity_type": "none", "d_model": 4 * head_dim, **fields})


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_resolve_on_an_nvidia_gpu(dtype):
    """auto (the default) with half-precision compute: pallas for LSG attention its kernels take and for a
    cross-attention whose head dim is a power of two (Triton's tiles), cudnn for the rest; the same in training
    unless attention dropout needs the einsums (fused attention has none)."""
    gpu = lambda config, training=False: resolve(config, dtype, training=training, platform="gpu")
    assert sized_config().attn_implementation == "auto"
    assert gpu(sized_config()) == Implementations(lsg="pallas", cross="pallas")
    assert gpu(sized_config(sparsity_type="norm", sparse_block_size=8)) == Implementations("cudnn", "pallas")
    assert gpu(sized_config(block_size=32)) == Implementations("cudnn", "pallas")  # not whole key tiles
    assert gpu(sized_config(head_dim=80)) == Implementations("cudnn", "cudnn")
    assert gpu(sized_config(head_dim=160)) == Implementations("einsum", "einsum")  # beyond cuDNN's head dims
    assert gpu(sized_config(), training=True) == Implementations("pallas", "pallas")
    assert gpu(sized_config(attention_dropout=0.1)) == Implementations("pallas", "pallas")
    for name in ("auto", "cudnn", "xla", "pallas"):
        config = sized_config(attention_dropout=0.1, attn_implementation=name)
        assert gpu(config, training=True) == Implementations("einsum", "einsum")
    # Explicit names are taken as given; a head dim Triton does not tile sends pallas' cross-attention to cuDNN.
    assert gpu(sized_config(attn_implementation="cudnn")) == Implementations("cudnn", "cudnn")
    assert gpu(sized_config(head_dim=80, attn_implementation="pallas")) == Implementations("pallas", "cudnn")


def test_resolve_elsewhere_and_for_float32_models():
    """auto is einsum for float32 models (their attention stays float32) and off NVIDIA GPUs; explicit names hold
    there too, but cudnn needs an NVIDIA GPU."""
    config = sized_config()
    assert resolve(config, jnp.float32, training=False, platform="gpu") == Implementations("einsum", "einsum")
    for platform in ("cpu", "tpu", "rocm"):
        assert resolve(config, jnp.bfloat16, training=False, platform=platform) == Implementations("einsum", "einsum")
    assert resolve(config, jnp.bfloat16, training=False) == Implementations("einsum", "einsum")  # this CPU
    xla = sized_config(attn_implementation="xla")
    assert resolve(xla, jnp.float32, training=False, platform="cpu") == Implementations("xla", "xla")
    pallas = sized_config(head_dim=80, attn_implementation="pallas")
    assert resolve(pallas, jnp.float32, training=False, platform="cpu") == Implementations("pallas", "xla")
    with pytest.raises(ValueError, match="cudnn.*NVIDIA GPU"):
        resolve(sized_config(attn_implementation="cudnn"), jnp.bfloat16, training=False, platform="cpu")


def test_kernel_modules_are_leaves():
    """The formulations decide nothing and import nothing above them (the cycle check: tests/test_imports.py)."""
    graph = {name.split(".")[1]: {t.split(".")[1] for t in targets if t.startswith("lsg_jax.")}
             for name, targets in import_graph().items() if name.startswith("lsg_jax.")}
    for kernels in ("attention", "pallas_attention", "hopper_gemm", "configuration"):
        assert graph[kernels] == set(), kernels
    assert graph["fused_attention"] == {"attention"}


def test_runtime_settings():
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        lsg_config({}, attn_implementation="flash")
    with pytest.raises(ValueError, match="remat='some'"):
        lsg_config({}, remat="some")
    assert lsg_config({}, remat=True).remat == "full" and lsg_config({}, remat=False).remat == "none"
    config = lsg_config({}, attn_implementation="xla", remat=True)
    assert "attn_implementation" not in config.to_dict() and "remat" not in config.to_dict()  # runtime settings


@pytest.mark.parametrize("tokens", [48, 16])  # block attention, and an input short enough for full attention
def test_attention_dropout_in_training(tokens):
    """attention_dropout drops LSG attention probabilities when an rng is given (as the original does), only then
    (resolve takes the einsums for such steps: test_resolve_on_an_nvidia_gpu)."""
    lsg = dict(block_size=8, sparsity_type="pooling", sparse_block_size=4, sparsity_factor=2, num_global_tokens=2)
    qkv, bias, _, _ = attention_inputs(lsg_config(lsg), tokens)
    rng = jax.random.key(5)
    run = lambda config, rng: np.asarray(jax.jit(lambda qkv: lsg_attention(*qkv, bias, config, jnp.float32, "einsum",
                                                                           rng=rng))(qkv))
    plain = run(lsg_config(lsg), None)
    np.testing.assert_array_equal(run(lsg_config(lsg, attention_dropout=0.3), None), plain)
    np.testing.assert_array_equal(run(lsg_config(lsg), rng), plain)  # attention_dropout=0: nothing dropped
    assert np.abs(run(lsg_config(lsg, attention_dropout=0.3), rng) - plain).max() > 1e-2


@pytest.mark.parametrize("globals_, tokens, block_size", [(1, 192, 64), (7, 256, 64), (64, 320, 64),
                                                          (100, 192, 64), (7, 512, 128)])
def test_pallas_kernels_equal_einsum(globals_, tokens, block_size):
    """Implementation "pallas": its kernels' output (run in Pallas' interpreter here) equals the einsum path's,
    with padding at the end and holes, and so do its gradients (the backward kernels). Blocks of 128 rows take the
    forward kernel's 128-query tiles."""
    config = lsg_config(dict(block_size=block_size, sparsity_type="none", num_global_tokens=globals_))
    qkv, bias, _, cotangent = attention_inputs(config, tokens, head_dim=16)
    forward = lambda qkv: lsg_attention(*qkv, bias, config, jnp.float32, "pallas")
    assert "pallas_call" in str(jax.make_jaxpr(forward)(qkv))
    primal = jax.jit(forward)(qkv)
    expected, out = (attention_and_grads(config, name, qkv, bias, None, cotangent) for name in ("einsum", "pallas"))
    for got, want in zip(jax.tree.leaves((primal, out)), jax.tree.leaves((expected[0], expected)), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens", [256, 64])
def test_pallas_kernels_add_the_projection_biases(tokens):
    """The encoder's route: one packed projection without biases [B, L, 3, H, D], the query and value biases added
    by the kernels and the key bias left out (softmax cancels it): the same output, and the same gradients of the
    packed projection and of both biases, as the einsum path given q, k and v with all three biases. 64 tokens take
    the short-input path (full attention, through the split kernels)."""
    config = lsg_config(dict(block_size=64, sparsity_type="none", num_global_tokens=7))
    (q, k, v), bias, _, cotangent = attention_inputs(config, tokens, head_dim=16)
    packed = np.stack([np.swapaxes(x, 1, 2) for x in (q, k, v)], axis=2)  # [B, L, 3, H, D]
    query_bias, key_bias, value_bias = np.random.default_rng(1).standard_normal((3, HEADS, 16), np.float32)

    def reference(packed, query_bias, value_bias):
        q, k, v = (jnp.swapaxes(packed[:, :, slot] + b, 1, 2)
                   for slot, b in enumerate((query_bias, key_bias, value_bias)))
        return jnp.swapaxes(lsg_attention(q, k, v, bias, config, jnp.float32, "einsum"), 1, 2)

    kernels = lambda packed, query_bias, value_bias: pallas_lsg_attention(packed, query_bias, value_bias, bias,
                                                                          config, jnp.float32)
    results = []
    for attention in (reference, kernels):
        def run(*args, attention=attention):
            out, vjp = jax.vjp(attention, *args)
            return out, vjp(np.swapaxes(cotangent, 1, 2))
        results.append(jax.jit(run)(packed, query_bias, value_bias))
    assert np.abs(np.asarray(results[0][1][2])).max() > 1  # the value bias's gradient is not trivially zero
    for got, want in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0]), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_pallas_kernels_partition_over_batch_and_heads():
    """Under a jit sharded over batch and heads (8 CPU devices: 4 x 2) each device runs the kernels on its own
    batch elements and heads: no input gathered, the same output and gradients as on one device."""
    config = lsg_config(dict(block_size=64, sparsity_type="none", num_global_tokens=7))
    (q, k, v), bias, _, cotangent = attention_inputs(config, 192, head_dim=16)
    q, k, v, bias, cotangent = (np.concatenate([x, x[:1]]) for x in (q, k, v, bias, cotangent))  # batch 4

    def run(qkv, bias, cotangent):
        out, vjp = jax.vjp(lambda *qkv: lsg_attention(*qkv, bias, config, jnp.float32, "pallas"), *qkv)
        return out, vjp(cotangent)

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(4, 2), ("data", "tensor"))
    per_head = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "tensor"))
    per_row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    sharded = jax.jit(run, in_shardings=((per_head,) * 3, per_row, per_head))
    assert "all-gather" not in sharded.lower((q, k, v), bias, cotangent).compile().as_text()
    for got, want in zip(jax.tree.leaves(sharded((q, k, v), bias, cotangent)),
                         jax.tree.leaves(jax.jit(run)((q, k, v), bias, cotangent)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6)


def test_pallas_refuses_what_its_kernels_do_not_cover():
    config = lsg_config(dict(block_size=8, sparsity_type="none"))
    for head_dim, reason in ((8, "head dim 8"), (16, "block_size 8")):
        qkv, bias, _, _ = attention_inputs(config, 48, head_dim=head_dim)
        with pytest.raises(ValueError, match=f"pallas.*{reason}"):
            lsg_attention(*qkv, bias, config, jnp.float32, "pallas")
    config = lsg_config(dict(block_size=64, sparsity_type="norm", sparse_block_size=8))
    qkv, bias, _, _ = attention_inputs(config, 192, head_dim=16)
    with pytest.raises(ValueError, match="pallas.*sparse keys"):
        lsg_attention(*qkv, bias, config, jnp.float32, "pallas")
