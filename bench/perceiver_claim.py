"""Perceiver IO's claim at small scale, on one GPU.

    python bench/perceiver_claim.py scaling --out runs/perceiver_claim/scaling.json [--tiny]
    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d runs/perceiver_claim   # here, with PyPI
    python bench/perceiver_claim.py data --sdist runs/perceiver_claim/vaderSentiment-3.3.2.tar.gz \
        --workdir runs/perceiver_claim
    python bench/perceiver_claim.py learn --workdir runs/perceiver_claim [--text FILE.jsonl] [--tiny]

1. scaling: attention cost beyond the cross-attention does not grow with the input. Forward and training step (bf16
   over float32 weights, AdamW) time and compiled memory at 512, 1024, 2048, 4096, 8192 bytes, batch 16, for the
   language-perceiver shape (positions extended to 8192) and a byte-level BERT built from the same shared pieces
   (jaxport.layers: Embed, Dense, LayerNorm, dot_product_attention, gelu; width 768, 12 heads, MLP 3072) with as
   many layers as match the Perceiver's forward FLOPs at 2048 bytes. Perceiver's time should grow about linearly
   (its per-byte parts), BERT's quadratically.
2. data: real English text from a package registry: the source distribution of vaderSentiment 3.3.2 on PyPI ships
   the human-rated snippets of Hutto & Gilbert (ICWSM 2014): 10,605 movie-review sentences (Pang & Lee's Rotten
   Tomatoes set, the source of SST), 5,190 New York Times editorial sentences, 3,708 Amazon review sentences and
   4,200 tweets, each with its mean sentiment rating (-4..4). Pre-training text: the NYT, Amazon and tweet snippets
   (text.jsonl); classification: the movie sentences labelled positive (rating > 0) or negative (< 0), shuffled
   with seed 0 and split 80/20 (train.tsv, dev.tsv in SST-2's layout). No movie sentence is in the pre-training text.
3. learn: project commands only: `python -m train --config configs/perceiver_mlm.py` on text.jsonl or --text
   (a small Perceiver: 128 latents of 512, 6 self-attention layers, 256 bytes, 20k steps by default), exported, then
   `python -m train --config configs/perceiver_glue.py:sst2` on the movie sentences twice: from the pre-trained
   encoder and from scratch; report.json gives their dev accuracy against the majority class.
"""
import argparse
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

LENGTHS = (512, 1024, 2048, 4096, 8192)
SMALL_MODEL = dict(num_latents=128, d_latents=512, d_model=256, num_self_attends_per_block=6,
                   num_self_attention_heads=8, num_cross_attention_heads=8, qk_channels=256, v_channels=512,
                   max_position_embeddings=256, attention_probs_dropout_prob=0.1)


# ------------------------------------------------------------------------------------------------ scaling

def byte_bert(num_layers: int, width: int = 768, heads: int = 12, mlp: int = 3072, positions: int = 8192):
    """A byte-level BERT encoder with a masked-LM head, from jaxport.layers."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxport import layers

    class Layer(nnx.Module):
        def __init__(self, rngs, dtype):
            kw = dict(std=0.02, use_bias=True, dtype=dtype, rngs=rngs)
            self.qkv = layers.Dense((width,), (3, heads, width // heads), ("embed", None, "heads", "kv"), **kw)
            self.out = layers.Dense((heads, width // heads), (width,), ("heads", "kv", "embed"), **kw)
            self.fc1 = layers.Dense((width,), (mlp,), ("embed", "mlp"), **kw)
            self.fc2 = layers.Dense((mlp,), (width,), ("mlp", "embed"), **kw)
            self.norm1 = layers.LayerNorm(width, dtype=dtype, rngs=rngs)
            self.norm2 = layers.LayerNorm(width, dtype=dtype, rngs=rngs)

        def __call__(self, x, mask):
            q, k, v = jnp.moveaxis(self.qkv(x), 2, 0)
            x = self.norm1(x + self.out(layers.dot_product_attention(q, k, v, mask)))
            return self.norm2(x + self.fc2(layers.gelu(self.fc1(x))))

    class ByteBert(nnx.Module):
        def __init__(self, rngs, dtype=jnp.bfloat16):
            self.dtype = dtype
            self.embed = layers.Embed(262, width, ("vocab", "embed"), 0.02, dtype=dtype, rngs=rngs)
            self.positions = layers.Embed(positions, width, (None, "embed"), 0.02, dtype=dtype, rngs=rngs)
            self.layers = nnx.List([Layer(rngs, dtype) for _ in range(num_layers)])

        def __call__(self, inputs, attention_mask):
            x = self.embed(inputs) + self.positions(jnp.arange(inputs.shape[1]))[None]
            mask = layers.padding_mask(attention_mask)
            for layer in self.layers:
                x = layer(x, mask)
            return self.embed.attend(x).astype(jnp.float32)

    return ByteBert


def bert_layer_flops(length: int, width: int = 768, mlp: int = 3072) -> int:
    """Forward FLOPs of one layer per sequence: 4 width^2 + 2 width mlp matmuls per byte, and attention."""
    return 2 * length * (4 * width * width + 2 * width * mlp) + 4 * length * length * width


def scaling(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from measure import compiled_memory
    from perceiver import forward_flops  # bench/perceiver.py

    from jaxport import config as config_lib
    from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM

    batch = 2 if args.tiny else 16
    lengths = (64, 128, 256) if args.tiny else tuple(args.lengths or LENGTHS)
    model = config_lib.load_config(str(ROOT / ("configs/perceiver_mlm.py" if args.tiny
                                               else "configs/perceiver_mlm.py:paper"))).model.to_dict()
    match_at = 128 if args.tiny else 2048  # BERT's layers match the Perceiver's FLOPs at the checkpoint's length
    model.update(max_position_embeddings=max(lengths + (match_at,)), attention_probs_dropout_prob=0.0)
    # bf16 compute over float32 parameters, as training runs (the modules' dtype is their compute dtype)
    perceiver = PerceiverForMaskedLM(PerceiverConfig.from_dict(model), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    width, mlp = (64, 256) if args.tiny else (768, 3072)
    num_layers = max(1, round((forward_flops(perceiver, 1, match_at)["total"] - 2 * match_at * width * 262)
                              / bert_layer_flops(match_at, width, mlp)))
    bert = byte_bert(num_layers, width, 4 if args.tiny else 12, mlp, max(lengths + (match_at,)))(nnx.Rngs(0))
    results = {"batch": batch, "bert_layers": num_layers, "matched_at": match_at, "runs": {}}

    def measure(name, model, length):
        graphdef, params = nnx.split(model)
        rng = np.random.default_rng(0)
        inputs = jnp.asarray(rng.integers(6, 262, (batch, length)), jnp.int32)
        mask = jnp.ones_like(inputs)
        labels = inputs

        def logits(params):
            model = nnx.merge(graphdef, params)
            return model(inputs=inputs, attention_mask=mask).logits if name == "perceiver" else model(inputs, mask)

        tx = optax.adamw(1e-4, weight_decay=0.01)

        def train_step(params, opt_state):
            def loss(params):
                return optax.softmax_cross_entropy_with_integer_labels(logits(params), labels).mean()
            grads = jax.grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        out = {}
        # the training step donates its state: a copy, so that the model's own arrays serve the next length
        for kind, fn, call_args in (("forward", jax.jit(logits), (params,)),
                                    ("train", jax.jit(train_step, donate_argnums=(0, 1)),
                                     (jax.tree.map(jnp.copy, params), tx.init(params)))):
            try:
                compiled = fn.lower(*call_args).compile()
                memory = compiled_memory(compiled)
                state = call_args
                times = []
                for i in range(3 + (2 if args.tiny else 10)):
                    start = time.perf_counter()
                    result = compiled(*state)
                    jax.block_until_ready(result)
                    if kind == "train":
                        state = result
                    if i >= 3:
                        times.append(time.perf_counter() - start)
                out[kind] = {"ms": 1e3 * float(np.median(times)), "memory": memory}
            except Exception as e:  # noqa: BLE001 - BERT runs out of memory at long inputs
                out[kind] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(name, length, kind, out[kind].get("ms"), (out[kind].get("memory") or {}).get("peak_bytes"),
                  out[kind].get("error", ""), flush=True)
        return out

    for length in lengths:
        for name, model in (("perceiver", perceiver), ("bert", bert)):
            results["runs"].setdefault(str(length), {})[name] = measure(name, model, length)
            if args.out:  # after every measurement: a run cut short keeps what it measured
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(results, indent=1))
    return results


# ------------------------------------------------------------------------------------------------ data

VADER_FILES = {"movie": "movieReviewSnippets_GroundTruth.txt", "nyt": "nytEditorialSnippets_GroundTruth.txt",
               "amazon": "amazonReviewSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt"}


def read_vader(sdist: Path) -> dict[str, list[tuple[float, str]]]:
    """(rating, text) of every snippet of the four ground-truth files inside the sdist's inner archive."""
    found = {}
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        with tarfile.open(fileobj=outer.extractfile(inner_member)) as inner:
            for key, name in VADER_FILES.items():
                member = next(m for m in inner.getmembers() if m.name.endswith(name))
                rows = inner.extractfile(member).read().decode("utf-8", errors="replace").splitlines()
                fields = [row.split("\t", 2) for row in rows if row.count("\t") >= 2]
                found[key] = [(float(rating), text.strip()) for _, rating, text in fields]
    return found


def data(args) -> None:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    snippets = read_vader(Path(args.sdist))
    text = [{"text": t} for key in ("nyt", "amazon", "tweets") for _, t in snippets[key] if t]
    (workdir / "text.jsonl").write_text("".join(json.dumps(d) + "\n" for d in text))
    movie = [(t.replace("\t", " "), int(r > 0)) for r, t in snippets["movie"] if r != 0 and t]
    random.Random(0).shuffle(movie)
    cut = int(0.8 * len(movie))
    for name, rows in (("train", movie[:cut]), ("dev", movie[cut:])):
        (workdir / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    print(f"{len(text)} pre-training snippets ({sum(len(d['text']) for d in text) / 1e6:.2f} MB); movie sentences: "
          f"{cut} train, {len(movie) - cut} dev, {sum(label for _, label in movie) / len(movie):.3f} positive")


# ------------------------------------------------------------------------------------------------ learn

def run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def learn(args) -> dict:
    workdir = Path(args.workdir).resolve()
    model_flags = [f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()]
    steps = 40 if args.tiny else args.pretrain_steps
    if args.tiny:
        model_flags = []  # the tiny config's own model
    pretrain = workdir / "pretrain"
    text = Path(args.text).resolve() if args.text else workdir / "text.jsonl"
    run([sys.executable, "-m", "train", "--config", "configs/perceiver_mlm.py", "--workdir", str(pretrain),
         *model_flags, "--config.data.source=lm_jsonl", f"--config.data.train_path={text}",
         f"--config.data.sequence_length={SMALL_MODEL['max_position_embeddings'] if not args.tiny else 128}",
         f"--config.train.num_steps={steps}", f"--config.train.batch_size={16 if args.tiny else 256}",
         f"--config.train.compute_dtype={'float32' if args.tiny else 'bfloat16'}",
         "--config.optimizer.learning_rate=2e-3", f"--config.optimizer.warmup_steps={steps // 20}",
         f"--config.train.eval_every={steps}", f"--config.train.checkpoint_every={max(1, steps // 10)}",
         f"--config.train.log_every={max(1, steps // 50)}", f"--config.train.export_dir={pretrain / 'export'}"])
    report = {}
    for name, init in (("pretrained", str(pretrain / "export")), ("scratch", "")):
        finetune = workdir / f"finetune_{name}"
        fine_steps = 30 if args.tiny else args.finetune_steps
        run([sys.executable, "-m", "train", "--config", "configs/perceiver_glue.py:sst2", "--workdir", str(finetune),
             *(model_flags or [f"--config.model.{k}={v}" for k, v in _tiny_model().items()]),
             f"--config.init_from={init}", "--config.data.source=glue_tsv",
             f"--config.data.train_path={workdir / 'train.tsv'}", f"--config.data.eval_path={workdir / 'dev.tsv'}",
             f"--config.data.max_length={128 if args.tiny else 256}", "--config.data.truncate=True",
             f"--config.train.num_steps={fine_steps}", "--config.train.batch_size=32",
             f"--config.train.compute_dtype={'float32' if args.tiny else 'bfloat16'}",
             f"--config.optimizer.learning_rate={args.finetune_lr}",
             f"--config.optimizer.warmup_steps={fine_steps // 10}",
             f"--config.train.eval_every={max(1, fine_steps // 10)}", f"--config.train.checkpoint_every={fine_steps}",
             f"--config.train.log_every={max(1, fine_steps // 20)}"])
        records = [json.loads(line) for line in (finetune / "metrics.jsonl").read_text().splitlines()]
        # The last evaluation is the result; the curve shows where fine-tuning on 8.5k sentences starts to overfit.
        report[name] = {**{k: v for k, v in records[-1].items() if k.startswith("eval_")},
                        "eval_accuracy_by_step": {r["step"]: r["eval_accuracy"] for r in records
                                                  if "eval_accuracy" in r}}
    labels = [int(line.rsplit("\t", 1)[1]) for line in (workdir / "dev.tsv").read_text().splitlines()[1:]]
    report["majority_class_accuracy"] = max(sum(labels), len(labels) - sum(labels)) / len(labels)
    (workdir / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


def _tiny_model() -> dict:
    from jaxport import config as config_lib
    return config_lib.load_config(str(ROOT / "configs/perceiver_mlm.py")).model.to_dict()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["scaling", "data", "learn"])
    parser.add_argument("--workdir", default="runs/perceiver_claim")
    parser.add_argument("--sdist", help="vaderSentiment-3.3.2.tar.gz (data)")
    parser.add_argument("--out", help="scaling: JSON file of the results")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test")
    parser.add_argument("--lengths", type=int, nargs="+", help=f"scaling: input lengths (default {LENGTHS})")
    parser.add_argument("--text", help="learn: pre-training text, JSONL of {\"text\": ...} (default "
                        "WORKDIR/text.jsonl), e.g. runs/claim_data/train.jsonl: the GCIDE text of backpack_claim.py")
    parser.add_argument("--pretrain-steps", type=int, default=20_000, help="learn: masked-byte pre-training steps")
    parser.add_argument("--finetune-steps", type=int, default=3000, help="learn: steps of each fine-tuning run")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="learn: peak learning rate of fine-tuning")
    args = parser.parse_args(argv)
    return {"scaling": scaling, "data": data, "learn": learn}[args.stage](args)


if __name__ == "__main__":
    main()
