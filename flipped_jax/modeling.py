"""FLIPPED's model: a T5 (the released checkpoints seonghyeonye/flipped_3B and flipped_11B are transformers'
T5ForConditionalGeneration, T5 v1.1 LM-adapted: gated-gelu, untied head), loaded from a transformers T5 folder.

What makes FLIPPED is how the T5 is trained and used (Ye et al., ICLR 2023): given the task input and a label it
generates the task instruction (flipped_jax.losses), and a zero-shot prediction is the label option under which
the instruction is most likely (flipped_jax.scoring).
"""
from t5_jax.modeling import T5ForConditionalGeneration


class FlippedModel(T5ForConditionalGeneration):
    """t5_jax's T5ForConditionalGeneration under FLIPPED's name: same weights, conversion rules and generation.
    A checkpoint that is not a T5 is refused by the conversion, whose error lists every key that does not fit."""
