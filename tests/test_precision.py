"""A float32 model runs its matmuls in true float32 (HIGHEST) on every backend; bf16 models keep JAX's default, and
a precision the caller chose is kept. Checked on the traced programs, so it holds for GPUs without one here."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from backpack_jax import BackpackGPT2Config, BackpackGPT2LMHeadModel, GPT2Config, GPT2LMHeadModel
from jaxport import runtime
from lsg_jax import LSGBartConfig, LSGBartForConditionalGeneration
from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM, PerceiverForSequenceClassification
from sip_jax.configuration import SIPFinetuningConfig, SIPPreTrainingConfig
from sip_jax.modeling import SIPFinetuningModel, SIPPreTrainingModel
from t5_jax import T5Config, T5ForConditionalGeneration

T5_TINY = dict(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu",
               tie_word_embeddings=False)
IDS = np.array([[5, 6, 7, 8, 1, 0]], np.int32)
MASK = (IDS > 0).astype(np.int32)


def _fst_rep():
    rep = np.zeros((1, 3, 5), np.int32)
    rep[..., 4] = 1
    return jnp.asarray(rep)


def _t5(dtype):
    return T5ForConditionalGeneration(T5Config.create(**T5_TINY), dtype=dtype, rngs=nnx.Rngs(0)), {}


def _lsg(dtype):
    config = LSGBartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                           max_position_embeddings=32, block_size=4, sparse_block_size=4, num_global_tokens=2)
    return LSGBartForConditionalGeneration(config, dtype=dtype, rngs=nnx.Rngs(0)), {}


def _sip_pretrain(dtype):
    model = SIPPreTrainingModel(SIPPreTrainingConfig.create(**T5_TINY), dtype=dtype, rngs=nnx.Rngs(0))
    return model, {"fst_rep": _fst_rep()}


def _sip_finetune(dtype):
    model = SIPFinetuningModel(SIPFinetuningConfig.create(**T5_TINY, prefix_length=3), dtype=dtype, rngs=nnx.Rngs(0))
    model.initialize_prefix(jax.random.key(0))
    return model, {}


GPT2_TINY = dict(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16)


def _backpack(dtype):
    return BackpackGPT2LMHeadModel(BackpackGPT2Config.create(**GPT2_TINY, num_senses=4), dtype=dtype,
                                   rngs=nnx.Rngs(0)), {}


def _gpt2(dtype):
    return GPT2LMHeadModel(GPT2Config.create(**GPT2_TINY), dtype=dtype, rngs=nnx.Rngs(0)), {}


PERCEIVER_TINY = dict(num_latents=4, d_latents=16, d_model=16, num_self_attends_per_block=2, num_self_attention_heads=2,
                      num_cross_attention_heads=2, max_position_embeddings=8)


def _perceiver(dtype):
    return PerceiverForMaskedLM(PerceiverConfig.create(**PERCEIVER_TINY), dtype=dtype, rngs=nnx.Rngs(0)), {}


def _perceiver_cls(dtype):
    config = PerceiverConfig.create(**PERCEIVER_TINY, num_labels=3)
    return PerceiverForSequenceClassification(config, dtype=dtype, rngs=nnx.Rngs(0)), {}


FAMILIES = {"t5": _t5, "lsg": _lsg, "sip_pretrain": _sip_pretrain, "sip_finetune": _sip_finetune,
            "backpack": _backpack, "gpt2": _gpt2, "perceiver": _perceiver, "perceiver_cls": _perceiver_cls}


def _dot_precisions(jaxpr) -> set:
    """The precision of every dot_general in a jaxpr and the jaxprs inside it (jit, custom_vjp, loops)."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.add(eqn.params["precision"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _dot_precisions(sub)
    return found


def _programs(model, extra):
    """Forward and generation: every entry point a user or the trainer calls."""
    ids, mask = jnp.asarray(IDS), jnp.asarray(MASK)
    if isinstance(model, BackpackGPT2LMHeadModel | GPT2LMHeadModel):  # decoder-only, no padding mask
        programs = {"forward": lambda: model(ids).logits,
                    "generate": lambda: model.generate(ids, max_new_tokens=3).sequences}
        if isinstance(model, BackpackGPT2LMHeadModel):
            weights = jnp.ones((1, model.config.num_senses, ids.shape[1], ids.shape[1]))
            programs["senses"] = lambda: model.senses(ids)
            programs["custom contextualization"] = lambda: model.run_with_custom_contextualization(ids, weights).logits
        return programs
    if not hasattr(model, "generate"):  # an encoder with a head (Perceiver IO): its forward pass is all
        return {"forward": lambda: model(ids, mask, **extra).logits}
    return {"forward": lambda: model(ids, mask, ids[:, :4], **extra).logits,
            "generate": lambda: model.generate(ids, mask, max_new_tokens=3, **extra).sequences}


def _precisions(family, dtype) -> dict:
    model, extra = FAMILIES[family](dtype)
    return {name: _dot_precisions(jax.make_jaxpr(program)().jaxpr) for name, program in _programs(model, extra).items()}


HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_models_multiply_in_float32(family):
    for name, found in _precisions(family, jnp.float32).items():
        assert found == {HIGHEST}, (name, found)


@pytest.mark.parametrize("family", ["t5", "lsg", "backpack", "perceiver"])
def test_bf16_models_and_chosen_precisions_are_kept(family):
    # T5's relative-position lookup is a one-hot matmul pinned to HIGHEST (exact selection): set aside.
    for name, found in _precisions(family, jnp.bfloat16).items():
        assert found - {HIGHEST} == {None}, (name, found)
    with runtime.matmul_precision("tensorfloat32"):  # train.matmul_precision
        tf32 = _precisions(family, jnp.float32)
    high = (jax.lax.Precision.HIGH, jax.lax.Precision.HIGH)
    for name, found in tf32.items():
        assert found - {HIGHEST} == {high}, (name, found)
