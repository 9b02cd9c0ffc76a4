"""Backpack-GPT2 (Hewitt et al., ACL 2023) and plain GPT-2, its contextualization network, in Flax NNX."""
from backpack_jax.configuration import BackpackGPT2Config, GPT2Config
from backpack_jax.modeling import BackpackGPT2LMHeadModel, BackpackGPT2Model, GPT2LMHeadModel, GPT2Model

__all__ = ["BackpackGPT2Config", "BackpackGPT2LMHeadModel", "BackpackGPT2Model", "GPT2Config", "GPT2LMHeadModel",
           "GPT2Model"]
