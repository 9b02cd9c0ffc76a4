"""LSG-BART (long-sequence BART with local, sparse and global attention) and plain BART in Flax NNX.

Exports are imported on first use, so `python -m convert --help` (lsg_jax.convert_cli) does not load JAX."""
from jaxport import lazy

_EXPORTS = {
    "LSGBartConfig": "lsg_jax.configuration",
    "SPARSITY_TYPES": "lsg_jax.configuration",
    "LSGBartForConditionalGeneration": "lsg_jax.modeling",
    "LSGBartModel": "lsg_jax.modeling",
    "bart_to_lsg": "lsg_jax.convert",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy.exports(__name__, _EXPORTS)
