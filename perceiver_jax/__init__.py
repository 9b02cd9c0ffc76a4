"""Perceiver IO for text (deepmind/language-perceiver): masked byte prediction and sequence classification."""
from perceiver_jax.configuration import PerceiverConfig
from perceiver_jax.modeling import PerceiverForMaskedLM, PerceiverForSequenceClassification
from perceiver_jax.tokenization import PerceiverTokenizer

__all__ = ["PerceiverConfig", "PerceiverForMaskedLM", "PerceiverForSequenceClassification", "PerceiverTokenizer"]
