"""The promises every model family keeps, checked the same way for each (FAMILIES below; a new family is one entry):

- logits equal the PyTorch reference's on random tiny weights (float32, relative error < 1e-4);
- incremental decoding with the cache equals the full teacher-forced pass;
- PyTorch -> Flax -> PyTorch is bit-identical, and so is a save_pretrained / from_pretrained round trip;
- on 8 (fake CPU) devices the train state is initialised sharded as the logical-axis rules say;
- `python -m train`, killed with SIGKILL mid-run and rerun, ends with the parameters of an uninterrupted run;
- a checkpoint of another family is refused with an error that names what does not fit.

Family-specific behaviour (LSG's sparsity types, SIP's prefix initialisation, T5's variants) stays in the
family's own test modules."""
import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxport import config as config_lib
from jaxport import registry, trainer, tree
from tests import helpers
from tests.lsg_reference import harness

# ---------------------------------------------------------------------------------------------------------------
# The families


@dataclasses.dataclass
class Reference:
    """A random tiny PyTorch model saved as an HF folder, and its logits on a padded batch."""
    folder: Path
    inputs: dict  # model keyword arguments: input_ids, attention_mask, decoder_input_ids and the family's own
    logits: np.ndarray


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # as jaxport.registry names it
    config: str  # its tiny training config
    reference: Callable[[Path], Reference]  # builds the reference in the given folder
    layouts: dict[str, P]  # parameter path -> PartitionSpec on a (data 2, fsdp 2, tensor 2) mesh, after `wide`
    wide: tuple[str, ...]  # config overrides that make the parameters of `layouts` too large to be packed
    foreign: str  # a family whose checkpoint this one must refuse...
    refusal: str  # ...with an error matching this
    data: Callable[[Path], list[str]] = lambda folder: []  # config overrides naming tiny data files written there
    run: tuple[str, ...] = ()  # config overrides of the kill-and-resume runs
    # (model, reference) -> the logits of decoding reference.inputs one token at a time with the cache, to equal
    # the full pass; None for a family without a decoder (Perceiver IO)
    incremental: Callable | None = None


def torch_logits(model, **inputs) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in inputs.items()}).logits.numpy()


T5_KWARGS = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0)


def t5_reference(folder: Path) -> Reference:
    """transformers' T5."""
    model = helpers.random_torch_t5(seed=0, **T5_KWARGS)
    model.save_pretrained(folder)
    ids, mask, dec = helpers.padded_batch(np.random.default_rng(0), T5_KWARGS["vocab_size"])
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    return Reference(folder, inputs, torch_logits(model, **inputs))


def sip_pretrain_reference(folder: Path) -> Reference:
    """transformers' T5 fed the FST encoding ++ the embedded input as inputs_embeds, as the original runs it."""
    torch.manual_seed(0)
    fst = helpers.FST_KWARGS["linear"]
    model = helpers.TorchSIPPretraining(fst).eval()
    helpers.save_original_layout(model, folder, "sip_pretrain", fst, drop_duplicates=True)
    rng = np.random.default_rng(0)
    ids, mask, dec = helpers.padded_batch(rng, helpers.SIP_VOCAB, (9, 6, 3), 6)
    fst_rep = helpers.random_fsts(rng, fst, [5, 2, 4])  # padded to 5 transitions with the padding state
    with torch.no_grad():
        embeds, full_mask = model.prepend(torch.tensor(ids), torch.tensor(mask), torch.tensor(fst_rep).long())
    logits = torch_logits(model.model, inputs_embeds=embeds, attention_mask=full_mask, decoder_input_ids=dec)
    return Reference(folder, dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, fst_rep=fst_rep), logits)


def sip_finetune_reference(folder: Path) -> Reference:
    """transformers' T5 fed the prefix ++ the embedded input as inputs_embeds, as the original runs it."""
    torch.manual_seed(0)
    model = helpers.TorchSIPFinetuning(helpers.PREFIX_KWARGS).eval()
    helpers.save_original_layout(model, folder, "sip_finetune", helpers.PREFIX_KWARGS, drop_duplicates=True)
    ids, mask, dec = helpers.padded_batch(np.random.default_rng(0), helpers.SIP_VOCAB, (9, 6, 3), 6)
    with torch.no_grad():
        embeds, full_mask = model.prepend(torch.tensor(ids), torch.tensor(mask))
    logits = torch_logits(model.model, inputs_embeds=embeds, attention_mask=full_mask, decoder_input_ids=dec)
    return Reference(folder, dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec), logits)


LSG_FIELDS = dict(block_size=8, sparse_block_size=8, sparsity_factor=2, sparsity_type="norm", num_global_tokens=1)


def lsg_reference(folder: Path) -> Reference:
    """The original LSG-BART (lsg-converter), built and run in its own environment (tests/lsg_reference)."""
    ids, mask, dec = helpers.padded_batch(np.random.default_rng(0), harness.VOCAB, (45, 36, 11), 9, low=3)
    work = folder.parent
    np.savez(work / "lsg_inputs.npz", input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    harness.run_reference([
        dict(action="build", folder=str(folder), config={**harness.tiny_config(), **LSG_FIELDS}, lsg=True, seed=0),
        dict(action="run", folder=str(folder), lsg=True, inputs=str(work / "lsg_inputs.npz"),
             out=str(work / "lsg_outputs.npz"))], work)
    logits = np.load(work / "lsg_outputs.npz")["logits"]
    return Reference(folder, dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec), logits)


PERCEIVER_KWARGS = dict(num_latents=6, d_latents=16, d_model=24, num_blocks=2, num_self_attends_per_block=2,
                        num_self_attention_heads=2, num_cross_attention_heads=4, qk_channels=8, v_channels=16,
                        self_attention_widening_factor=2, max_position_embeddings=12)


def perceiver_reference(folder: Path) -> Reference:
    """transformers' PerceiverForMaskedLM, on inputs as long as its positions (it decodes all of them)."""
    model = helpers.random_torch_perceiver(transformers.PerceiverForMaskedLM, seed=0, **PERCEIVER_KWARGS)
    model.save_pretrained(folder)
    ids, mask, _ = helpers.padded_batch(np.random.default_rng(0), 262, (12, 7, 1), low=0)
    return Reference(folder, dict(inputs=ids, attention_mask=mask), torch_logits(model, inputs=ids,
                                                                                 attention_mask=mask))


def sip_finetune_data(folder: Path) -> list[str]:
    rows = [(word, word.upper()) for word in "cat dog bird fish mouse horse lion tiger bear wolf fox deer".split()]
    return [f"data.train_path={helpers.write_tsv(folder / 'train.tsv', rows[:8])}",
            f"data.eval_path={helpers.write_tsv(folder / 'eval.tsv', rows[8:])}"]


def lsg_data(folder: Path) -> list[str]:
    helpers.write_summarization_files(folder)
    return [f"data.tokenizer={folder / 'tokenizer'}", f"data.train_path={folder / 'train.jsonl'}",
            f"data.eval_path={folder / 'eval.jsonl'}"]


def family_inputs(inputs: dict) -> dict:
    """What the encoder needs besides input_ids and attention_mask (SIP pre-training's FSTs)."""
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "decoder_input_ids")}


def seq2seq_incremental(model, reference: Reference) -> np.ndarray:
    """Encode once, then run the decoder one token at a time on its cache."""
    inputs = {k: jnp.asarray(v) for k, v in reference.inputs.items()}
    ids, mask, dec = inputs["input_ids"], inputs["attention_mask"], inputs["decoder_input_ids"]
    hidden = model.encode(ids, mask, **family_inputs(inputs))
    cache = model.init_cache(hidden, dec.shape[1])
    # The cache holds the cross-attention keys/values: a decoding step must not project the encoder states again
    # (it would turn these NaN states into NaN logits).
    unused = jnp.full_like(hidden, jnp.nan)
    steps = []
    for t in range(dec.shape[1]):
        logits, cache = model.decode(dec[:, t:t + 1], unused, mask, cache, t)
        steps.append(np.asarray(logits))
    return np.concatenate(steps, axis=1)


def backpack_reference(folder: Path) -> Reference:
    """The authors' Backpack-GPT2 (pyvene 0.1.8's copy of their file), every key of its state dict saved."""
    model = helpers.random_backpack(seed=0, num_senses=3, sense_intermediate_scale=2)
    helpers.save_backpack(model, folder)
    ids = np.random.default_rng(0).integers(0, helpers.GPT2_TINY["vocab_size"], (3, 11))
    return Reference(folder, dict(input_ids=ids), torch_logits(model, input_ids=ids))


def gpt2_reference(folder: Path) -> Reference:
    """transformers' GPT-2."""
    model = helpers.random_gpt2(seed=0, scale_attn_by_inverse_layer_idx=True)
    model.save_pretrained(folder)
    ids = np.random.default_rng(0).integers(0, helpers.GPT2_TINY["vocab_size"], (3, 11))
    return Reference(folder, dict(input_ids=ids), torch_logits(model, input_ids=ids))


def causal_lm_incremental(model, reference: Reference) -> np.ndarray:
    """A decoder-only model: the first tokens on the cache at once, then one token at a time."""
    ids = jnp.asarray(reference.inputs["input_ids"])
    prefix = 4
    logits, cache = model.decode(ids[:, :prefix], model.init_cache(*ids.shape), 0)
    steps = [np.asarray(logits)]
    for t in range(prefix, ids.shape[1]):
        logits, cache = model.decode(ids[:, t:t + 1], cache, t)
        steps.append(np.asarray(logits))
    return np.concatenate(steps, axis=1)


# Backpack's and GPT-2's layouts (GPT-2's stack sits under transformer/ in GPT2LMHeadModel, under
# backpack/gpt2_model/ in Backpack); the sense axis is named "heads".
GPT2_LAYOUTS = {
    "wte/embedding": P("tensor", "fsdp"),  # (vocab, embed)
    "h/0/attn/c_attn/kernel": P("fsdp", None, "tensor", None),  # (embed, 3, heads, kv)
    "h/1/attn/c_proj/kernel": P("tensor", None, "fsdp"),  # (heads, kv, embed)
    "h/0/mlp/c_fc/kernel": P("fsdp", "tensor"),  # (embed, mlp)
    "h/1/mlp/c_proj/kernel": P("tensor", "fsdp"),  # (mlp, embed)
}
BACKPACK_LAYOUTS = {
    **{f"backpack/gpt2_model/{path}": spec for path, spec in GPT2_LAYOUTS.items()},
    "backpack/sense_network/final_mlp/c_proj/kernel": P("tensor", None, "fsdp"),  # (mlp, senses, embed)
    "backpack/sense_network/block/mlp/c_fc/kernel": P("fsdp", "tensor"),  # (embed, mlp)
    "backpack/sense_weight_net/c_attn/kernel": P("fsdp", None, "tensor", None),  # (embed, 2, senses, kv)
}
GPT2_WIDE = ("model.n_embd=384", "model.n_head=8")  # every leaf of the layouts over packing.SMALL_LEAF elements
LM_RUN = ("model.resid_pdrop=0.1", "model.embd_pdrop=0.1", "model.attn_pdrop=0.1")  # dropout: the restored rng


# T5's layouts under DEFAULT_RULES (embed -> fsdp; heads, mlp, vocab -> tensor); SIP's T5 sits under model/.
T5_LAYOUTS = {
    "shared/embedding": P("tensor", "fsdp"),  # (vocab, embed)
    "encoder/layers/0/attention/query/kernel": P("fsdp", "tensor", None),  # (embed, heads, kv)
    "encoder/layers/1/attention/out/kernel": P("tensor", None, "fsdp"),  # (heads, kv, embed)
    "decoder/layers/0/mlp/wi_0/kernel": P("fsdp", "tensor"),  # (embed, mlp)
    "decoder/layers/0/mlp/wo/kernel": P("tensor", "fsdp"),  # (mlp, embed)
    "lm_head/kernel": P("fsdp", "tensor"),  # (embed, vocab)
}
T5_WIDE = ("model.d_model=256", "model.d_kv=64", "model.num_heads=8", "model.d_ff=512")
T5_RUN = ("model.dropout_rate=0.1",)  # dropout draws from the restored rng

FAMILIES = [
    Family("t5", "configs/t5_reverse.py", t5_reference, T5_LAYOUTS, T5_WIDE, foreign="lsg",
           refusal=r"(?s)missing.*\n  shared/embedding: from shared\.weight\n"
                   r".*unexpected.*\n  model\.shared\.weight(\n|$)",
           run=(*T5_RUN, "train.batch_size=16"), incremental=seq2seq_incremental),
    Family("sip_pretrain", "configs/sip_pretrain.py", sip_pretrain_reference,
           {f"model/{path}": spec for path, spec in T5_LAYOUTS.items()}, T5_WIDE, foreign="t5",
           refusal="model_type 'sip_pretrain', got 't5'", run=(*T5_RUN, "train.batch_size=8"),
           incremental=seq2seq_incremental),
    Family("sip_finetune", "configs/sip_finetune.py", sip_finetune_reference,
           {**{f"model/{path}": spec for path, spec in T5_LAYOUTS.items()},
            "prefix_init_tensor": P(None, None, "fsdp")},  # (examples, length, embed)
           T5_WIDE, foreign="sip_pretrain", refusal="model_type 'sip_finetune', got 'sip_pretrain'",
           data=sip_finetune_data, run=(*T5_RUN, "train.batch_size=8", "eval.batch_size=8"),
           incremental=seq2seq_incremental),
    # FLIPPED's model is transformers' T5 (v1.1 LM-adapted: gated-gelu, untied head); its tiny config trains with
    # Adafactor, as the paper does.
    Family("flipped", "configs/flipped_train.py", t5_reference, T5_LAYOUTS, T5_WIDE, foreign="sip_pretrain",
           refusal=r"(?s)missing.*\n  shared/embedding: from shared\.weight\n.*unexpected.*\n  model\.shared\.weight\n",
           run=(*T5_RUN, "train.batch_size=8"), incremental=seq2seq_incremental),
    Family("lsg", "configs/lsg_arxiv.py:tiny", lsg_reference,
           {"shared/embedding": P("tensor", "fsdp"),  # (vocab, embed)
            "encoder/embed_positions/embedding": P(None, "fsdp"),  # (positions, embed)
            "encoder/layers/0/self_attn/query/kernel": P("fsdp", "tensor", None),  # (embed, heads, kv)
            "decoder/layers/1/encoder_attn/out/kernel": P("tensor", None, "fsdp"),  # (heads, kv, embed)
            "decoder/layers/0/fc1/kernel": P("fsdp", "tensor"),  # (embed, mlp)
            "encoder/layers/1/fc2/kernel": P("tensor", "fsdp")},  # (mlp, embed)
           ("model.d_model=384", "model.encoder_attention_heads=8", "model.decoder_attention_heads=8",
            "model.encoder_ffn_dim=512", "model.decoder_ffn_dim=512"),
           foreign="t5",
           refusal=r"(?s)missing.*\n  encoder/layers/0/self_attn/query/kernel: from .*unexpected.*\n"
                   r"  encoder\.block\.0\.layer\.0\.SelfAttention\.k\.weight\n",
           data=lsg_data, run=("train.batch_size=8", "train.grad_accum_steps=1", "model.encoder_layers=1",
                               "model.decoder_layers=1"),
           incremental=seq2seq_incremental),
    Family("backpack", "configs/backpack_owt.py", backpack_reference, BACKPACK_LAYOUTS,
           (*GPT2_WIDE, "model.num_senses=8"), foreign="gpt2",
           refusal=r"(?s)missing.*\n  backpack/gpt2_model/h/0/attn/c_attn/bias: from backpack\.gpt2_model\.h\.0\."
                   r"attn\.c_attn\.bias\n.*unexpected.*\n  transformer\.h\.0\.attn\.c_attn\.bias\n",
           run=LM_RUN, incremental=causal_lm_incremental),
    Family("gpt2", "configs/backpack_owt.py:tiny_gpt2", gpt2_reference,
           {f"transformer/{path}": spec for path, spec in GPT2_LAYOUTS.items()}, GPT2_WIDE, foreign="backpack",
           refusal=r"(?s)missing.*\n  transformer/h/0/attn/c_attn/bias: from transformer\.h\.0\.attn\.c_attn\.bias\n"
                   r".*unexpected.*\n  backpack\.gpt2_model\.h\.0\.attn\.c_attn\.bias\n",
           run=LM_RUN, incremental=causal_lm_incremental),
    # An encoder with a head: no incremental decoding. LAMB keeps every leaf unpacked; `wide` makes them large anyway.
    Family("perceiver", "configs/perceiver_mlm.py", perceiver_reference,
           {"perceiver/input_preprocessor/embeddings/embedding": P("tensor", "fsdp"),  # (vocab, embed)
            "perceiver/latents": P(None, "fsdp"),  # (latents, embed)
            "perceiver/encoder/cross_attention/query/kernel": P("fsdp", "tensor", None),  # (embed, heads, kv)
            "perceiver/encoder/self_attends/1/out/kernel": P("tensor", None, "fsdp"),  # (heads, kv, embed)
            "perceiver/encoder/self_attends/0/dense1/kernel": P("fsdp", "tensor"),  # (embed, mlp)
            "perceiver/decoder/decoding_cross_attention/key/kernel": P("fsdp", "tensor", None),
            "perceiver/decoder/output_position_encodings": P(None, "fsdp")},  # (positions, embed)
           ("model.num_latents=256", "model.d_latents=512", "model.d_model=256", "model.qk_channels=256",
            "model.v_channels=512", "model.max_position_embeddings=512"),
           foreign="t5",
           refusal=r"(?s)missing.*\n  perceiver/latents: from perceiver\.embeddings\.latents\n.*unexpected.*"
                   r"\n  shared\.weight(\n|$)",
           run=("train.batch_size=8", "data.sequence_length=64", "model.attention_probs_dropout_prob=0.1")),
]


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda family: family.name)
def family(request) -> Family:
    return request.param


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Callable[[str], Reference]:
    """Family name -> its Reference, each built once for the module."""
    built = {}

    def get(name: str) -> Reference:
        if name not in built:
            builder = next(f.reference for f in FAMILIES if f.name == name)
            built[name] = builder(tmp_path_factory.mktemp(f"reference_{name}") / "model")
        return built[name]
    return get


@pytest.fixture(scope="module")
def reference(family, references) -> Reference:
    return references(family.name)


@pytest.fixture(scope="module")
def model(family, reference):
    return registry.model_class(family.name).from_pretrained(reference.folder)


# ---------------------------------------------------------------------------------------------------------------
# The contract


def test_logits_match_the_pytorch_reference(model, reference):
    logits = model(**{k: jnp.asarray(v) for k, v in reference.inputs.items()}).logits
    assert logits.dtype == jnp.float32
    assert helpers.rel_err(logits, reference.logits) < 1e-4


def test_jitted_call_reads_packed_parameters_and_equals_the_eager_call(model, reference):
    inputs = {k: jnp.asarray(v) for k, v in reference.inputs.items()}
    forward = model.jitted()
    assert len(forward.args[0]) < len(jax.tree.leaves(nnx.state(model, nnx.Param)))  # the small leaves packed
    np.testing.assert_allclose(forward(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", [pytest.param(f, id=f.name) for f in FAMILIES if f.incremental], indirect=True)
def test_incremental_decoding_equals_the_full_pass(family, model, reference):
    full = model(**{k: jnp.asarray(v) for k, v in reference.inputs.items()}).logits
    np.testing.assert_allclose(family.incremental(model, reference), np.asarray(full), atol=1e-4, rtol=1e-4)


def test_pytorch_to_flax_to_pytorch_is_bit_identical(model, reference, tmp_path):
    model.save_pretrained(tmp_path, pytorch=True)
    helpers.assert_same_bits(helpers.folder_tensors(tmp_path), helpers.folder_tensors(reference.folder))


def test_save_and_load_round_trip_is_identical(family, model, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded = registry.model_class(family.name).from_pretrained(tmp_path)
    helpers.assert_same_bits(helpers.flax_params(reloaded), helpers.flax_params(model))
    without_dtype = lambda config: {k: v for k, v in config.to_dict().items() if k != "dtype"}  # recorded on save
    assert without_dtype(reloaded.config) == without_dtype(model.config)


def test_checkpoint_of_another_family_is_refused(family, references):
    with pytest.raises(ValueError, match=family.refusal):
        registry.model_class(family.name).from_pretrained(references(family.foreign).folder)


def test_sharded_init_follows_the_rules(family, tmp_path):
    overrides = [*family.data(tmp_path), *family.wide, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    config = config_lib.load_config(str(helpers.ROOT / family.config), overrides)
    setup = trainer.build(config, registry.task(family.name, config))
    params = setup.state.params
    large = tree.flatten(params["large"])
    for path, spec in family.layouts.items():
        assert large[path].sharding.spec == spec, path
        ways = math.prod(setup.mesh.shape[axis] for axis in spec if axis)  # each shard holds 1/ways of it
        assert large[path].addressable_shards[0].data.size * ways == large[path].size, path
    # The small leaves (norm scales, biases) are packed into replicated vectors (Adam), and the optimizer's moments
    # shaped as their parameter are laid out as it: Adam's (and LAMB's) two, or Adafactor's one second moment of a
    # parameter it does not factor (a factored one's row and column statistics have other shapes).
    assert all(vector.sharding.is_fully_replicated for vector in params["small"].values())
    moments_per_parameter = {"adamw": 2, "lamb": 2, "adafactor": 1}[config.optimizer.name]
    param_keys = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    moments = jax.tree_util.tree_leaves_with_path(setup.state.opt_state)
    followed = 0
    for key, leaf in param_keys.items():
        followers = [m for path, m in moments if jax.tree_util.keystr(path).endswith(key) and m.shape == leaf.shape]
        assert len(followers) in (0, moments_per_parameter), key  # 0: frozen, or factored
        assert all(m.sharding == leaf.sharding for m in followers), key
        followed += bool(followers)
    assert followed


# ---------------------------------------------------------------------------------------------------------------
# Kill and resume

STEPS, CHECKPOINT_EVERY = 12, 2


def train_args(family: Family, folder: Path) -> list[str]:
    overrides = [*family.data(folder), *family.run, f"train.num_steps={STEPS}",
                 f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1", "train.eval_every=0"]
    return [f"--config.{override}" for override in overrides]


def kill_after_first_checkpoint(process, workdir: Path):
    deadline = time.time() + 600
    while not helpers.finalized_steps(workdir):
        assert process.poll() is None and time.time() < deadline, helpers.stderr_of(process)[-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert STEPS not in helpers.finalized_steps(workdir), "the run finished before the kill: nothing was tested"


# Three training processes per family: T5's runs by default, every family's in CI (`-m "slow or not slow"`).
@pytest.mark.parametrize("family", helpers.slow_but(("t5",), FAMILIES, ids=lambda f: f.name))
def test_resume_after_sigkill_ends_as_an_uninterrupted_run(family, tmp_path):
    config, args = str(helpers.ROOT / family.config), train_args(family, tmp_path)
    export = lambda workdir: f"--config.train.export_dir={workdir / 'export'}"
    uninterrupted = helpers.run_train(tmp_path / "a", config, *args, export(tmp_path / "a"))
    killed = helpers.run_train(tmp_path / "b", config, *args, export(tmp_path / "b"))
    kill_after_first_checkpoint(killed, tmp_path / "b")
    resumed = helpers.run_train(tmp_path / "b", config, *args, export(tmp_path / "b"))
    for process in (uninterrupted, resumed):
        assert process.wait(timeout=600) == 0, helpers.stderr_of(process)[-3000:]
    assert "resumed from step" in helpers.stderr_of(resumed)
    assert helpers.read_metrics(tmp_path / "b") == helpers.read_metrics(tmp_path / "a")
    helpers.assert_same_bits(helpers.folder_tensors(tmp_path / "b" / "export"),
                             helpers.folder_tensors(tmp_path / "a" / "export"))
