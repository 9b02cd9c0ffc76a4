"""Backpack-GPT2 (Hewitt et al., ACL 2023) and plain GPT-2, its contextualization network, in Flax NNX.

Exports are imported on first use (jaxport.lazy), as the other families' are."""
from jaxport import lazy

_EXPORTS = {
    "BackpackGPT2Config": "backpack_jax.configuration",
    "GPT2Config": "backpack_jax.configuration",
    "BackpackGPT2LMHeadModel": "backpack_jax.modeling",
    "BackpackGPT2Model": "backpack_jax.modeling",
    "GPT2LMHeadModel": "backpack_jax.modeling",
    "GPT2Model": "backpack_jax.modeling",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy.exports(__name__, _EXPORTS)
