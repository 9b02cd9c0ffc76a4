"""Turns a raw example into fixed-length encoder-decoder arrays (static shapes for jit)."""
import dataclasses

import numpy as np

from jaxport.seq2seq import shift_right


@dataclasses.dataclass(frozen=True)
class Seq2SeqPreprocessor:
    """`example -> {input_ids, attention_mask, labels, decoder_input_ids, decoder_attention_mask}`.

    All int32 and padded with the tokenizer's pad id. `labels` are the target ids (ending in eos);
    `decoder_input_ids` are the labels shifted right behind `decoder_start_token_id`. The masks come
    from the true lengths, not from `ids != pad`, because the decoder start id may equal pad (T5).
    A text longer than its limit is an error unless `truncate` is set.
    """

    tokenizer: object
    max_input_length: int
    max_target_length: int
    input_key: str = "inputs"
    target_key: str = "targets"
    truncate: bool = False
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.tokenizer.pad_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")

    def __call__(self, example: dict) -> dict[str, np.ndarray]:
        input_ids, input_length = self._encode(example, self.input_key, self.max_input_length)
        labels, target_length = self._encode(example, self.target_key, self.max_target_length)
        decoder_input_ids = shift_right(labels, self.decoder_start_token_id, self.tokenizer.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": _length_mask(input_length, self.max_input_length),
            "labels": labels,
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": _length_mask(target_length, self.max_target_length),
        }

    def _encode(self, example: dict, key: str, max_length: int) -> tuple[np.ndarray, int]:
        ids = self.tokenizer.encode(example[key], max_length if self.truncate else None)
        if len(ids) > max_length:
            raise ValueError(f"{key!r} is {len(ids)} tokens long, more than the limit of {max_length} "
                             "(raise the limit or pass truncate=True)")
        padded = np.full(max_length, self.tokenizer.pad_id, np.int32)
        padded[:len(ids)] = ids
        return padded, len(ids)


def _length_mask(length: int, max_length: int) -> np.ndarray:
    return (np.arange(max_length) < length).astype(np.int32)
