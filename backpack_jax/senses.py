"""Reading and editing a Backpack's senses (Hewitt et al., "Backpack Language Models", sections 5 and 6).

    python -m backpack_jax.senses MODEL WORD [WORD...] [--top-k 5]            # the paper's sense tables
    python -m backpack_jax.senses MODEL --sentence "The bank by the river" --heatmap weights.png
    python -m backpack_jax.senses MODEL --prompt "The nurse said that" --scale nurse:3:0    # an intervention

A Backpack predicts the next token from a weighted sum of the sense vectors of the tokens so far (logits = E @ sum
over senses l and positions j of alpha[l, i, j] * sense_l(x_j)); each sense vector lies in the output space, so
`E @ sense` scores every vocabulary token, and the top and bottom tokens of that score say what the sense means
(sense_tables). The contextualization weights alpha say how much each position draws on each sense of each earlier
word (contextualization, heatmap_png). Scaling alpha[l, :, j] for the positions j of chosen words scales what sense l
of those words contributes: the paper's interventions (e.g. turning down the gender-carrying sense of career words),
shown as the next-token distribution before and after (intervene, next_token_probabilities).

MODEL is a BackpackGPT2LMHeadModel folder or hub id; the tokenizer comes from that folder when it has one, else from
--tokenizer (default "gpt2", the authors' tokenizer). A WORD is tokenised as it reads inside a sentence (with a
leading space, --no-space to leave it out); a word of several tokens gets one table per token.
"""
import argparse
import dataclasses
import struct
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxport import data
from jaxport.hf import resolve_folder
from jaxport.layers import float32_matmuls

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


# ---------------------------------------------------------------------------------------------------------------
# Sense tables


@dataclasses.dataclass(frozen=True)
class SenseTable:
    """What each sense of one token scores highest and lowest through the output embedding."""
    token_id: int
    token: str
    top: list[list[tuple[str, float]]]  # per sense: the top-k (token, score), best first
    bottom: list[list[tuple[str, float]]]  # per sense: the bottom-k (token, score), lowest first

    def format(self) -> str:
        width = max([len(repr(t)) for rows in (self.top, self.bottom) for row in rows for t, _ in row] + [8])
        lines = [f"senses of {self.token!r} (token {self.token_id})"]
        for sense, (top, bottom) in enumerate(zip(self.top, self.bottom, strict=True)):
            lines.append(f"  sense {sense:2d}  top:    " + "  ".join(f"{t!r:<{width}}" for t, _ in top))
            lines.append("            bottom: " + "  ".join(f"{t!r:<{width}}" for t, _ in bottom))
        return "\n".join(lines)


def sense_logits(model, token_ids) -> np.ndarray:
    """float32 [len(token_ids), num_senses, vocab]: each sense of each token projected through the output
    embedding."""
    senses = model.senses(jnp.asarray(token_ids, jnp.int32)[None])[0]  # [senses, T, d]
    return np.asarray(_output_embedding(model, senses.transpose(1, 0, 2)), np.float32)


_output_embedding = float32_matmuls(lambda model, vectors: model.lm_logits(vectors))


def sense_tables(model, tokenizer, token_ids, k: int = 5) -> list[SenseTable]:
    """One SenseTable per token id: the k vocabulary tokens each sense scores highest and lowest (ids beyond the
    tokenizer's vocabulary, the padding of the embedding, are left out)."""
    logits = sense_logits(model, token_ids)[..., :tokenizer.vocab_size]
    tables = []
    for token_id, per_sense in zip(token_ids, logits, strict=True):
        order = np.argsort(-per_sense, axis=-1, kind="stable")
        words = lambda ids, row: [(token_text(tokenizer, i), float(row[i])) for i in ids]
        tables.append(SenseTable(int(token_id), token_text(tokenizer, token_id),
                                 [words(o[:k], row) for o, row in zip(order, per_sense, strict=True)],
                                 [words(o[::-1][:k], row) for o, row in zip(order, per_sense, strict=True)]))
    return tables


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


def word_ids(tokenizer, word: str, leading_space: bool = True) -> list[int]:
    """The tokens of `word` as it reads inside a sentence (after a space) or, leading_space=False, on its own."""
    ids = tokenizer.encode_batch([(" " if leading_space else "") + word])[0]
    if len(ids) == 0:
        raise ValueError(f"{word!r} gives no tokens")
    return [int(i) for i in ids]


# ---------------------------------------------------------------------------------------------------------------
# Contextualization weights and interventions


def contextualization(model, input_ids) -> np.ndarray:
    """float32 [B, num_senses, T, T]: alpha[b, l, i, j], how much position i draws on sense l of position j."""
    return np.asarray(model(jnp.asarray(input_ids, jnp.int32)).contextualization)


def scaled_contextualization(weights, input_ids, token_ids, sense: int, factor: float) -> np.ndarray:
    """`weights` [B, senses, T, T] with alpha[:, sense, :, j] times `factor` at every position j holding one of
    `token_ids`: sense `sense` of those tokens then counts `factor` times as much everywhere after them."""
    weights = np.array(weights, np.float32)
    if not 0 <= sense < weights.shape[1]:
        raise ValueError(f"sense {sense} does not exist: the model has senses 0..{weights.shape[1] - 1}")
    at = np.isin(np.asarray(input_ids), list(token_ids))  # [B, T]
    weights[:, sense] *= np.where(at[:, None, :], np.float32(factor), np.float32(1))
    return weights


def next_token_probabilities(model, input_ids, weights=None) -> np.ndarray:
    """float32 [B, vocab]: the distribution of the token after the last, under the model's own contextualization or,
    given `weights`, under those (used as given: model.run_with_custom_contextualization)."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if weights is None:
        logits = model(input_ids).logits
    else:
        logits = model.run_with_custom_contextualization(input_ids, jnp.asarray(weights)).logits
    return np.asarray(jax.nn.softmax(logits[:, -1].astype(jnp.float32), axis=-1))


@dataclasses.dataclass(frozen=True)
class Scaling:
    """Sense `sense` of the tokens of `word` times `factor`."""
    word: str
    sense: int
    factor: float

    @classmethod
    def parse(cls, text: str) -> "Scaling":
        word, sense, factor = text.rsplit(":", 2)
        return cls(word, int(sense), float(factor))


def intervene(model, tokenizer, prompt: str, scalings, top: int = 10, leading_space: bool = True) -> dict:
    """The next-token distribution after `prompt`, before and after scaling each of `scalings` (Scaling) in the
    contextualization: {"before": [(token, p)], "after": [(token, p)], "scalings": ...}, the `top` most likely
    tokens of each, and the probability each one has under the other distribution ("changed")."""
    input_ids = np.asarray([tokenizer.encode_batch([prompt])[0]], np.int32)
    weights = contextualization(model, input_ids)
    for scaling in scalings:
        weights = scaled_contextualization(weights, input_ids, word_ids(tokenizer, scaling.word, leading_space),
                                           scaling.sense, scaling.factor)
    before = next_token_probabilities(model, input_ids)[0, :tokenizer.vocab_size]
    after = next_token_probabilities(model, input_ids, weights)[0, :tokenizer.vocab_size]
    listed = lambda p: [(token_text(tokenizer, i), float(p[i])) for i in np.argsort(-p, kind="stable")[:top]]
    shown = sorted(set(np.argsort(-before)[:top]) | set(np.argsort(-after)[:top]), key=lambda i: -before[i])
    return {"before": listed(before), "after": listed(after),
            "changed": [(token_text(tokenizer, i), float(before[i]), float(after[i])) for i in shown],
            "scalings": [dataclasses.asdict(s) for s in scalings]}


# ---------------------------------------------------------------------------------------------------------------
# Heat map


def heatmap_png(weights, path, cell: int = 12, columns: int = 4) -> Path:
    """Write contextualization weights [num_senses, T, T] as one PNG: a panel per sense (left to right, then down),
    row i of a panel the predicting position, column j the earlier position whose sense it weighs; white is 0 and
    the darkest blue each panel's largest weight. Pure numpy and zlib."""
    weights = np.asarray(weights, np.float32)
    senses, length, _ = weights.shape
    rows = -(-senses // columns)
    gap, size = cell, length * cell
    image = np.full((rows * (size + gap) + gap, min(senses, columns) * (size + gap) + gap, 3), 255, np.uint8)
    for sense in range(senses):
        panel = weights[sense] / max(float(weights[sense].max()), 1e-12)
        shade = np.kron(np.clip(panel, 0, 1), np.ones((cell, cell), np.float32))[..., None]
        colored = (255 - shade * np.array([225, 170, 80], np.float32)).astype(np.uint8)  # white -> dark blue
        top, left = gap + (sense // columns) * (size + gap), gap + (sense % columns) * (size + gap)
        image[top:top + size, left:left + size] = colored
    return write_png(path, image)


def write_png(path, image: np.ndarray) -> Path:
    """An RGB uint8 image [H, W, 3] as a PNG file."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))  # filter type 0 on every row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Command line


def load_tokenizer_for(model_path: str, tokenizer: str | None):
    """--tokenizer if given; else the model folder's tokenizer if it has one; else GPT-2's."""
    if tokenizer:
        return data.load_tokenizer(tokenizer)
    folder = resolve_folder(model_path)
    return data.load_tokenizer(str(folder) if any((folder / f).exists() for f in TOKENIZER_FILES) else "gpt2")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m backpack_jax.senses", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="BackpackGPT2LMHeadModel folder or hub id")
    parser.add_argument("words", nargs="*", help="words whose senses to show")
    parser.add_argument("--tokenizer", help="folder, hub id or 'bytes' (default: the model folder's, else gpt2)")
    parser.add_argument("--top-k", type=int, default=5, help="tokens shown at each end of a sense (default 5)")
    parser.add_argument("--no-space", action="store_true", help="tokenize words without a leading space")
    parser.add_argument("--sentence", help="a sentence whose contextualization weights to draw (with --heatmap)")
    parser.add_argument("--heatmap", help="PNG file for the weights of --sentence, a panel per sense")
    parser.add_argument("--prompt", help="text whose next-token distribution to show before and after --scale")
    parser.add_argument("--scale", action="append", default=[], metavar="WORD:SENSE:FACTOR",
                        help="scale sense SENSE of WORD by FACTOR (0 removes it); repeatable")
    args = parser.parse_args(argv)
    if bool(args.sentence) != bool(args.heatmap):
        parser.error("--sentence and --heatmap go together")
    if args.scale and not args.prompt:
        parser.error("--scale needs --prompt")
    if not (args.words or args.sentence or args.prompt):
        parser.error("nothing to show: give WORDs, --sentence with --heatmap, or --prompt")
    from backpack_jax.modeling import BackpackGPT2LMHeadModel  # the model only once the arguments are good

    model = BackpackGPT2LMHeadModel.from_pretrained(args.model)
    tokenizer = load_tokenizer_for(args.model, args.tokenizer)
    result = {}
    for word in args.words:
        tables = sense_tables(model, tokenizer, word_ids(tokenizer, word, not args.no_space), args.top_k)
        result.setdefault("senses", {})[word] = tables
        print("\n".join(table.format() for table in tables), end="\n\n")
    if args.sentence:
        ids = np.asarray([tokenizer.encode_batch([args.sentence])[0]], np.int32)
        path = heatmap_png(contextualization(model, ids)[0], args.heatmap)
        tokens = [token_text(tokenizer, i) for i in ids[0]]
        result["heatmap"] = {"path": str(path), "tokens": tokens}
        print(f"wrote {path}: a panel per sense, rows and columns the tokens {tokens}\n")
    if args.prompt:
        shown = intervene(model, tokenizer, args.prompt, [Scaling.parse(s) for s in args.scale])
        result["intervention"] = shown
        print(f"next token after {args.prompt!r}: probability before -> after "
              f"{', '.join(args.scale) or '(no --scale)'}")
        for token, before, after in shown["changed"]:
            print(f"  {token!r:<16} {before:.4f} -> {after:.4f}")
    return result


if __name__ == "__main__":
    main()
