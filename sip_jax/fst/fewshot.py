"""Few-shot FST tasks: `python -m sip_jax.fst.fewshot --config configs/sip_pretrain.py:small --out DIR`.

Each task is one random FST drawn the way pre-training draws them (the config's `data.sampler`) but from
another seed, with `--num-train` training pairs and `--num-test` test pairs, all inputs distinct (so no test
input is seen in training). Written for configs/sip_finetune.py as DIR/task_K/{train,test}.tsv (header
"input<TAB>output"), plus DIR/fsts.jsonl with the tasks' FSTs in the original's JSONL format: pre-training with
`--config.data.exclude_fsts=DIR/fsts.jsonl` never draws them, so the tasks stay unseen.
"""
import argparse
import json
import random
from pathlib import Path

from sip_jax.fst.settings import MAX_RANDGEN_SEED, SamplerConfig
from sip_jax.fst.source import FSTPretrainingSource, derive_seed

# Draws per wanted pair before an FST is given up as having too few distinct inputs.
DRAWS_PER_PAIR = 20


def distinct_pairs(task, count: int, seed: int) -> list[tuple[str, str]] | None:
    """`count` (input, output) pairs of `task` with distinct inputs, in random order; None if the FST's
    random walks do not give that many distinct inputs within DRAWS_PER_PAIR * count draws."""
    rng = random.Random(seed)
    pairs: dict[str, str] = {}
    for _ in range(DRAWS_PER_PAIR * count):
        text_in, text_out = task.sample(rng.randint(0, MAX_RANDGEN_SEED))
        pairs.setdefault(text_in, text_out)
        if len(pairs) == count:
            return list(pairs.items())
    return None


def make_tasks(sampler: SamplerConfig, num_tasks: int, num_train: int, num_test: int, seed: int) -> list[dict]:
    """`num_tasks` tasks {"transitions", "alphabet", "train", "test"} from FSTs `seed` draws in order; FSTs with
    too few distinct inputs are skipped."""
    source = FSTPretrainingSource(seed=seed, sampler=sampler)
    tasks, fst_index = [], 0
    while len(tasks) < num_tasks:
        task = source.task(fst_index)
        pairs = distinct_pairs(task, num_train + num_test, derive_seed(seed, "fewshot", fst_index))
        fst_index += 1
        if pairs is None:
            continue
        tasks.append({"transitions": task.transitions, "alphabet": task.alphabet, "num_states": task.num_states,
                      "train": pairs[:num_train], "test": pairs[num_train:]})
    return tasks


def write_tasks(tasks: list[dict], out_dir) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    with open(out / "fsts.jsonl", "w") as fsts:
        for number, task in enumerate(tasks):
            folder = out / f"task_{number}"
            folder.mkdir(exist_ok=True)
            for split in ("train", "test"):
                with open(folder / f"{split}.tsv", "w", encoding="utf-8") as file:
                    file.write("input\toutput\n")
                    file.writelines(f"{text_in}\t{text_out}\n" for text_in, text_out in task[split])
            text_in, text_out = task["train"][0]
            fsts.write(json.dumps({"FST": [list(t) for t in task["transitions"]], "input": text_in,
                                   "output": text_out, "task_id": number}) + "\n")
            summary.append({"task": number, "states": task["num_states"], "transitions": len(task["transitions"]),
                            "alphabet": task["alphabet"],
                            "identity_fraction": sum(i == o for i, o in task["test"]) / max(1, len(task["test"]))})
    (out / "tasks.json").write_text(json.dumps(summary, indent=1) + "\n")
    return {"out": str(out), "tasks": summary}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sip_jax.fst.fewshot", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a pre-training config, e.g. configs/sip_pretrain.py:small")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-tasks", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=100)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=20_240_811, help="FST seed; pre-training's data.seed differs")
    args = parser.parse_args(argv)
    from jaxport.config import load_config
    from sip_jax.fst_data import pretraining_seeds, sampler_config

    config = load_config(args.config)
    if args.seed in pretraining_seeds(config.data):
        parser.error(f"--seed {args.seed} is a seed pre-training draws FSTs from; choose another")
    tasks = make_tasks(sampler_config(config.data), args.num_tasks, args.num_train, args.num_test, args.seed)
    summary = write_tasks(tasks, args.out)
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    main()
