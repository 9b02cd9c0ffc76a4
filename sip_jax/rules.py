"""SIP's rule tables: the original's PyTorch state-dict keys <-> the Flax models' parameter paths.

The original's Hub models wrap transformers' T5ForConditionalGeneration as `self.model`, so every T5 key gets
the prefix `model.` (sip/fst_pretrain.py:177, sip/embed_finetune.py:201); the SIP parts sit at the top level:

  sip_pretrain (fst_pretrain.py:179-189)          sip_finetune (embed_finetune.py:204, 212)
    state_embeddings.weight      [num_states, S]    prefix_init_tensor  [num_precomputed_examples,
    token_embeddings.weight      [vocab, T]                              prefix_max_init_length, d_model]
    final_state_embedding.weight [3, F]             prefix_embedding    [1, prefix_length, d_model]
    input_layer.weight/.bias     (no MLP), or
    down_project.weight/.bias, output_layer.weight/.bias (mlp_hidden_dim set)

The Flax models keep the T5 under `model/` too, so `model.X` <-> `model/Y` whenever T5's own table maps X <-> Y.
A module of its own so that the models (sip_jax.modeling) and the pre-training -> fine-tuning conversion
(sip_jax.convert, which builds models) both import it without importing each other.
"""
import dataclasses
from typing import Sequence

from jaxport.convert import Alias, Entry, Ignore, Rule, linear_kernel
from t5_jax.convert import t5_rules

T5_PYTORCH_PREFIX = "model."
T5_FLAX_PREFIX = "model/"


def prefixed(entries: Sequence[Entry], pytorch_prefix: str, flax_prefix: str) -> list[Entry]:
    """A rule table for the same weights held one module deeper on both sides."""
    out: list[Entry] = []
    for entry in entries:
        if isinstance(entry, Rule):
            out.append(dataclasses.replace(entry, pytorch=pytorch_prefix + entry.pytorch,
                                           flax=flax_prefix + entry.flax))
        elif isinstance(entry, Alias):
            out.append(dataclasses.replace(entry, pytorch=pytorch_prefix + entry.pytorch,
                                           canonical=pytorch_prefix + entry.canonical))
        elif isinstance(entry, Ignore):
            out.append(dataclasses.replace(entry, pytorch=pytorch_prefix + entry.pytorch))
        else:
            raise TypeError(f"unknown rule table entry {entry!r}")
    return out


def _linear(pytorch: str, flax: str) -> list[Rule]:
    return [Rule(f"{pytorch}.weight", f"{flax}/kernel", linear_kernel(input_axes=1)),
            Rule(f"{pytorch}.bias", f"{flax}/bias")]


def sip_pretrain_rules(config) -> list[Entry]:
    rules = prefixed(t5_rules(config), T5_PYTORCH_PREFIX, T5_FLAX_PREFIX)
    rules += [
        Rule("state_embeddings.weight", "fst_encoder/state_embeddings/embedding"),
        Rule("token_embeddings.weight", "fst_encoder/token_embeddings/embedding"),
        Rule("final_state_embedding.weight", "fst_encoder/final_state_embedding/embedding"),
    ]
    if config.mlp_hidden_dim is None:
        rules += _linear("input_layer", "fst_encoder/input_layer")
    else:
        rules += _linear("down_project", "fst_encoder/down_project")
        rules += _linear("output_layer", "fst_encoder/output_layer")
    return rules


def sip_finetune_rules(config) -> list[Entry]:
    return prefixed(t5_rules(config), T5_PYTORCH_PREFIX, T5_FLAX_PREFIX) + [
        Rule("prefix_embedding", "prefix_embedding"),
        Rule("prefix_init_tensor", "prefix_init_tensor"),
    ]
