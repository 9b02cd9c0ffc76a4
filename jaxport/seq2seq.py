"""What every encoder-decoder family shares: the output types of a forward pass, the teacher-forcing shift and the
end-of-sequence cut of generated rows. (Attention masks: jaxport.layers; generation: jaxport.generation; the
training task: jaxport.tasks.)"""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -100  # PyTorch's cross-entropy ignore index, found in labels prepared by PyTorch code


@flax.struct.dataclass
class Seq2SeqModelOutput:
    """An encoder-decoder without its language-model head: decoder and encoder states."""
    last_hidden_state: jax.Array  # [B, T, D]
    encoder_last_hidden_state: jax.Array  # [B, S, D]


@flax.struct.dataclass
class Seq2SeqLMOutput:
    """An encoder-decoder with its language-model head."""
    logits: jax.Array  # [B, T, V], float32
    encoder_last_hidden_state: jax.Array  # [B, S, D]


def shift_right(ids, start_id: int, pad_id: int):
    """Teacher-forcing decoder inputs from targets [..., T]: `start_id`, then the targets without their last token;
    IGNORE_INDEX becomes `pad_id`. A numpy array in (the data pipeline, per example) gives a numpy array out,
    anything else a jax.Array."""
    xp = np if isinstance(ids, np.ndarray) else jnp
    ids = xp.asarray(ids)
    shifted = xp.concatenate([xp.full_like(ids[..., :1], start_id), ids[..., :-1]], axis=-1)
    return xp.where(shifted == IGNORE_INDEX, xp.asarray(pad_id, ids.dtype), shifted)


def cut_at_eos(ids, eos_id: int | None) -> list[int]:
    """A generated row's tokens through its first `eos_id` (what follows is padding), or all of them when there is
    none or eos_id is None. The eos stays: it is a generated token (a generation length counts it, as transformers'
    gen_len does), and a tokenizer's `decode` leaves special tokens out of the text anyway."""
    ids = [int(i) for i in ids]
    return ids[:ids.index(eos_id) + 1] if eos_id is not None and eos_id in ids else ids
