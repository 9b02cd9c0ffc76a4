"""SIP (Lindemann, Koller, Titov, ACL 2024): FST-simulation pre-training of a ByT5 model, in JAX.

    from sip_jax import SIPFinetuningModel, SIPPreTrainingModel
    model = SIPFinetuningModel.from_pretrained("namednil/sip-d4")      # prefix initialised from its stored encodings
    seq = model.generate(ids, attention_mask=mask, max_new_tokens=64).sequences
    pre = SIPPreTrainingModel.from_pretrained("path/to/sip_pretrain")  # FST encoder + T5
    out = pre(ids, mask, decoder_input_ids=dec, fst_rep=transitions)   # transitions [B, T, 5] ids

Exports are imported on first use, so `import sip_jax.fst` (the data generator) does not load the models.
"""
from jaxport import lazy

_EXPORTS = {
    "SIPPreTrainingConfig": "sip_jax.configuration",
    "SIPFinetuningConfig": "sip_jax.configuration",
    "SIPPreTrainingModel": "sip_jax.modeling",
    "SIPFinetuningModel": "sip_jax.modeling",
    "finetuning_from_pretraining": "sip_jax.convert",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy.exports(__name__, _EXPORTS)
