"""FST transitions to model inputs: id arrays through SIP's character-level FST tokenizer.

The original reads a transition list into an int array of shape (transitions, 5): from-state id,
token id of the input symbol, token id of the output symbol, to-state id, final flag
(sip/data_loading.py:56-79 in namednil/sip), and pads a batch with the last state id
`num_states - 1` and zeros (sip/data_loading.py:81-93). The last state id is never a real state.
"""
import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from sip_jax.fst.settings import NUM_STATES, SPECIAL_SYMBOLS, SYMBOL_EPSILON, VOCAB
from sip_jax.fst.transitions import check_transitions, describe_transition


class FSTTokenizer:
    """The word-level tokenizer over single characters that SIP uses for FST symbols.

    Reads a `tokenizers` JSON file (e.g. `unicode_char_tokenizer_ipa.json`, 308 entries: a Split
    pre-tokenizer that isolates every character and a WordLevel vocabulary) without needing the
    `tokenizers` package; a symbol maps to its vocabulary id. The file names no usable unknown
    token, so an unknown symbol is an error (as it is in the original, from inside `tokenizers`).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, vocab: dict[str, int] | None = None):
        if vocab is not None:  # built in memory (see `builtin`), no file
            self.path, self.vocab = "<builtin>", dict(vocab)
            self.pad_id, self.vocab_size = self.vocab["[PAD]"], len(self.vocab)
            return
        self.path = os.fspath(path)
        try:
            with open(self.path, encoding="utf-8") as file:
                spec = json.load(file)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the FST tokenizer {self.path}: {error}") from None
        model = spec.get("model") if isinstance(spec, dict) else None
        if not isinstance(model, dict) or model.get("type") != "WordLevel" or not isinstance(model.get("vocab"), dict):
            raise ValueError(f"{self.path} is not a word-level tokenizer file (need model.type 'WordLevel' "
                             "with a vocab)")
        self.vocab: dict[str, int] = dict(model["vocab"])
        for token in spec.get("added_tokens") or ():
            self.vocab.setdefault(token["content"], token["id"])
        self.pad_id = self.vocab.get("[PAD]", 0)
        self.vocab_size = len(self.vocab)

    @classmethod
    def builtin(cls) -> "FSTTokenizer":
        """A tokenizer covering every symbol the generator can write with its default vocabulary, for models
        trained from scratch here: [PAD], the special-arc and epsilon codes, the vocabulary (printable ASCII and
        IPA) and the case-mapped forms special arcs write. Its ids differ from the original's file, so models
        pre-trained with one cannot read FSTs encoded with the other."""
        symbols = [chr(code) for code in (*SPECIAL_SYMBOLS, SYMBOL_EPSILON)] + list(VOCAB)
        symbols += sorted({mapped for char in VOCAB for mapped in (char.upper(), char.lower())
                           if len(mapped) == 1 and mapped not in symbols})
        return cls(vocab={"[PAD]": 0, **{symbol: index for index, symbol in enumerate(symbols, 1)}})

    def token_id(self, symbol: str) -> int:
        token = self.vocab.get(symbol) if isinstance(symbol, str) and len(symbol) == 1 else None
        if token is None:
            shown = f"{symbol!r} (U+{ord(symbol):04X})" if isinstance(symbol, str) and len(symbol) == 1 \
                else repr(symbol)
            raise ValueError(f"symbol {shown} is not in the FST tokenizer {self.path}")
        return token

    def __repr__(self) -> str:
        return f"FSTTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def encode_transitions(transitions: Sequence[Sequence], tokenizer: FSTTokenizer,
                       num_states: int = NUM_STATES) -> np.ndarray:
    """int32 array (len(transitions), width): states, symbol token ids, states, [final flag].

    Every error names the transition: a width other than 4 or 5 (or mixed widths), a state id that
    needs more than `num_states` state embeddings (ids 0..num_states-2; num_states-1 is padding,
    as in sip/data_loading.py:62-63), a symbol the tokenizer does not have.
    """
    if num_states < 2:
        raise ValueError(f"num_states must be at least 2 (one real state and the padding state), got {num_states}")
    checked = check_transitions(transitions)
    if not checked:
        raise ValueError("the FST has no transitions")
    encoded = np.zeros((len(checked), len(checked[0])), np.int32)
    for index, transition in enumerate(checked):
        for position in (0, 3):
            if transition[position] >= num_states - 1:
                raise ValueError(
                    f"{describe_transition(index, transition)}: state {transition[position]} means the FST has more "
                    f"states than num_states={num_states} allows ({num_states - 1}: ids 0..{num_states - 2}; "
                    f"id {num_states - 1} is the padding state)")
        try:
            symbols = [tokenizer.token_id(transition[1]), tokenizer.token_id(transition[2])]
        except ValueError as error:
            raise ValueError(f"{describe_transition(index, transition)}: {error}") from None
        encoded[index, :4] = (transition[0], *symbols, transition[3])
        if len(transition) == 5:
            encoded[index, 4] = transition[4]
    return encoded


def pad_transitions(encoded: np.ndarray, max_transitions: int, num_states: int = NUM_STATES) -> np.ndarray:
    """Pads encoded transitions to `max_transitions` rows as the original's `batch_fsts` does.

    Padding rows have the padding state `num_states - 1` in both state columns and 0 elsewhere.
    More rows than `max_transitions` is an error (the original silently cut them).
    """
    if len(encoded) > max_transitions:
        raise ValueError(f"the FST has {len(encoded)} transitions, more than max_transitions={max_transitions}")
    padded = np.zeros((max_transitions, encoded.shape[1]), np.int32)
    padded[:, 0] = padded[:, 3] = num_states - 1
    padded[:len(encoded)] = encoded
    return padded


@dataclasses.dataclass(frozen=True)
class FSTSeq2SeqPreprocessor:
    """`example -> Seq2SeqPreprocessor arrays + "fst_rep"` (max_transitions, 5), for the batch iterator.

    `tokenizer` encodes the strings (ByT5 bytes for SIP: jaxport.data.ByteTokenizer); the FST goes
    through `fst_tokenizer`. Fixed shapes throughout, for jit. With the default sampler and ByT5 bytes,
    `max_input_length=71` and `max_target_length=106` hold every example: 35 letters of at most 2
    UTF-8 bytes in, at most 3 out (upper-cased IPA such as U+2C6F), plus eos.
    """

    tokenizer: object
    fst_tokenizer: FSTTokenizer
    max_input_length: int
    max_target_length: int
    num_states: int = NUM_STATES
    max_transitions: int = 100  # SamplerConfig().max_transitions: 4 states x 25 letters
    input_key: str = "input"
    target_key: str = "output"
    fst_key: str = "FST"
    truncate: bool = False
    decoder_start_token_id: int = 0

    def __call__(self, example: dict) -> dict[str, np.ndarray]:
        from jaxport.data.seq2seq import Seq2SeqPreprocessor

        arrays = Seq2SeqPreprocessor(self.tokenizer, self.max_input_length, self.max_target_length,
                                     input_key=self.input_key, target_key=self.target_key,
                                     truncate=self.truncate,
                                     decoder_start_token_id=self.decoder_start_token_id)(example)
        encoded = encode_transitions(example[self.fst_key], self.fst_tokenizer, self.num_states)
        arrays["fst_rep"] = pad_transitions(encoded, self.max_transitions, self.num_states)
        return arrays
