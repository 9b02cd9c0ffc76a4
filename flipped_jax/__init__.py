"""FLIPPED (Ye et al., ICLR 2023, "Guess the Instruction! Flipped Learning Makes Language Models Stronger Zero-Shot
Learners"): a T5 trained to generate the task instruction from the input and its label, in JAX.

    from flipped_jax import FlippedModel, flipped_loss, score_options
    model = FlippedModel.from_pretrained("seonghyeonye/flipped_3B")   # a transformers T5 folder or hub id
    scores, predictions = score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask)
    loss = flipped_loss(logits_gold, logits_wrong, instruction_ids, instruction_mask)

Exports are imported on first use, so `import flipped_jax.templates` does not load the model.
"""
from jaxport import lazy

_EXPORTS = {
    "FlippedModel": "flipped_jax.modeling",
    "flipped_loss": "flipped_jax.losses",
    "score_options": "flipped_jax.scoring",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy.exports(__name__, _EXPORTS)
