"""LSG-BART (long-sequence BART with local, sparse and global attention) and plain BART in Flax NNX."""
from lsg_jax.configuration import SPARSITY_TYPES, LSGBartConfig
from lsg_jax.convert import bart_to_lsg
from lsg_jax.modeling import LSGBartForConditionalGeneration, LSGBartModel

__all__ = ["LSGBartConfig", "LSGBartForConditionalGeneration", "LSGBartModel", "SPARSITY_TYPES", "bart_to_lsg"]
