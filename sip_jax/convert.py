"""SIP pre-training model -> fine-tuning model: the same T5, and `prefix_init_tensor` holding the FST encoder's
output on padded FSTs, from which the fine-tuning model initialises its prefix (the original's recipe:
sip/embed_finetune.py:19-50 and 175-223). The command line:

    python -m convert sip_finetune SRC DST --from-pretraining [--to-pytorch] [--num-precomputed-examples 400]
        [--fst-seed 0] [--fst-config configs/sip_pretrain.py:small]

(The rule tables between the original's PyTorch keys and the Flax paths are in sip_jax.rules.)
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sip_jax.configuration import finetuning_config_from_pretraining
from sip_jax.fst import FSTPretrainingSource, encode_transitions
from sip_jax.fst_data import load_fst_tokenizer
from sip_jax.modeling import SIPFinetuningModel, SIPPreTrainingModel, check_fst_rep_values


def pad_fst_reps(fst_reps: Sequence, num_states: int, max_len: int | None = None) -> np.ndarray:
    """Stack transition id arrays [n_i, 4 or 5] into [N, max_len, width] as the original's `batch_fsts`
    (sip/data_loading.py:81-93): padding transitions have the padding state `num_states - 1` on both ends,
    symbol id 0 ([PAD] of the FST tokenizer) and flag 0; FSTs longer than `max_len` are cut."""
    reps = [np.asarray(rep, np.int64) for rep in fst_reps]
    if not reps:
        raise ValueError("no FSTs to pad")
    for index, rep in enumerate(reps):
        if rep.ndim != 2 or rep.shape[1] not in (4, 5) or rep.shape[1] != reps[0].shape[1]:
            raise ValueError(f"FST {index}: transition array of shape {rep.shape}; expected [transitions, 4 or 5] "
                             "(from state, input symbol, output symbol, to state[, is final]), one width for all")
    width = reps[0].shape[1]
    length = max(len(rep) for rep in reps) if max_len is None else max_len
    out = np.zeros((len(reps), length, width), np.int32)
    out[:, :, 0] = num_states - 1
    out[:, :, 3] = num_states - 1
    for i, rep in enumerate(reps):
        rep = rep[:length]
        out[i, :len(rep)] = rep
    return out


def compute_prefix_init_tensor(model, fst_reps: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """Encode padded FSTs [N, L, 4 or 5] with a pre-training model's FST encoder (no dropout), as the original
    does to initialise the prefix (sip/embed_finetune.py:39-45): [N, L, d_model] float32."""
    check_fst_rep_values(fst_reps, model.config)
    encode = jax.jit(lambda encoder, reps: encoder(reps))
    chunks = [np.asarray(encode(model.fst_encoder, fst_reps[start:start + batch_size]), np.float32)
              for start in range(0, len(fst_reps), batch_size)]
    return np.concatenate(chunks, axis=0)


def sample_fst_reps(num: int, *, num_states: int, seed: int = 0, fst_tokenizer_path=None,
                    sampler=None) -> list[np.ndarray]:
    """`num` random FSTs drawn by the FST generator (sip_jax.fst.FSTPretrainingSource; `sampler`: its
    SamplerConfig, default the original's), each as the id array [transitions, 5] of the original's
    `fst_to_vector` (through the FST tokenizer)."""
    tokenizer = load_fst_tokenizer(fst_tokenizer_path)
    source = FSTPretrainingSource(seed=seed, **({"sampler": sampler} if sampler is not None else {}))
    return [encode_transitions(source[i]["FST"], tokenizer, num_states) for i in range(num)]


def finetuning_from_pretraining(model, fst_reps=None, *, num_examples: int = 32, prefix_length: int = 50,
                                random_selection: bool = True, prefix_max_init_length: int = 70,
                                num_precomputed_examples: int = 400, seed: int = 0, batch_size: int = 50,
                                initialize_prefix: bool = False, prefix_init_rng=None, fst_tokenizer_path=None,
                                sampler=None):
    """A SIPFinetuningModel from a SIPPreTrainingModel: the same T5 weights, and `prefix_init_tensor` holding the
    FST encoder's output for `num_precomputed_examples` FSTs padded or cut to `prefix_max_init_length`
    transitions (the original's recipe: sip/embed_finetune.py:19-50 and 175-223).

    `fst_reps`: the FSTs, as id arrays [n_i, 4 or 5] (or already padded [N, L, W]); None samples random ones
    from the FST generator with `seed` (and `sampler`, a SamplerConfig: by default the original's). The prefix is
    left NaN, as on the Hub, so that from_pretrained initialises it (with the loader's selection settings);
    `initialize_prefix=True` sets it now instead.
    """
    pre_config = model.config
    config = finetuning_config_from_pretraining(
        pre_config, num_examples=num_examples, prefix_length=prefix_length, random_selection=random_selection,
        prefix_max_init_length=prefix_max_init_length, num_precomputed_examples=num_precomputed_examples)
    if fst_reps is None:
        fst_reps = sample_fst_reps(num_precomputed_examples, seed=seed, num_states=pre_config.num_states,
                                   fst_tokenizer_path=fst_tokenizer_path, sampler=sampler)
    padded = pad_fst_reps(list(fst_reps), pre_config.num_states, prefix_max_init_length)
    if len(padded) != num_precomputed_examples:
        raise ValueError(f"{len(padded)} FSTs given for num_precomputed_examples={num_precomputed_examples}")
    init_tensor = compute_prefix_init_tensor(model, padded, batch_size)

    t5_state = nnx.state(model.model, nnx.Param)
    param_dtype = jax.tree.leaves(t5_state)[0].dtype
    finetuning = nnx.eval_shape(lambda: SIPFinetuningModel(config, dtype=model.dtype, param_dtype=param_dtype,
                                                           rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(finetuning)
    pure = nnx.to_pure_dict(state)
    pure["model"] = nnx.to_pure_dict(t5_state)
    pure["prefix_init_tensor"] = jnp.asarray(init_tensor, param_dtype)
    pure["prefix_embedding"] = jnp.full(pure["prefix_embedding"].shape, jnp.nan, param_dtype)
    nnx.replace_by_pure_dict(state, pure)
    finetuning = nnx.merge(graphdef, state)
    if initialize_prefix:
        finetuning.initialize_prefix(jax.random.key(seed) if prefix_init_rng is None else prefix_init_rng)
    return finetuning


def convert_pretraining_folder(src, dst, *, pytorch: bool = False, num_precomputed_examples: int = 400,
                               prefix_max_init_length: int = 70, num_examples: int = 32, prefix_length: int = 50,
                               random_selection: bool = True, seed: int = 0, fst_reps=None, dtype=None,
                               fst_tokenizer_path=None, sampler=None, max_shard_size=None):
    """Read a sip_pretrain folder (PyTorch or Flax weights), write a sip_finetune folder (Flax weights, or with
    `pytorch=True` the original's key names)."""
    dtype = jnp.float32 if dtype is None else dtype
    model = SIPPreTrainingModel.from_pretrained(src, dtype=dtype, param_dtype=dtype)
    finetuning = finetuning_from_pretraining(
        model, fst_reps, num_examples=num_examples, prefix_length=prefix_length, random_selection=random_selection,
        prefix_max_init_length=prefix_max_init_length, num_precomputed_examples=num_precomputed_examples, seed=seed,
        fst_tokenizer_path=fst_tokenizer_path, sampler=sampler)
    finetuning.save_pretrained(dst, pytorch=pytorch, max_shard_size=max_shard_size)
    return finetuning
