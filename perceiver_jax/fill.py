"""Fill masked bytes with a Perceiver IO masked-LM, as deepmind/language-perceiver's model card does:

    python -m perceiver_jax.fill MODEL "This is an incomplete sentence where some words are missing." --span 52:61

The text is tokenized as `[CLS] bytes [SEP]`; the positions START:END of that sequence ([CLS] is position 0, so
52:61 are the text's bytes 51..59, " missing.") become [MASK], and the most likely byte at each is printed, decoded as
UTF-8. MODEL: a folder (transformers' or this project's) or a hub id.
"""
import argparse

import jax.numpy as jnp
import numpy as np

from perceiver_jax.modeling import PerceiverForMaskedLM
from perceiver_jax.tokenization import PerceiverTokenizer


def parse_span(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    try:
        return int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--span {text!r}: expected START:END, e.g. 52:61") from None


def fill(model: PerceiverForMaskedLM, text: str, span: tuple[int, int]) -> str:
    """The bytes the model predicts at the positions `span` of the tokenized text, masked, decoded as text."""
    tokenizer = PerceiverTokenizer(model_max_length=model.config.max_position_embeddings)
    ids = np.asarray(tokenizer.encode(text), np.int32)
    start, end = span
    if len(ids) > model.config.max_position_embeddings:
        raise ValueError(f"the text takes {len(ids)} positions with [CLS] and [SEP], more than the model's "
                         f"max_position_embeddings={model.config.max_position_embeddings}")
    if not 0 < start < end < len(ids):
        raise ValueError(f"span {start}:{end} is not inside the text's bytes: positions 1..{len(ids) - 2} "
                         f"([CLS] is 0, [SEP] {len(ids) - 1})")
    ids[start:end] = tokenizer.mask_token_id
    logits = model(inputs=jnp.asarray(ids[None]), attention_mask=jnp.ones((1, len(ids)), jnp.int32)).logits
    return tokenizer.decode(np.asarray(jnp.argmax(logits[0, start:end], -1)))


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="masked-LM folder or hub id")
    parser.add_argument("text")
    parser.add_argument("--span", type=parse_span, required=True, help="START:END positions to mask and predict")
    args = parser.parse_args(argv)
    try:
        predicted = fill(PerceiverForMaskedLM.from_pretrained(args.model), args.text, args.span)
    except ValueError as error:
        parser.error(str(error))
    print(predicted)
    return predicted


if __name__ == "__main__":
    main()
