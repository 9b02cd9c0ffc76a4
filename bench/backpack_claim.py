"""The Backpack paper's claim at small scale: a Backpack matches a Transformer of the same contextualization network in
held-out perplexity, while its sense vectors carry lexical meaning (they rank word pairs by similarity better than
input embeddings do). Project commands only: both models are trained by `python -m train` with
configs/backpack_owt.py:small and :small_gpt2 on the same text, for the same steps.

    # 1. CPU, on a machine with Debian's and PyPI's package registries: the text and the word-similarity lists
    apt-get install dict-gcide          # GCIDE, the GNU Collaborative International Dictionary of English
    python bench/backpack_claim.py prepare --out runs/claim_data
    # 2. GPU (copy runs/claim_data there; about 31 MB): train both, evaluate, write the report; or one model a call
    python bench/backpack_claim.py run --data runs/claim_data --out runs/claim [--steps 3000] [--models backpack]

The text: GCIDE (Debian package dict-gcide, /usr/share/dictd/gcide.dict.dz), real English written by people (Webster's
1913 dictionary with later additions, and its literary quotations), about 5M words: each entry a document, its
pronunciation and source markers removed; every 50th entry held out for evaluation. A byte-level BPE tokenizer of
16,384 tokens is trained on the training entries (`tokenizers`), with <|endoftext|> as its end-of-document token.
The word-similarity lists: SimLex-999 and WordSim-353 as gensim 4.4.0 ships them for its own tests
(gensim/test/test_data/, taken from the wheel that `pip download gensim` fetches, not installed).

`run` trains the two models (dropout 0.1, the same seed, batches and schedule), reads each one's final held-out
perplexity from its metrics.jsonl, and scores word pairs whose words are both one token of the tokenizer (with a
leading space, as inside a sentence): the Spearman correlation of the human ratings with the cosine similarity of
(a) the Backpack's sense vectors, sense by sense, their mean over senses and their maximum over senses, (b) the
Backpack's input embeddings and (c) GPT-2's. The best single sense is picked on the same list, so its figure is
optimistic; the mean and maximum are not picked. Results: OUT/claim.json and a Markdown summary OUT/claim.md.
"""
import argparse
import gzip
import json
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
GENSIM = "gensim==4.4.0"
SIMILARITY_LISTS = {"simlex999": "gensim/test/test_data/simlex999.txt",
                    "wordsim353": "gensim/test/test_data/wordsim353.tsv"}
VOCAB_SIZE = 16384
HELD_OUT_EVERY = 50
MODELS = ("backpack", "gpt2")
END_OF_DOCUMENT = "<|endoftext|>"


# ---------------------------------------------------------------------------------------------------------------
# prepare (CPU)

def gcide_entries(path: Path = GCIDE) -> list[str]:
    """GCIDE's entries as plain text: headword, definitions and quotations; pronunciations (\\...\\), source
    markers ([1913 Webster]) and cross-reference braces removed, whitespace collapsed."""
    text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    entries, current = [], []
    for line in text.splitlines():
        if line and not line[0].isspace() and "\\" in line and current:  # an unindented headword line starts one
            entries.append(" ".join(current))
            current = []
        current.append(line.strip())
    entries.append(" ".join(current))
    cleaned = []
    for entry in entries:
        entry = re.sub(r"\\[^\\]*\\", "", entry)  # pronunciation
        entry = re.sub(r"\[(1913 Webster|PJC|WordNet 1\.5|[A-Z]{2,4})\]", "", entry)  # source markers
        entry = re.sub(r"[{}]", "", entry)
        entry = re.sub(r"\s+", " ", entry).strip()
        if len(entry.split()) >= 3 and not entry.startswith("00-database"):
            cleaned.append(entry)
    return cleaned


def train_tokenizer(texts, folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[END_OF_DOCUMENT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_DOCUMENT, eos_token=END_OF_DOCUMENT,
                            unk_token=END_OF_DOCUMENT).save_pretrained(folder)


def similarity_lists(out: Path) -> None:
    """SimLex-999 and WordSim-353 from the gensim wheel (downloaded by pip, read as a zip, not installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, GENSIM], check=True)
        (wheel,) = Path(tmp).glob("gensim-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name, member in SIMILARITY_LISTS.items():
                (out / f"{name}.tsv").write_bytes(archive.read(member))


def prepare(out: Path, gcide: Path = GCIDE) -> None:
    if not gcide.exists():
        sys.exit(f"{gcide} is missing: apt-get install dict-gcide (or, without root, `apt-get download dict-gcide`, "
                 "`dpkg-deb -x` it and pass --gcide)")
    out.mkdir(parents=True, exist_ok=True)
    entries = gcide_entries(gcide)
    train = [e for i, e in enumerate(entries) if i % HELD_OUT_EVERY]
    held_out = [e for i, e in enumerate(entries) if not i % HELD_OUT_EVERY]
    random.Random(0).shuffle(train)  # documents of one letter of the alphabet should not come in a run
    for name, rows in (("train", train), ("eval", held_out)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"text": e}) + "\n" for e in rows))
    train_tokenizer(train, out / "tokenizer")
    similarity_lists(out)
    words = sum(len(e.split()) for e in entries)
    (out / "README.txt").write_text(f"GCIDE ({gcide.name}) entries: {len(train)} train, {len(held_out)} held out, "
                                    f"{words} words; tokenizer of {VOCAB_SIZE}; {GENSIM} similarity lists\n")
    print((out / "README.txt").read_text())


# ---------------------------------------------------------------------------------------------------------------
# run (GPU)

def train(name: str, data: Path, out: Path, steps: int | None, extra: list[str]) -> None:
    """`python -m train` with the model's preset on the prepared files (resuming from OUT/NAME's checkpoints)."""
    preset = "small_gpt2" if name == "gpt2" else "small"
    workdir = out / name
    overrides = [f"--config.data.train_path={data / 'train.jsonl'}", f"--config.data.eval_path={data / 'eval.jsonl'}",
                 f"--config.data.tokenizer={data / 'tokenizer'}", f"--config.data.cache_dir={out / 'cache'}",
                 f"--config.train.export_dir={workdir / 'export'}"]
    if steps:
        overrides += [f"--config.train.num_steps={steps}", f"--config.train.eval_every={steps}"]
    overrides += [f"--config.{setting}" for setting in extra]
    subprocess.run([sys.executable, "-m", "train", "--config", f"configs/backpack_owt.py:{preset}", "--workdir",
                    str(workdir), *overrides], cwd=ROOT, check=True)


def trained(name: str, out: Path) -> dict:
    """The last evaluation and training loss of a finished run, from its metrics.jsonl."""
    workdir = out / name
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "eval_perplexity" in r][-1]
    return {"step": final["step"], "eval_loss": final["eval_loss"], "eval_perplexity": final["eval_perplexity"],
            "train_loss": [r["loss"] for r in records if "loss" in r][-1], "export": str(workdir / "export")}


def read_pairs(path: Path) -> list[tuple[str, str, float]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, score = line.split("\t")[:3]
        pairs.append((a.lower(), b.lower(), float(score)))
    return pairs


def spearman(x, y) -> float:
    import numpy as np

    def ranks(values):
        values = np.asarray(values, np.float64)
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values))
        for value in np.unique(values):  # ties share their mean rank
            ranked[values == value] = ranked[values == value].mean()
        return ranked
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def cosine(a, b):
    import numpy as np
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def similarity(data: Path, exports: dict) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from backpack_jax import BackpackGPT2LMHeadModel, GPT2LMHeadModel
    from jaxport.data import load_tokenizer

    tokenizer = load_tokenizer(str(data / "tokenizer"))
    backpack = BackpackGPT2LMHeadModel.from_pretrained(exports["backpack"])
    gpt2 = GPT2LMHeadModel.from_pretrained(exports["gpt2"])
    results = {}
    for name in SIMILARITY_LISTS:
        pairs, ids = [], {}
        for a, b, score in read_pairs(data / f"{name}.tsv"):
            for word in (a, b):
                ids.setdefault(word, tokenizer.encode_batch([" " + word])[0])
            if len(ids[a]) == len(ids[b]) == 1:
                pairs.append((a, b, score))
        words = sorted({w for a, b, _ in pairs for w in (a, b)})
        token_ids = jnp.asarray([[ids[w][0] for w in words]])
        index = {w: i for i, w in enumerate(words)}
        senses = np.asarray(backpack.senses(token_ids))[0].transpose(1, 0, 2)  # [words, senses, d]
        embeddings = {"backpack_input_embedding": np.asarray(backpack.backpack.gpt2_model.wte(token_ids))[0],
                      "gpt2_input_embedding": np.asarray(gpt2.transformer.wte(token_ids))[0]}
        human = [score for _, _, score in pairs]
        left, right = [index[a] for a, _, _ in pairs], [index[b] for _, b, _ in pairs]
        per_sense = cosine(senses[left], senses[right])  # [pairs, senses]
        scores = {f"sense_{k}": spearman(per_sense[:, k], human) for k in range(per_sense.shape[1])}
        row = {"pairs_used": len(pairs), "pairs_in_list": len(read_pairs(data / f"{name}.tsv")),
               "sense_mean": spearman(per_sense.mean(1), human), "sense_max": spearman(per_sense.max(1), human),
               "best_single_sense": max(scores.items(), key=lambda item: item[1]), "per_sense": scores}
        for label, table in embeddings.items():
            row[label] = spearman(cosine(table[left], table[right]), human)
        results[name] = row
    return results


def run(data: Path, out: Path, steps: int | None, extra: list[str], names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        train(name, data, out, steps, extra)
    if not all((out / name / "export" / "config.json").is_file() for name in MODELS):
        print(f"trained {names}; the report needs both models: run again with --models {','.join(MODELS)}")
        return
    models = {name: trained(name, out) for name in MODELS}
    report = {"models": models, "similarity": similarity(data, {k: v["export"] for k, v in models.items()})}
    (out / "claim.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| model | step | held-out loss | held-out perplexity |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['step']} | {m['eval_loss']:.4f} | {m['eval_perplexity']:.2f} |"
              for name, m in models.items()]
    lines += ["", "| list (pairs used / in list) | sense mean | sense max | best single sense (picked on the list) | "
                  "Backpack input embedding | GPT-2 input embedding |", "|---|---|---|---|---|---|"]
    for name, r in report["similarity"].items():
        sense, value = r["best_single_sense"]
        lines.append(f"| {name} ({r['pairs_used']} / {r['pairs_in_list']}) | {r['sense_mean']:.3f} | "
                     f"{r['sense_max']:.3f} | {value:.3f} ({sense}) | {r['backpack_input_embedding']:.3f} | "
                     f"{r['gpt2_input_embedding']:.3f} |")
    (out / "claim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare", help="CPU: the text, its tokenizer, the similarity lists")
    prepare_parser.add_argument("--out", type=Path, required=True)
    prepare_parser.add_argument("--gcide", type=Path, default=GCIDE, help="dict-gcide's gcide.dict.dz")
    run_parser = commands.add_parser("run", help="GPU: train both models, evaluate, report")
    run_parser.add_argument("--data", type=Path, required=True)
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--steps", type=int, help="training steps of each model (default: the config's)")
    run_parser.add_argument("--models", default=",".join(MODELS),
                            help="which to train in this call (each resumes from its checkpoints; the report is "
                                 "written once both are done), e.g. backpack, then gpt2, then '' for the report")
    run_parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="a config override for both runs, e.g. train.batch_size=32 (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.out, args.gcide)
    else:
        names = [name for name in args.models.split(",") if name]
        if set(names) - set(MODELS):
            parser.error(f"--models: choose among {MODELS} (none: only the report)")
        run(args.data, args.out, args.steps, args.set, names)


if __name__ == "__main__":
    main()
