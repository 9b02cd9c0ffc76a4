"""SIP's central claim at small scale: does FST-simulation pre-training make few-shot FST tasks easier?

    python bench/sip_claim.py --workdir runs/claim all    # or one stage: tasks | pretrain | convert | finetune | report

Stages (each a project command, printed as it runs; a stage skips work whose output exists, so reruns resume):
  tasks     `python -m sip_jax.fst.fewshot`: NUM_TASKS random FSTs of the pre-training distribution, from a seed
            pre-training does not use, each with 100 training and 500 test pairs (distinct inputs).
  pretrain  `python -m train --config configs/sip_pretrain.py:small` from scratch, the task FSTs excluded.
  convert   `python -m convert sip_finetune SRC DST --from-pretraining`: the fine-tuning model, its prefix initialised
            from the FST encoder's encodings of 400 FSTs of the same distribution.
  finetune  `python -m train --config configs/sip_finetune.py:small` on each task's 100 examples, for each seed,
            once from the SIP model and once from a random initialisation of the same architecture (no SIP);
            greedy predictions on the 500 test inputs give exact match and character edit distance.
  report    report.json / report.md: per task, and the mean over tasks and seeds (with the spread over seeds).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIG = "configs/sip_pretrain.py:small"
FINETUNE_CONFIG = "configs/sip_finetune.py:small"
CONDITIONS = ("sip", "scratch")
STAGES = ("tasks", "pretrain", "convert", "finetune", "report")


def run(command: list[str], log_path: Path | None = None, env: dict | None = None) -> None:
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    if log_path is None:
        subprocess.run(command, cwd=ROOT, check=True, env=env)
    else:
        with open(log_path, "w") as log:
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode:
            raise SystemExit(f"failed ({result.returncode}), see {log_path}:\n" + log_path.read_text()[-3000:])
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def paths(workdir: Path) -> dict:
    return {"tasks": workdir / "tasks", "pretrain": workdir / "pretrain", "export": workdir / "pretrain" / "export",
            "init": workdir / "sip_finetune_init", "finetune": workdir / "finetune"}


def stage_tasks(args, p):
    if not (p["tasks"] / "fsts.jsonl").is_file():
        run([sys.executable, "-m", "sip_jax.fst.fewshot", "--config", PRETRAIN_CONFIG, "--out", str(p["tasks"]),
             "--num-tasks", str(args.num_tasks), "--num-train", str(args.num_train), "--num-test", "500"])


def stage_pretrain(args, p):
    if (p["export"] / "config.json").is_file():
        return
    start = time.perf_counter()
    run([sys.executable, "-m", "train", "--config", PRETRAIN_CONFIG, "--workdir", str(p["pretrain"]),
         f"--config.data.exclude_fsts={p['tasks'] / 'fsts.jsonl'}", f"--config.train.export_dir={p['export']}",
         *(["--config.train.num_steps=" + str(args.pretrain_steps)] if args.pretrain_steps else [])],
        env=dict(os.environ, TQDM_DISABLE="1"))
    (p["pretrain"] / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")


def stage_convert(args, p):
    if not (p["init"] / "config.json").is_file():
        run([sys.executable, "-m", "convert", "sip_finetune", str(p["export"]), str(p["init"]), "--from-pretraining",
             "--fst-config", PRETRAIN_CONFIG])


def finetune_command(p, task: Path, condition: str, seed: int, steps: int, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "train", "--config", FINETUNE_CONFIG, "--workdir", str(workdir),
            f"--config.seed={seed}", f"--config.data.train_path={task / 'train.tsv'}",
            f"--config.data.test_path={task / 'test.tsv'}", f"--config.train.num_steps={steps}",
            f"--config.train.eval_every={steps}", f"--config.train.checkpoint_every={steps}",
            f"--config.init_from={p['init'] if condition == 'sip' else ''}"]


def stage_finetune(args, p):
    tasks = sorted(path for path in p["tasks"].glob("task_*") if path.is_dir())
    jobs = [(task, condition, seed) for task in tasks for condition in CONDITIONS for seed in range(args.seeds)]
    # Runs share compiled programs through JAX's persistent cache and split the GPU's memory.
    env = dict(os.environ, TQDM_DISABLE="1", JAX_COMPILATION_CACHE_DIR=str(p["finetune"] / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / args.parallel:.3f}")

    def finetune(job):
        task, condition, seed = job
        workdir = p["finetune"] / f"{task.name}_{condition}_seed{seed}"
        if (workdir / "test_metrics.json").is_file():
            return
        workdir.mkdir(parents=True, exist_ok=True)
        run(finetune_command(p, task, condition, seed, args.finetune_steps, workdir), workdir / "log.txt", env)

    finetune(jobs[0])  # fills the compilation cache before the parallel runs
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(finetune, jobs[1:]))


def _mean_spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def stage_report(args, p):
    tasks = json.loads((p["tasks"] / "tasks.json").read_text())
    rows, summary = [], {}
    for condition in CONDITIONS:
        by_seed = {}
        for task in tasks:
            for run_dir in sorted(p["finetune"].glob(f"task_{task['task']}_{condition}_seed*")):
                metrics = json.loads((run_dir / "test_metrics.json").read_text())
                seed = int(run_dir.name.rsplit("seed", 1)[1])
                by_seed.setdefault(seed, []).append(metrics)
                rows.append({"task": task["task"], "condition": condition, "seed": seed,
                             **{key: metrics[key] for key in ("accuracy", "edit_distance", "num_examples")}})
        # Mean over tasks for each seed, then mean and spread over seeds.
        summary[condition] = {key: _mean_spread([statistics.mean(m[key] for m in runs) for runs in by_seed.values()])
                              for key in ("accuracy", "edit_distance")}
    pretrain = [json.loads(line) for line in (p["pretrain"] / "metrics.jsonl").read_text().splitlines()]
    last_eval = [record for record in pretrain if "eval_loss" in record][-1]
    wall = p["pretrain"] / "wall_seconds.txt"
    report = {"tasks": tasks, "runs": rows, "summary": summary,
              "pretraining": {"steps": last_eval["step"], "wall_seconds": float(wall.read_text()) if wall.is_file()
                              else None, **{k: v for k, v in last_eval.items() if k.startswith("eval_")}}}
    (args.workdir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    lines = ["| task | states | transitions | alphabet | SIP exact match | no SIP exact match | SIP edit dist. | "
             "no SIP edit dist. |", "|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        def cell(condition, key):
            values = [row[key] for row in rows if row["task"] == task["task"] and row["condition"] == condition]
            return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else "-"
        lines.append(f"| {task['task']} | {task['states']} | {task['transitions']} | {task['alphabet']} | "
                     f"{cell('sip', 'accuracy')} | {cell('scratch', 'accuracy')} | "
                     f"{cell('sip', 'edit_distance')} | {cell('scratch', 'edit_distance')} |")
    s, b = summary["sip"], summary["scratch"]
    lines.append(f"| mean | | | | {s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f} | "
                 f"{b['accuracy']['mean']:.3f} ± {b['accuracy']['std']:.3f} | "
                 f"{s['edit_distance']['mean']:.3f} ± {s['edit_distance']['std']:.3f} | "
                 f"{b['edit_distance']['mean']:.3f} ± {b['edit_distance']['std']:.3f} |")
    (args.workdir / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(report["pretraining"], indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=(*STAGES, "all"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/sip_claim"))
    parser.add_argument("--num-tasks", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-steps", type=int, default=0, help="0: the config's train.num_steps")
    parser.add_argument("--finetune-steps", type=int, default=700, help="100 epochs of 100 examples in batches of 16")
    parser.add_argument("--parallel", type=int, default=4, help="fine-tuning runs at once on the GPU")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    p = paths(args.workdir)
    for stage in STAGES if args.stage == "all" else (args.stage,):
        globals()[f"stage_{stage}"](args, p)


if __name__ == "__main__":
    main()
