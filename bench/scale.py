"""Training over several GPUs of one host: throughput with data parallelism and with FSDP, scaling against one GPU.

    python bench/scale.py t5 --model byt5_small --gpus 1,2,4,8 --out scale_byt5_small.json
    python bench/scale.py t5 --model t5_3b --gpus 1,2,4,8 --modes dp --out scale_t5_3b_dp.json
    python bench/scale.py flipped_11b --gpus 4 --out scale_flipped_11b.json
    python bench/scale.py lsg --gpus 1,2,4,8 --out scale_lsg.json
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python bench/scale.py t5 --tiny  # CPU check

What runs is the project's own training step (bench/project_train.py: trainer.build and the jitted, state-donating
step of `python -m train`; AdamW, bf16 compute over float32 master weights) on a fixed random batch, over the first
n local devices for each n in --gpus, in one process. Weak scaling: the batch per GPU is fixed, so n GPUs take n
times the tokens per step, and efficiency(n) = tokens/s(n) / (n x tokens/s(1)); one GPU is the same program in both
modes. Under jaxport.launch (one process per GPU: `python -m jaxport.launch --num-processes 8 -- python
bench/scale.py t5 --gpus 8`) every process takes part, each feeding its own rows, and n is all the GPUs.

Measurements (modes: `dp` is mesh data=n, `fsdp` is mesh fsdp=n, `fsdp_tp` is fsdp=n/2 x tensor=2):
  t5           --model byt5_small (32 x (512 + 128) tokens per GPU) or t5_3b (T5-3B: 8 x (512 + 128)); dp and fsdp.
  flipped_11b  T5-XXL, FLIPPED-11B's shape (d_model 4096, d_ff 10240, 64 heads, 24 + 24 layers), 8 x (512 + 128)
               per GPU; fsdp and fsdp_tp. A batch that runs out of memory is retried at half the size.
  lsg          LSG-BART-base (bench/lsg.py's model) at 16384 input + 320 target tokens, 1 per GPU; dp.
Per run: step time (mean of steps dispatched back to back, as the trainer runs them; and the median synchronised
step), tokens/s, efficiency, MFU (model FLOPs counted analytically, bench/measure.py, against n times the bf16 peak:
measured here on an 8192^3 matmul, and --peak-tflops, the data sheet's), memory per GPU (the compiled step's
arguments + outputs + temporaries - aliased, the train state's own bytes, and the allocator's peak so far), losses.
The JSON (--out) is rewritten after every run, so a run cut short keeps what it measured; --budget seconds bound
the command: a run starts only if the time left allows, skipped runs are named.
"""
import os

# The 11B step's state and activations need most of a GPU; JAX's default pool is 75% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import argparse
import gc
import json
import math
import platform
import time

import flax
import jax
import numpy as np
import optax
from measure import (  # bench/ on sys.path; puts the repository root there too
    BYT5_SMALL,
    LSG_BART_BASE,
    chained_steps,
    compiled_memory,
    lsg_train_flops,
    t5_train_flops,
    time_jax,
)
from project_train import FixedBatchTask, last_loss, train_setup
from rates import jax_matmul_peak

from jaxport import runtime, sharding, trainer
from lsg_jax import LSGBartConfig, LSGBartForConditionalGeneration
from t5_jax import T5Config, T5ForConditionalGeneration

T5_COMMON = dict(vocab_size=32128, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
T5_3B = dict(T5_COMMON, d_model=1024, d_kv=128, num_heads=32, d_ff=16384, num_layers=24, num_decoder_layers=24,
             feed_forward_proj="relu", tie_word_embeddings=True)
T5_XXL = dict(T5_COMMON, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False)
# d_model x d_ff above packing.SMALL_LEAF: the MLP kernels are sharded, not packed into the replicated vector.
TINY_T5 = dict(d_model=128, d_kv=16, num_heads=4, d_ff=1024, num_layers=2, num_decoder_layers=2)
TINY_LSG = dict(vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=512,
                block_size=32, num_global_tokens=8)


def workload(name: str, tiny: bool) -> dict:
    """Model family and shape, rows per GPU, input and target tokens, modes."""
    t5 = lambda shape, rows, modes: dict(family="t5", model=dict(shape, **TINY_T5) if tiny else shape,
                                         rows=2 if tiny else rows, t_in=32 if tiny else 512,
                                         t_out=8 if tiny else 128, modes=modes)
    return {"byt5_small": t5(BYT5_SMALL, 32, ("dp", "fsdp")), "t5_3b": t5(T5_3B, 8, ("dp", "fsdp")),
            "flipped_11b": t5(T5_XXL, 8, ("fsdp", "fsdp_tp")),
            "lsg": dict(family="lsg", model=dict(LSG_BART_BASE, **TINY_LSG) if tiny else LSG_BART_BASE,
                        rows=1, t_in=256 if tiny else 16384, t_out=16 if tiny else 320, modes=("dp",))}[name]


TARGETS = {"dp": 0.90, "fsdp": 0.80}  # scaling efficiency at the largest GPU count (issue 18)
TARGET_MFU = 0.40  # FLIPPED-11B with FSDP at 4 GPUs
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01


def log(*args):
    if jax.process_index() == 0:
        print(*args, flush=True)


def mesh_of(mode: str, n: int) -> dict:
    if mode == "dp":
        return {"data": n, "fsdp": 1, "tensor": 1}
    if mode == "fsdp":
        return {"data": 1, "fsdp": n, "tensor": 1}
    if mode == "fsdp_tp":
        if n % 2:
            raise ValueError(f"fsdp_tp needs an even GPU count, not {n}")
        return {"data": 1, "fsdp": n // 2, "tensor": 2}
    raise ValueError(f"unknown mode {mode!r}: dp, fsdp or fsdp_tp")


def make_task(work: dict) -> FixedBatchTask:
    if work["family"] == "t5":
        return FixedBatchTask(T5ForConditionalGeneration, T5Config.create(**work["model"]))
    return FixedBatchTask(LSGBartForConditionalGeneration, LSGBartConfig(**work["model"]))


def host_batch(work: dict, rows: int) -> dict:
    """This process's rows of a global batch of `rows` random examples (every process draws the same batch)."""
    m = work["model"]
    rng = np.random.default_rng(0)
    # Ids from 3 up: no pad, start or end token, every position a real token.
    ids = rng.integers(3, m["vocab_size"], (rows, work["t_in"]), dtype=np.int32)
    labels = rng.integers(3, m["vocab_size"], (rows, work["t_out"]), dtype=np.int32)
    start = np.full((rows, 1), m["decoder_start_token_id"], np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
             "decoder_input_ids": np.concatenate([start, labels[:, :-1]], axis=1),
             "decoder_attention_mask": np.ones_like(labels)}
    share = rows // jax.process_count()
    return {k: v[jax.process_index() * share:(jax.process_index() + 1) * share] for k, v in batch.items()}


def step_flops(work: dict, rows: int) -> float:
    if work["family"] == "t5":
        return t5_train_flops(work["model"], rows, work["t_in"], work["t_out"])["total"]
    return rows * lsg_train_flops(work["model"], work["t_in"], work["t_out"])["total"]


def state_bytes_per_device(state) -> int:
    """Bytes of the train state on the device that holds the most of it (its shards' sizes)."""
    held: dict = {}
    for leaf in jax.tree.leaves(state):
        shard = math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for device in leaf.sharding.device_set:
            held[device] = held.get(device, 0) + shard
    return max(held.values())


def run_one(work: dict, mode: str, n: int, rows_per_gpu: int, steps: int, peak: float) -> dict:
    """Build, compile and time the training step for `n` GPUs in `mode`."""
    devices = jax.devices()[:n]
    rows = rows_per_gpu * n
    state, step, batch_sharding = train_setup(make_task(work), None, LEARNING_RATE, WEIGHT_DECAY,
                                              mesh=mesh_of(mode, n), devices=devices)
    batch = trainer.global_batch(host_batch(work, rows), batch_sharding)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    record = {"state_bytes_per_gpu": state_bytes_per_device(state), **(compiled_memory(compiled) or {})}
    call = chained_steps(compiled, state, batch)
    del state
    first_loss = last_loss(jax.block_until_ready(call()))
    timed = time_jax(call, 1, steps)
    if int(call.last.nonfinite_step) >= 0:
        raise FloatingPointError(f"loss became non-finite at step {int(call.last.nonfinite_step)}")
    seconds = timed["back_to_back"]
    tokens = rows * (work["t_in"] + work["t_out"])
    flops = step_flops(work, rows)
    record.update(
        gpus=n, mode=mode, mesh=mesh_of(mode, n), rows=rows, tokens_per_step=tokens, compile_s=compile_s,
        ms=1e3 * seconds, ms_sync=1e3 * float(np.median(timed["times"])),
        ms_blocks=[1e3 * t for t in timed["back_to_back_blocks"]], tokens_per_sec=tokens / seconds,
        flops_per_step=flops, mfu=flops / seconds / (n * peak), first_loss=first_loss, last_loss=last_loss(call.last),
        pool_peak_so_far=max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices()
                             if d in devices) or None)
    return record


def with_fallback(work: dict, mode: str, n: int, steps: int, peak: float, halve: bool) -> dict:
    """run_one at the workload's rows per GPU; with `halve`, once more at half of them if memory ran out."""
    rows = work["rows"]
    try:
        return run_one(work, mode, n, rows, steps, peak)
    except Exception as error:  # noqa: BLE001 - recorded; the next run goes on
        failure = f"{type(error).__name__}: {error}"[:1500]
    gc.collect()  # out of the except block: the traceback's frames, and the arrays they hold, are gone
    if halve and "RESOURCE_EXHAUSTED" in failure and rows > 1:
        log(f"  out of memory at {rows} rows per GPU: again at {rows // 2}")
        record = with_fallback(dict(work, rows=rows // 2), mode, n, steps, peak, halve=False)
        return {**record, "out_of_memory_at_rows_per_gpu": rows}
    return {"gpus": n, "mode": mode, "error": failure}


def add_efficiency(runs: list[dict]) -> None:
    """efficiency = tokens/s over n x tokens/s of one GPU (either mode: the same program)."""
    single = next((r["tokens_per_sec"] for r in runs if r.get("gpus") == 1 and "tokens_per_sec" in r), None)
    for r in runs:
        if single and "tokens_per_sec" in r:
            r["efficiency"] = r["tokens_per_sec"] / (r["gpus"] * single)


def verdicts(name: str, runs: list[dict]) -> list[dict]:
    """Each issue target against what was measured: efficiency at the largest count per mode; the 11B MFU."""
    out = []
    for mode, target in TARGETS.items():
        measured = [r for r in runs if r.get("mode") == mode and "efficiency" in r and r["gpus"] > 1]
        if measured:
            top = max(measured, key=lambda r: r["gpus"])
            out.append({"what": f"{mode} efficiency at {top['gpus']} GPUs", "target": target,
                        "measured": top["efficiency"], "met": top["efficiency"] >= target})
    if name == "flipped_11b":
        for r in (r for r in runs if "mfu" in r):
            out.append({"what": f"MFU, {r['mode']} at {r['gpus']} GPUs (measured bf16 peak)", "target": TARGET_MFU,
                        "measured": r["mfu"], "met": r["mfu"] >= TARGET_MFU})
    return out


def versions() -> dict:
    import jaxlib
    device = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "device": f"{device.platform}: {device.device_kind}", "devices": jax.device_count(),
            "processes": jax.process_count(), "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
            "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE")}


HEADER = (f"{'mode':8} {'GPUs':>4} {'rows':>5} {'ms/step':>9} {'tokens/s':>11} {'eff.':>6} {'MFU':>6} {'GB/GPU':>7}"
          "  loss")


def row(r: dict) -> str:
    """One run as a line of the table (GB/GPU: the compiled step's peak)."""
    if "error" in r:
        return f"{r['mode']:8} {r['gpus']:>4}  error: {r['error'][:100]}"
    eff = f"{r['efficiency']:.1%}" if "efficiency" in r else "-"
    gb = f"{r['peak_bytes'] / 1e9:.1f}" if r.get("peak_bytes") else "-"
    return (f"{r['mode']:8} {r['gpus']:>4} {r['rows']:>5} {r['ms']:>9.1f} {r['tokens_per_sec']:>11.0f} {eff:>6} "
            f"{r['mfu']:>6.1%} {gb:>7}  {r['first_loss']:.4f} -> {r['last_loss']:.4f}")


def table(results: dict) -> list[str]:
    lines = [HEADER, *map(row, results["runs"])]
    lines += [f"target {v['what']}: {v['measured']:.1%} (>= {v['target']:.0%}) {'met' if v['met'] else 'NOT met'}"
              for v in results["verdicts"]]
    return lines + [f"skipped: {s}" for s in results["skipped"]]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measurement", choices=("t5", "flipped_11b", "lsg"))
    parser.add_argument("--model", choices=("byt5_small", "t5_3b"), default="byt5_small", help="for t5")
    parser.add_argument("--gpus", help="GPU counts, comma-separated (default: 1, 2, 4, ... up to all; flipped_11b: 4)")
    parser.add_argument("--modes", help="comma-separated subset of the measurement's modes")
    parser.add_argument("--rows-per-gpu", type=int, help="examples per GPU per step (default: the workload's)")
    parser.add_argument("--steps", type=int, help="timed steps per block (default 5; --tiny 2)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="bf16 dense peak per GPU for the data-sheet MFU (H200 SXM: 989)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds; a run starts only with time left")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU check of the whole path")
    parser.add_argument("--out", help="JSON file, rewritten after every run")
    args = parser.parse_args(argv)
    started = time.time()
    runtime.configure()
    sharding.maybe_initialize_distributed()
    name = args.model if args.measurement == "t5" else args.measurement
    work = workload(name, args.tiny)
    if args.rows_per_gpu:
        work["rows"] = args.rows_per_gpu
    modes = args.modes.split(",") if args.modes else list(work["modes"])
    if args.gpus:
        counts = [int(n) for n in args.gpus.split(",")]
    elif args.measurement == "flipped_11b":
        counts = [4]
    else:
        counts = [2 ** k for k in range(jax.device_count().bit_length()) if 2 ** k <= jax.device_count()]
    if jax.process_count() > 1 and counts != [jax.device_count()]:
        parser.error(f"one process per GPU: --gpus must be all {jax.device_count()} GPUs")
    if max(counts) > jax.device_count():
        parser.error(f"--gpus {max(counts)}: only {jax.device_count()} devices")
    steps = args.steps or (2 if args.tiny else 5)
    peak = jax_matmul_peak(512 if args.tiny else 8192)
    results = {"measurement": name, "date": time.strftime("%Y-%m-%d"), "versions": versions(), "work": work,
               "peak_flops_measured": peak, "peak_flops_datasheet": args.peak_tflops * 1e12, "runs": [],
               "skipped": [], "verdicts": []}
    log(f"{name}: {work['rows']} x ({work['t_in']} + {work['t_out']}) tokens per GPU, modes {modes}, GPUs {counts}; "
        f"bf16 matmul peak {peak / 1e12:.1f} TFLOP/s")
    # One GPU first (the baseline, the same program in every mode), then each mode up the counts.
    plan = [(modes[0], 1)] * (1 in counts) + [(mode, n) for mode in modes for n in counts if n > 1]
    per_run = None
    for mode, n in plan:
        left = args.budget - (time.time() - started)
        if per_run is not None and left < 1.5 * per_run:
            results["skipped"].append(f"{mode} at {n} GPUs ({left:.0f} s of the budget left)")
            continue
        run_started = time.time()
        log(f"{mode} at {n} GPUs ...")
        record = with_fallback(work, mode, n, steps, peak, halve=name == "flipped_11b")
        record["mfu_datasheet"] = record["mfu"] * peak / (args.peak_tflops * 1e12) if "mfu" in record else None
        results["runs"].append(record)
        per_run = max(per_run or 0, time.time() - run_started)
        add_efficiency(results["runs"])
        results["verdicts"] = verdicts(name, results["runs"])
        log("  " + row(record))
        if args.out and jax.process_index() == 0:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
        gc.collect()
    log("\n".join(table(results)))
    return results


if __name__ == "__main__":
    main()
