"""T5 in Flax NNX, shared by the SIP and FLIPPED families."""
from t5_jax.configuration import T5Config
from t5_jax.modeling import T5ForConditionalGeneration

__all__ = ["T5Config", "T5ForConditionalGeneration"]
