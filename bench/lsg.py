"""LSG-BART-base shape on one GPU: this project's JAX port beside the original PyTorch LSG-BART (lsg-converter
0.1.9) and dense BART with PyTorch sdpa, batch 1, long inputs.

    python bench/lsg.py [--tiny] [--out results.json] [--ref-python PY] [--ref-pythonpath DIR] [--budget S]
                        [--attn-impl auto,cudnn] [--remat none,dots,full]

Model: d_model 768, 6 + 6 layers, 12 heads, d_ff 3072, vocab 50265, 16384 positions, block 256, 64 global tokens,
no sparse blocks (sparsity_type "none"), dropout 0.1 (activation 0.1, attention 0.0: the JAX LSG attention has
no attention dropout). The original builds random weights once and saves them as an HF folder (plus a copy with
32768 positions for the 32768-token runs); every side loads that folder.

1. Encoder forward, batch 1, at 4096 / 8192 / 16384 / 32768 tokens: JAX bf16 (`model.encode`, jitted) vs the
   original in fp16 (model.half()) vs transformers 5 dense BartEncoder with attn_implementation="sdpa" in fp16
   (position table extended; same weights). Median ms; peak memory: JAX from the compiled program's memory
   analysis (arguments + outputs + temporaries - donated), torch from max_memory_allocated (weights included).
2. One training step (L in, 320 out, AdamW, lr 1e-4, weight decay 0.01, no clipping) at the same lengths: JAX
   bf16 over fp32 weights through jaxport.trainer.build + make_train_step (donated state); the original under
   autocast fp16 with a GradScaler and fused AdamW. Median ms, peak memory, MFU; growth per doubling of L.
3. Beam search, 5 beams, exactly 320 new tokens (min = max new tokens), input 16384: JAX `model.generate` vs the
   original's `generate`, both half precision.
4. The arithmetic floor of the 16384-token encoder forward (FLOPs and bytes, against the matmul rate and memory
   bandwidth measured here), the targets (encoder <= 5 ms, train step <= 30 ms and <= 6 GB, generation >= 3x the
   original) and a final table.

The original runs first, in a subprocess (bench/lsg_reference.py: lsg-converter needs transformers 4.44.2; choose
its interpreter with --ref-python and put its packages first with --ref-pythonpath), with the GPU to itself; then
dense BART, then JAX, in this process. Both sides work in the same order, most wanted first: the encoder at every
length, the training step at 16384, generation, the training step at the other lengths, and last at 32768 (the
long position table). --budget (seconds, default 400) bounds the whole run: an item starts only while enough of it
is left, and skipped items are named. --skip-{reference,dense,encoder,train,generate} and the length options make
shorter runs; --jax-cache keeps compiled programs for a second run.
--tiny: a tiny model and short inputs, a CPU smoke test of every path (the reference under .venv-lsg if present).

JAX variants: --attn-impl lists attention implementations (LSGBartConfig.attn_implementation: auto, the default,
what from_pretrained gives; einsum, the blocked einsums; cudnn / xla, lsg_jax.fused_attention; pallas,
lsg_jax.pallas_attention) and --remat lists encoder rematerialisation modes for training (LSGBartConfig.remat:
none, dots, full). The encoder runs once per implementation, the training step once per implementation and remat
mode; results["jax_variants"] holds them all by name ("auto", "cudnn+dots", ...) and the report lists them.
The first variant is the main one: it fills results["jax"], the tables against the original, the targets and
generation.
"""
import os

# The original runs (in a subprocess that has ended) before JAX touches the GPU; dense torch runs next and
# returns its cache; JAX then takes its pool, torch keeping only its context beside it.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.8")

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # lsg_jax / jaxport without installation

import argparse
import gc
import itertools
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import traceback

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import project_train
import torch
import transformers
from flax import nnx
from measure import (
    LSG_BART_BASE,
    chained_steps,
    compiled_memory,
    lsg_encoder_cost,
    lsg_train_flops,
    pool_peak,
    time_jax,
    write_results,
)
from project_train import FixedBatchTask, last_loss
from rates import jax_matmul_peak
from torch_measure import torch_free, torch_sync

from jaxport import runtime, trainer
from jaxport.hf import read_config
from jaxport.hf_config import REMAT_MODES
from lsg_jax import LSGBartConfig, LSGBartForConditionalGeneration
from lsg_jax.configuration import ATTN_IMPLEMENTATIONS

LSG_KEYS = ("block_size", "num_global_tokens", "sparse_block_size", "sparsity_factor", "sparsity_type", "adaptive",
            "mask_first_token", "pass_global_tokens_to_decoder", "pool_with_global")
FULL = dict(model=LSG_BART_BASE, encoder_lengths=[4096, 8192, 16384, 32768], train_lengths=[4096, 8192, 16384, 32768],
            train_targets=320, gen_batch=1, gen_input=16384, gen_new_tokens=320, gen_beams=5,
            encoder_warmup=2, encoder_runs=10, train_warmup=2, train_steps=8, gen_calls=3, ref_gen_calls=2,
            matmul_size=8192, bandwidth_bytes=2 ** 30, budget=400,
            # An item starts only with this much of the budget left (compile included): the run ends near the budget.
            reserve_s={"encoder": 20, "train": 60, "generate": 60})
TINY = dict(FULL, model=dict(LSG_BART_BASE, vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                             decoder_ffn_dim=128, max_position_embeddings=512, block_size=32, num_global_tokens=8),
            encoder_lengths=[128, 256, 512, 1024], train_lengths=[128, 256, 1024], train_targets=16,
            gen_input=512, gen_new_tokens=16, encoder_warmup=1, encoder_runs=3, train_warmup=1, train_steps=3,
            gen_calls=2, ref_gen_calls=2, matmul_size=256, bandwidth_bytes=2 ** 22, budget=240,
            reserve_s={"encoder": 2, "train": 5, "generate": 5})
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01
# Issue targets for the 16384-token shape.
TARGET_ENCODER_MS, TARGET_TRAIN_MS, TARGET_TRAIN_BYTES, TARGET_GEN_SPEEDUP = 5.0, 30.0, 6e9, 3.0
ISSUE_FLOOR_MS = 2.5
H100_SXM = {"bf16_dense_flops": 989.4e12, "hbm_bytes_per_s": 3.35e12}  # data-sheet figures, for reference only
T0 = time.time()


def log(*args):
    print(f"[{time.time() - T0:6.1f}s]", *args, flush=True)


def gb(x):
    return None if x is None else x / 1e9


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def error_record(e):
    traceback.print_exc()
    return {"error": f"{type(e).__name__}: {e}"[:1500]}


# ------------------------------------------------------------------------------------------------ arithmetic

# ------------------------------------------------------------------------------------------------ device rates

def jax_bandwidth(nbytes: int, iters: int = 20, repeats: int = 3) -> float:
    """Bytes/s of an elementwise pass that reads and writes `nbytes` each."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    scale = jax.jit(lambda x: x * 1.0001 + 1.0)
    for _ in range(3):
        scale(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            y = scale(x)
        y.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes * iters / best


# ------------------------------------------------------------------------------------------------ inputs, folders

def make_inputs(cfg: dict, path: Path) -> dict:
    """Token ids from 3 up (no BOS/pad/EOS), the same arrays for every side."""
    rng = np.random.default_rng(0)
    vocab = cfg["model"]["vocab_size"]
    lengths = sorted(set(cfg["encoder_lengths"]) | set(cfg["train_lengths"]))
    arrays = {f"ids_{n}": rng.integers(3, vocab, (1, n), dtype=np.int64) for n in lengths}
    arrays["labels"] = rng.integers(3, vocab, (1, cfg["train_targets"]), dtype=np.int64)
    arrays["gen"] = rng.integers(3, vocab, (cfg["gen_batch"], cfg["gen_input"]), dtype=np.int64)
    np.savez(path, **arrays)
    return arrays


def long_positions(cfg: dict) -> int | None:
    """Position-table size for lengths beyond the model's (None when no length needs it)."""
    longest = max(cfg["encoder_lengths"] + cfg["train_lengths"] + [cfg["gen_input"]])
    base = cfg["model"]["max_position_embeddings"]
    if longest <= base:
        return None
    n = base
    while n < longest:
        n *= 2
    return n


class Folders:
    def __init__(self, cfg: dict, workdir: Path):
        self.base_max = cfg["model"]["max_position_embeddings"]
        self.main = workdir / "lsg_bart"
        self.long_max = long_positions(cfg)
        self.long = workdir / f"lsg_bart_{self.long_max}" if self.long_max else None

    def for_length(self, n: int) -> Path:
        return self.main if n <= self.base_max else self.long


def build_folders_jax(cfg: dict, folders: Folders) -> None:
    """Fallback when the original cannot build the folder: random JAX weights saved with PyTorch key names."""
    model = LSGBartForConditionalGeneration(LSGBartConfig.from_dict(cfg["model"]), rngs=nnx.Rngs(0))
    model.save_pretrained(folders.main, pytorch=True)
    if folders.long:
        long_model = LSGBartForConditionalGeneration(
            LSGBartConfig.from_dict({**cfg["model"], "max_position_embeddings": folders.long_max}), rngs=nnx.Rngs(0))
        long_model.save_pretrained(folders.long, pytorch=True)


# ------------------------------------------------------------------------------------------------ the original

def make_plan(cfg: dict, folders: Folders, args) -> list:
    """What runs, in order, on both sides: the encoder at every length (cheap), the training step at the targets'
    length, generation, the other training lengths, and last the ones that need the long position table."""
    short = [n for n in cfg["train_lengths"] if n <= folders.base_max]
    first = [n for n in short if n == 16384] or short[-1:]
    plan = [("encoder", cfg["encoder_lengths"]) if not args.skip_encoder else None,
            ("train", first) if not args.skip_train else None,
            ("generate", None) if not args.skip_generate else None,
            ("train", [n for n in short if n not in first]) if not args.skip_train else None,
            ("train", [n for n in cfg["train_lengths"] if n > folders.base_max]) if not args.skip_train else None]
    return [p for p in plan if p is not None and (p[0] == "generate" or p[1])]


def gen_kwargs(cfg: dict) -> dict:
    n = cfg["gen_new_tokens"]
    # min = max new tokens: EOS is suppressed until the last step, so both sides decode exactly n tokens.
    return dict(num_beams=cfg["gen_beams"], max_new_tokens=n, min_new_tokens=n, do_sample=False, length_penalty=1.0,
                early_stopping=False, no_repeat_ngram_size=0, forced_eos_token_id=cfg["model"]["eos_token_id"])


def run_reference(cfg: dict, args, folders: Folders, plan: list, inputs_path: Path, workdir: Path, deadline: float,
                  hard_deadline: float) -> dict:
    spec = {
        "build": {"config": {k: v for k, v in cfg["model"].items()}, "folder": str(folders.main), "seed": 0,
                  "long_folder": str(folders.long) if folders.long else None, "long_max_positions": folders.long_max},
        "build_only": args.skip_reference,
        "inputs": str(inputs_path), "out": str(workdir / "reference.json"), "dtype": "float16",
        "plan": plan, "encoder_warmup": cfg["encoder_warmup"], "encoder_runs": cfg["encoder_runs"],
        "train_warmup": cfg["train_warmup"], "train_steps": cfg["train_steps"],
        "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY,
        "generate": {"input_length": cfg["gen_input"], "kwargs": gen_kwargs(cfg), "calls": cfg["ref_gen_calls"]},
        "deadline": deadline,
    }
    spec_path = workdir / "reference_spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    if args.ref_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.ref_pythonpath] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                    else []))
    env.update(PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    command = [args.ref_python, str(Path(__file__).resolve().with_name("lsg_reference.py")), str(spec_path)]
    log(f"reference: {' '.join(command)}" + (f"  (PYTHONPATH={args.ref_pythonpath})" if args.ref_pythonpath else ""))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=workdir)
    tail = []

    def pump():
        for line in process.stdout:
            tail.append(line)
            del tail[:-200]
            if not line.startswith(("  warnings.warn", "Some weights")):
                print("   " + line.rstrip(), flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=max(hard_deadline - time.time(), 5))
    except subprocess.TimeoutExpired:
        log("!! reference past the hard time limit: stopping it (what it wrote so far is kept)")
        process.kill()  # our own child, by its handle
        code = process.wait()
    reader.join(timeout=5)
    out_path = workdir / "reference.json"
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result["returncode"] = code
    if code:
        result.setdefault("error", "".join(tail[-40:]))
    return result


# ------------------------------------------------------------------------------------------------ dense BART

def dense_encoder(cfg: dict, folders: Folders, inputs: dict, device, deadline: float) -> dict:
    """transformers 5 BartEncoder, attn_implementation='sdpa', fp16, positions extended to the longest input;
    weights copied from the LSG folder (its global-token table unused). No attention mask is passed (all tokens
    real), so sdpa may pick its flash / memory-efficient kernels."""
    from safetensors.torch import load_file
    from transformers import BartConfig
    from transformers.models.bart.modeling_bart import BartEncoder

    m = cfg["model"]
    lengths = cfg["encoder_lengths"]
    positions = max(max(lengths), m["max_position_embeddings"])
    bart_config = BartConfig(**{**{k: v for k, v in m.items() if k not in LSG_KEYS},
                                "max_position_embeddings": positions})
    with torch.device(device):
        encoder = BartEncoder._from_config(bart_config, attn_implementation="sdpa", dtype=torch.float16)
    source_folder = folders.long if folders.long and folders.long_max >= positions else folders.main
    weights = load_file(str(source_folder / "model.safetensors"))
    own = encoder.state_dict()
    copied, partial = 0, []
    with torch.no_grad():
        for name, param in own.items():
            key = f"model.encoder.{name}"
            if key not in weights and name == "embed_tokens.weight":
                key = "model.shared.weight"
            if key not in weights:
                continue
            value = weights[key].to(device=device, dtype=param.dtype)
            if value.shape == param.shape:
                param.copy_(value)
            else:
                param[:value.shape[0]] = value
                partial.append(name)
            copied += 1
    del weights
    note = (f"{copied}/{len(own)} tensors from {source_folder.name}" + (f", rows only: {partial}" if partial else "")
            + f"; attention: {encoder.config._attn_implementation}")
    log(f"dense BART encoder: {note}")
    encoder.eval()
    results = {"weights": note}
    for n in lengths:
        if time.time() > deadline - cfg["reserve_s"]["encoder"]:
            results[str(n)] = {"skipped": "time budget"}
            continue
        try:
            ids = torch.from_numpy(inputs[f"ids_{n}"]).long().to(device)
            results[str(n)] = torch_time(lambda: encoder(input_ids=ids).last_hidden_state, device,
                                         cfg["encoder_warmup"], cfg["encoder_runs"])
            log(f"dense sdpa {n}: {results[str(n)]['ms']:.2f} ms, peak {fmt(gb(results[str(n)]['peak_bytes']))} GB")
        except Exception as e:  # noqa: BLE001
            results[str(n)] = error_record(e)
        torch_free(device)
    encoder = own = None
    torch_free(device)
    return results


def torch_time(fn, device, warmup: int, runs: int) -> dict:
    torch_free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            torch_sync(device)
            start = time.perf_counter()
            out = fn()
            torch_sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
            del out
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"ms": 1e3 * statistics.median(times), "times_ms": [1e3 * t for t in times], "peak_bytes": peak}


# ------------------------------------------------------------------------------------------------ JAX

def load_bf16(folder: Path, variant: dict):
    """variant: LSGBartConfig's runtime fields (attn_implementation, remat) for this run."""
    return LSGBartForConditionalGeneration.from_pretrained(folder, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                           **variant)


def encoder_program(model):
    """(encode(weights, ids, mask) -> encoder states, weights): model.encode as a function of the weights it reads,
    as the original's timed call, model.model.encoder, reads only the encoder's. The decoder's weights stay out of
    the call (closed over, unused, so never traced): every array argument costs the host about a microsecond per
    call, and the whole model's 261 added ~0.3 ms to a synchronised encoder call on an H100 (bench/RESULTS.md)."""
    graphdef, decoder, weights = nnx.split(model, nnx.PathContains("decoder"), ...)

    def encode(weights, ids, mask):
        return nnx.merge(graphdef, decoder, weights).encode(ids, mask)
    return encode, nnx.to_pure_dict(weights)  # plain dicts: a quicker dispatch than nnx.State's nodes


def jax_encoder(cfg: dict, folders: Folders, inputs: dict, lengths: list[int], deadline: float,
                variant: dict) -> dict:
    results, loaded = {}, {}
    for n in lengths:
        if time.time() > deadline - cfg["reserve_s"]["encoder"]:
            results[str(n)] = {"skipped": "time budget"}
            continue
        try:
            folder = folders.for_length(n)
            if folder not in loaded:
                loaded.clear()
                gc.collect()
                encode, weights = encoder_program(load_bf16(folder, variant))
                loaded[folder] = (weights, jax.jit(encode))
            weights, encode = loaded[folder]
            ids = jnp.asarray(inputs[f"ids_{n}"], jnp.int32)
            mask = jnp.ones_like(ids)
            start = time.perf_counter()
            compiled = encode.lower(weights, ids, mask).compile()
            compile_s = time.perf_counter() - start
            # Timed through the jitted function, as users call it (its C++ dispatch path is quicker than calling
            # the Compiled object).
            timed = time_jax(lambda: encode(weights, ids, mask), cfg["encoder_warmup"], cfg["encoder_runs"])
            results[str(n)] = {"ms": 1e3 * statistics.median(timed["times"]),
                               "times_ms": [1e3 * t for t in timed["times"]],
                               "ms_pipelined": 1e3 * timed["back_to_back"],
                               "ms_pipelined_blocks": [1e3 * t for t in timed["back_to_back_blocks"]],
                               "compile_s": compile_s,
                               **(compiled_memory(compiled) or {"peak_bytes": None}), "pool_peak_so_far": pool_peak()}
            r = results[str(n)]
            log(f"jax encoder {n} {variant_name(variant)}: {r['ms']:.2f} ms (back to back {r['ms_pipelined']:.2f}), "
                f"peak {fmt(gb(r['peak_bytes']))} GB, compile {compile_s:.1f}s")
        except Exception as e:  # noqa: BLE001
            results[str(n)] = error_record(e)
    loaded.clear()
    gc.collect()
    return results


def train_setup(model_config: LSGBartConfig, init_from: Path | None = None):
    """project_train's training step for LSG-BART: (state, step, batch_sharding)."""
    task = FixedBatchTask(LSGBartForConditionalGeneration, model_config)
    return project_train.train_setup(task, init_from, LEARNING_RATE, WEIGHT_DECAY)


def train_batch(ids: np.ndarray, labels: np.ndarray, decoder_start_token_id: int, batch_sharding) -> dict:
    """A teacher-forced batch: ids [B, L] in, labels [B, T] out (decoder inputs: start token, then labels)."""
    ids, labels = ids.astype(np.int32), labels.astype(np.int32)
    decoder_inputs = np.concatenate([np.full((labels.shape[0], 1), decoder_start_token_id, np.int32),
                                     labels[:, :-1]], axis=1)
    return trainer.global_batch({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
                                 "decoder_input_ids": decoder_inputs,
                                 "decoder_attention_mask": np.ones_like(labels)}, batch_sharding)


def jax_train(cfg: dict, folders: Folders, inputs: dict, lengths: list[int], deadline: float, setup_for: dict,
              variant: dict) -> dict:
    """train_setup's step from the folder's weights at each length. setup_for keeps the train state and the
    jitted step from one call to the next (keyed by folder and variant)."""
    results = {}
    for n in lengths:
        if time.time() > deadline - cfg["reserve_s"]["train"]:
            results[str(n)] = {"skipped": "time budget"}
            continue
        try:
            folder = folders.for_length(n)
            key = (folder, variant_name(variant))
            if key not in setup_for:
                setup_for.clear()
                gc.collect()
                model_config = LSGBartConfig.from_dict({**read_config(folder), **variant})
                setup_for[key] = list(train_setup(model_config, folder))
            state, step, batch_sharding = setup_for[key]
            batch = train_batch(inputs[f"ids_{n}"], inputs["labels"], cfg["model"]["decoder_start_token_id"],
                                batch_sharding)
            start = time.perf_counter()
            compiled = step.lower(state, batch).compile()
            compile_s = time.perf_counter() - start
            train_step = chained_steps(compiled, state, batch)
            first_loss = last_loss(jax.block_until_ready(train_step()))
            # Back to back is how the trainer runs steps: it waits on the device only to log or save.
            timed = time_jax(train_step, cfg["train_warmup"] - 1, cfg["train_steps"])
            state = train_step.last
            setup_for[key][0] = state
            if int(state.nonfinite_step) >= 0:
                raise FloatingPointError(f"loss became non-finite at step {int(state.nonfinite_step)}")
            flops = lsg_train_flops(cfg["model"], n, cfg["train_targets"])
            results[str(n)] = {"ms": 1e3 * statistics.median(timed["times"]),
                               "times_ms": [1e3 * t for t in timed["times"]],
                               "ms_pipelined": 1e3 * timed["back_to_back"],
                               "ms_pipelined_blocks": [1e3 * t for t in timed["back_to_back_blocks"]],
                               "compile_s": compile_s,
                               "first_loss": first_loss, "last_loss": last_loss(state),
                               "flops": flops["total"], **(compiled_memory(compiled) or {"peak_bytes": None}),
                               "pool_peak_so_far": pool_peak()}
            r = results[str(n)]
            log(f"jax train {n} {variant_name(variant)}: {r['ms']:.1f} ms (b2b {r['ms_pipelined']:.1f}), "
                f"peak {fmt(gb(r['peak_bytes']))} GB, "
                f"first loss {first_loss:.4f}, compile {compile_s:.1f}s")
            del batch, compiled
        except Exception as e:  # noqa: BLE001
            results[str(n)] = error_record(e)
            setup_for.clear()  # the state may have been donated to a failed call
            gc.collect()
    return results


def jax_generate(cfg: dict, folders: Folders, inputs: dict, deadline: float, variant: dict) -> dict:
    if time.time() > deadline - cfg["reserve_s"]["generate"]:
        return {"skipped": "time budget"}
    try:
        model = load_bf16(folders.for_length(cfg["gen_input"]), variant)
        ids = jnp.asarray(inputs["gen"], jnp.int32)
        mask = jnp.ones_like(ids)
        kwargs = gen_kwargs(cfg)
        start = time.perf_counter()
        sequences = jax.block_until_ready(model.generate(ids, mask, **kwargs).sequences)
        first_s = time.perf_counter() - start
        log(f"jax generate first call (compile + run) {first_s:.1f}s")
        times = []
        for _ in range(cfg["gen_calls"]):
            start = time.perf_counter()
            sequences = jax.block_until_ready(model.generate(ids, mask, **kwargs).sequences)
            times.append(time.perf_counter() - start)
        log(f"jax generate: {statistics.median(times):.3f}s per call")
        del model
        return {"s": statistics.median(times), "times_s": times, "first_call_s": first_s,
                "pool_peak_so_far": pool_peak(), "sequences": np.asarray(sequences).tolist()}
    except Exception as e:  # noqa: BLE001
        return error_record(e)


# ------------------------------------------------------------------------------------------------ report

def versions(device) -> dict:
    import jaxlib
    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "transformers": transformers.__version__, "numpy": np.__version__,
            "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu",
            "jax_device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
            "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}


def value(results: dict, *keys, field="ms"):
    r = results
    for k in keys:
        if not isinstance(r, dict) or str(k) not in r:
            return None
        r = r[str(k)]
    return r.get(field) if isinstance(r, dict) else None


def status(results: dict, *keys) -> str:
    r = results
    for k in keys:
        if not isinstance(r, dict) or str(k) not in r:
            return "not run"
        r = r[str(k)]
    if not isinstance(r, dict):
        return "not run"
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "FAILED: " + r["error"].splitlines()[0][:60]
    return ""


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def growth_lines(name: str, lengths: list[int], ms: list, mem: list) -> list[str]:
    """Time and memory per 1k input tokens at each length and the factor per doubling (2.0 = linear)."""
    lines = []
    points = [(n, t, b) for n, t, b in zip(lengths, ms, mem, strict=True) if t is not None]
    if len(points) < 2:
        return lines
    per_k = ", ".join(f"{n}: {1e3 * t / n:.3f}" for n, t, _ in points)
    factors = ", ".join(f"{b_n // a_n}x len -> {b_t / a_t:.2f}x" for (a_n, a_t, _), (b_n, b_t, _)
                        in itertools.pairwise(points))
    lines.append(f"  {name} time: ms per 1k tokens {per_k}; growth {factors}")
    mem_points = [(n, b) for n, _, b in points if b is not None]
    if len(mem_points) >= 2:
        increments = ", ".join(f"{a_n}->{b_n}: {(b_b - a_b) / (b_n - a_n) * 1e3 / 1e6:.2f} MB per 1k tokens"
                               for (a_n, a_b), (b_n, b_b) in itertools.pairwise(mem_points))
        lines.append(f"  {name} memory: {increments} (constant = linear)")
    return lines


def report(results: dict, cfg: dict) -> list[str]:
    ref, dense, jx = results.get("reference", {}), results.get("dense_sdpa", {}), results.get("jax", {})
    m = cfg["model"]
    lines = []
    v = results["versions"]
    rv = ref.get("versions", {})
    lines.append(f"== LSG-BART {results['mode']} (d {m['d_model']}, {m['encoder_layers']}+{m['decoder_layers']} "
                 f"layers, "
                 f"{m['encoder_attention_heads']} heads, block {m['block_size']}, {m['num_global_tokens']} global, "
                 f"no sparse) | {v['torch_device']} | jax {v['jax']} torch {v['torch']} transformers "
                 f"{v['transformers']} | original: transformers {rv.get('transformers', '?')} lsg-converter "
                 f"{rv.get('lsg_converter', '?')} torch {rv.get('torch', '?')}")
    lines.append(f"weights: {results.get('weights')}")
    lines.append("")
    lines.append("encoder forward, batch 1 (median ms, synchronised per call; b2b: mean of calls dispatched back to "
                 "back; peak GB = 1e9 bytes, weights included)")
    lines.append(f"{'tokens':>8} | {'JAX bf16':>9} {'b2b':>6} {'GB':>6} | {'LSG torch fp16':>14} {'GB':>6} | "
                 f"{'dense sdpa fp16':>15} {'GB':>6} | {'LSG/JAX':>8} {'dense/JAX':>9}")
    for n in cfg["encoder_lengths"]:
        j, r, d = value(jx, "encoder", n), value(ref, "encoder", n), value(dense, n)
        jm, rm, dm = (value(x, *k, field="peak_bytes") for x, k in
                      ((jx, ("encoder", n)), (ref, ("encoder", n)), (dense, (n,))))
        notes = "; ".join(f"{who} {s}" for who, s in (("jax", status(jx, "encoder", n)),
                                                       ("lsg", status(ref, "encoder", n)),
                                                       ("dense", status(dense, n))) if s)
        b2b = value(jx, "encoder", n, field="ms_pipelined")
        lines.append(f"{n:>8} | {fmt(j):>9} {fmt(b2b):>6} {fmt(gb(jm)):>6} | {fmt(r):>14} {fmt(gb(rm)):>6} | "
                     f"{fmt(d):>15} "
                     f"{fmt(gb(dm)):>6} | {fmt(ratio(r, j), '.2f'):>7}x {fmt(ratio(d, j), '.2f'):>8}x"
                     + (f"  ({notes})" if notes else ""))
    for who, res, keys in (("JAX", jx, ("encoder",)), ("LSG torch", ref, ("encoder",)), ("dense sdpa", dense, ())):
        lines += growth_lines(f"{who} encoder", cfg["encoder_lengths"],
                              [value(res, *keys, n) for n in cfg["encoder_lengths"]],
                              [value(res, *keys, n, field="peak_bytes") for n in cfg["encoder_lengths"]])
    lines.append("")
    lines.append(f"training step, batch 1 x (L in + {cfg['train_targets']} out), AdamW (median ms, synchronised per "
                 "step; JAX b2b: mean of steps dispatched back to back; peak GB)")
    lines.append(f"{'L':>8} | {'JAX bf16':>9} {'b2b':>6} {'GB':>6} {'MFU':>6} | {'LSG torch fp16':>14} {'GB':>6} | "
                 f"{'LSG/JAX':>8}")
    peak_flops = results.get("rates", {}).get("matmul_flops")
    for n in cfg["train_lengths"]:
        j, r = value(jx, "train", n), value(ref, "train", n)
        jm, rm = value(jx, "train", n, field="peak_bytes"), value(ref, "train", n, field="peak_bytes")
        flops = lsg_train_flops(m, n, cfg["train_targets"])["total"]
        mfu = None if j is None or not peak_flops else flops / (j / 1e3) / peak_flops
        notes = "; ".join(f"{who} {s}" for who, s in (("jax", status(jx, "train", n)),
                                                       ("lsg", status(ref, "train", n))) if s)
        mfu_pct = None if mfu is None else 100 * mfu
        b2b = value(jx, "train", n, field="ms_pipelined")
        lines.append(f"{n:>8} | {fmt(j, '.1f'):>9} {fmt(b2b, '.1f'):>6} {fmt(gb(jm)):>6} {fmt(mfu_pct, '.1f'):>5}% | "
                     f"{fmt(r, '.1f'):>14} "
                     f"{fmt(gb(rm)):>6} | {fmt(ratio(r, j)):>7}x" + (f"  ({notes})" if notes else ""))
    for who, res in (("JAX", jx), ("LSG torch", ref)):
        lines += growth_lines(f"{who} train", cfg["train_lengths"],
                              [value(res, "train", n) for n in cfg["train_lengths"]],
                              [value(res, "train", n, field="peak_bytes") for n in cfg["train_lengths"]])
    lines.append("")
    g = results.get("generate", {})
    jg, rg = jx.get("generate", {}), ref.get("generate", {})
    new_tokens = cfg["gen_batch"] * cfg["gen_new_tokens"]
    lines.append(f"beam search, {cfg['gen_beams']} beams, batch {cfg['gen_batch']} x {cfg['gen_input']} in, exactly "
                 f"{cfg['gen_new_tokens']} new tokens (median s per call)")
    for who, r in (("JAX bf16", jg), ("LSG torch fp16", rg)):
        s = r.get("s") if isinstance(r, dict) else None
        extra = status({"x": r}, "x")
        lines.append(f"  {who:<15} {fmt(s, '.3f'):>8} s  {fmt(None if s is None else new_tokens / s, ',.0f'):>8} "
                     f"new tokens/s" + (f"  ({extra})" if extra else ""))
    lines.append(f"  speed-up JAX vs original: {fmt(g.get('speedup'))}x; sequences {g.get('shapes')}, token agreement "
                 f"{fmt(g.get('token_agreement'), '.3f')} (fp16 vs bf16 on random weights: informative only)")
    lines.append("")
    floor = results.get("floor", {})
    if floor:
        lines.append(f"arithmetic floor, encoder forward at {floor['tokens']} tokens: {floor['flops'] / 1e9:.1f} GFLOP "
                     f"(" + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in floor["flops_terms"].items()) + "), "
                     f"{floor['bytes'] / 1e6:,.0f} MB moved (weights {floor['bytes_weights'] / 1e6:.1f} MB)")
        tflops = floor.get("matmul_flops") and floor["matmul_flops"] / 1e12
        lines.append(f"  measured here: matmul {fmt(tflops, '.0f')} "
                     f"TFLOP/s -> {fmt(floor.get('compute_ms'), '.2f')} ms; bandwidth "
                     f"{fmt(floor.get('bandwidth') and floor['bandwidth'] / 1e12, '.2f')} TB/s -> "
                     f"{fmt(floor.get('memory_ms'), '.2f')} ms; floor max = {fmt(floor.get('floor_ms'))} ms, "
                     f"no overlap sum = {fmt(floor.get('sum_ms'))} ms (issue: ~{ISSUE_FLOOR_MS} ms)")
        lines.append(f"  H100 SXM data sheet ({H100_SXM['bf16_dense_flops'] / 1e12:.0f} TFLOP/s, "
                     f"{H100_SXM['hbm_bytes_per_s'] / 1e12:.2f} TB/s): compute {floor['sheet_compute_ms']:.2f} ms, "
                     f"memory {floor['sheet_memory_ms']:.2f} ms")
    lines.append("")
    lines += variant_lines(results, cfg)
    lines.append("targets (issue, for 16384 tokens in):")
    for t in results.get("targets", []):
        lines.append(f"  {t['name']:<44} {t['value']:>12}  target {t['target']:<10} {t['verdict']}")
    if results.get("skipped"):
        lines.append(f"skipped for the time budget: {', '.join(results['skipped'])}")
    lines.append("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results.get("phase_s", {}).items()))
    return lines


def variant_lines(results: dict, cfg: dict) -> list[str]:
    """With more than one JAX variant (--attn-impl, --remat): each one's encoder and training-step times, memory
    and first loss (the same weights and batch: losses should agree to bf16 rounding), and its verdicts."""
    by_variant = results.get("jax_variants", {})
    if len(by_variant) < 2:
        return []

    def entry(res, item, n):
        if status(res, item, n):
            return f"{n}: {status(res, item, n)}"
        text = (f"{n}: {fmt(value(res, item, n))} ms (b2b {fmt(value(res, item, n, field='ms_pipelined'))}) "
                f"{fmt(gb(value(res, item, n, field='peak_bytes')))} GB")
        return text + (f" loss {fmt(value(res, item, n, field='first_loss'), '.4f')}" if item == "train" else "")

    lines = ["JAX variants (attention implementation [+remat]): encoder / train step at each length"]
    for name, res in by_variant.items():
        for item in ("encoder", "train"):
            if item in res:
                lines.append(f"  {name:<12} {item:<7} " + "; ".join(entry(res, item, n)
                                                                     for n in cfg[f"{item}_lengths"]))
        verdicts = [f"{t['name'].split(',')[0]} {t['verdict']}" for t in targets({"jax": res}, cfg)[:3]
                    if t["verdict"] != "n/a"]
        if verdicts:
            lines.append(f"  {'':<12} targets: " + "; ".join(verdicts))
    lines.append("")
    return lines


def targets(results: dict, cfg: dict) -> list[dict]:
    jx = results.get("jax", {})
    n = 16384 if 16384 in cfg["encoder_lengths"] else max(cfg["encoder_lengths"])
    nt = 16384 if 16384 in cfg["train_lengths"] else max(cfg["train_lengths"])
    enc = value(jx, "encoder", n)
    train = value(jx, "train", nt)
    train_mem = value(jx, "train", nt, field="peak_bytes")
    speedup = results.get("generate", {}).get("speedup")

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    return [
        {"name": f"encoder forward {n}, JAX bf16", "value": f"{fmt(enc)} ms", "target": f"<= {TARGET_ENCODER_MS} ms",
         "verdict": verdict(None if enc is None else enc <= TARGET_ENCODER_MS)},
        {"name": f"train step {nt}+{cfg['train_targets']}, JAX", "value": f"{fmt(train, '.1f')} ms",
         "target": f"<= {TARGET_TRAIN_MS} ms", "verdict": verdict(None if train is None else train <= TARGET_TRAIN_MS)},
        {"name": f"train step {nt}+{cfg['train_targets']} peak memory, JAX", "value": f"{fmt(gb(train_mem))} GB",
         "target": f"<= {TARGET_TRAIN_BYTES / 1e9:.0f} GB",
         "verdict": verdict(None if train_mem is None else train_mem <= TARGET_TRAIN_BYTES)},
        {"name": "generation speed-up vs the original", "value": f"{fmt(speedup)}x",
         "target": f">= {TARGET_GEN_SPEEDUP}x",
         "verdict": verdict(None if speedup is None else speedup >= TARGET_GEN_SPEEDUP)},
    ]


# ------------------------------------------------------------------------------------------------ main

def parse_lengths(text):
    return [int(x) for x in text.split(",") if x]


def parse_names(valid: tuple):
    def parse(text):
        names = [x for x in text.split(",") if x]
        if not names or any(x not in valid for x in names):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {valid}")
        return names
    return parse


def variant_name(variant: dict) -> str:
    """'cudnn', 'cudnn+dots', 'cudnn+full', ...: a variant of the JAX side (LSGBartConfig's runtime fields)."""
    remat = variant.get("remat", "none")
    return variant["attn_implementation"] + ("" if remat == "none" else f"+{remat}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny model and inputs (CPU smoke test)")
    parser.add_argument("--out", help="write all results to this JSON file")
    parser.add_argument("--workdir", help="keep the model folders and the reference's files here (default: a temp dir)")
    default_python = os.environ.get("LSG_REF_PYTHON") or (
        str(ROOT / ".venv-lsg" / "bin" / "python") if (ROOT / ".venv-lsg" / "bin" / "python").exists()
        else sys.executable)
    parser.add_argument("--ref-python", default=default_python,
                        help="interpreter of the original (default: $LSG_REF_PYTHON, else .venv-lsg/bin/python if "
                             "present, else this interpreter)")
    parser.add_argument("--ref-pythonpath", default=os.environ.get("LSG_REF_PYTHONPATH", ""),
                        help="prepended to the reference's PYTHONPATH, e.g. /tmp/lsgsite holding transformers 4.44.2 "
                             "and lsg-converter (default: $LSG_REF_PYTHONPATH)")
    parser.add_argument("--skip-reference", action="store_true", help="the original only builds the folder")
    parser.add_argument("--skip-dense", action="store_true", help="leave out dense BART")
    parser.add_argument("--skip-encoder", action="store_true", help="leave out the encoder forward runs")
    parser.add_argument("--skip-train", action="store_true", help="leave out the training steps")
    parser.add_argument("--skip-generate", action="store_true", help="leave out generation")
    parser.add_argument("--jax-cache", help="JAX persistent compilation cache folder (a second run compiles less)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 400; tiny: 240)")
    parser.add_argument("--encoder-lengths", type=parse_lengths, help="comma-separated input lengths")
    parser.add_argument("--train-lengths", type=parse_lengths, help="comma-separated input lengths")
    parser.add_argument("--gen-input", type=int, help="generation input length (default 16384)")
    parser.add_argument("--gen-batch", type=int, help="generation batch (default 1)")
    parser.add_argument("--gen-new-tokens", type=int, help="new tokens per sequence (default 320)")
    parser.add_argument("--gen-beams", type=int, help="beams (default 5)")
    parser.add_argument("--steps", type=int, help="timed training steps per length")
    parser.add_argument("--matmul-size", type=int, help="n of the n x n x n bf16 matmul timed for the peak rate")
    parser.add_argument("--attn-impl", type=parse_names(ATTN_IMPLEMENTATIONS),
                        default=[LSGBartConfig.attn_implementation],
                        help="comma-separated attention implementations for the JAX side, of "
                             f"{', '.join(ATTN_IMPLEMENTATIONS)} (default LSGBartConfig's, auto): each times the "
                             "encoder and the training step; the first one also fills the main tables, the targets "
                             "and generation")
    parser.add_argument("--remat", type=parse_names(REMAT_MODES), default=["none"],
                        help="comma-separated encoder rematerialisation modes for the JAX training step, of "
                             f"{', '.join(REMAT_MODES)} (default none; the first fills the main tables)")
    args = parser.parse_args(argv)
    runtime.configure()  # before anything draws random numbers (the matmul rate's inputs, a JAX-built folder)
    cfg = dict(TINY if args.tiny else FULL)
    for key, arg in (("encoder_lengths", args.encoder_lengths), ("train_lengths", args.train_lengths),
                     ("gen_input", args.gen_input), ("gen_batch", args.gen_batch),
                     ("gen_new_tokens", args.gen_new_tokens), ("gen_beams", args.gen_beams),
                     ("train_steps", args.steps), ("budget", args.budget), ("matmul_size", args.matmul_size)):
        if arg:
            cfg[key] = arg
    transformers.logging.set_verbosity_error()
    if args.jax_cache:
        jax.config.update("jax_compilation_cache_dir", args.jax_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    budget = cfg["budget"]
    deadline = T0 + budget
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"mode": "tiny" if args.tiny else "base", "config": cfg, "skipped": [], "phase_s": {}}
    # JAX variants: every attention implementation for the encoder (remat does not change a forward pass), every
    # implementation x remat setting for the training step. The first is the main one (results["jax"]).
    variants = [dict(attn_implementation=name, remat=remat) for name in args.attn_impl
                for remat in args.remat]
    results["variants"] = [variant_name(v) for v in variants]

    def phase(name, fn):
        start = time.time()
        out = fn()
        results["phase_s"][name] = time.time() - start
        return out

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lsg_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        folders = Folders(cfg, workdir)
        inputs = make_inputs(cfg, workdir / "inputs.npz")

        # 1. The original, alone on the GPU: builds the folders, then times its side.
        log(f"original LSG-BART (budget: soft {0.4 * budget:.0f}s, hard {0.6 * budget:.0f}s of {budget:.0f}s)")
        plan = make_plan(cfg, folders, args)
        log("plan (both sides, in this order): " + "; ".join(f"{item} {lengths or ''}" for item, lengths in plan))
        ref = phase("reference", lambda: run_reference(cfg, args, folders, plan, workdir / "inputs.npz", workdir,
                                                       T0 + 0.4 * budget, T0 + 0.6 * budget))
        results["reference"] = ref
        if ref.get("built"):
            results["weights"] = "random, built by the original (lsg-converter) and loaded by every side"
        else:
            why = ref.get("build_error") or ref.get("error", "")[-500:]
            log(f"!! the original could not build the folder ({why}); "
                "JAX builds random weights instead")
            phase("build_jax", lambda: build_folders_jax(cfg, folders))
            results["weights"] = "random, built by JAX (the original did not run)"

        # 2. Dense BART with sdpa (torch, this process), before JAX claims its pool.
        if not args.skip_dense and not args.skip_encoder:
            log("dense BART encoder (transformers 5, sdpa, fp16) ...")
            try:
                results["dense_sdpa"] = phase("dense", lambda: dense_encoder(cfg, folders, inputs, device, deadline))
            except Exception as e:  # noqa: BLE001
                results["dense_sdpa"] = error_record(e)
            torch_free(device)

        # 3. JAX.
        jnp.zeros(()).block_until_ready()
        results["versions"] = versions(device)
        log(f"devices: torch {results['versions']['torch_device']} | jax {results['versions']['jax_device']}")
        if not args.tiny and (device.type != "cuda" or jax.default_backend() != "gpu"):
            log("!! full-size run without a GPU on both sides: numbers will not mean much")
        rates = phase("rates", lambda: {"matmul_flops": jax_matmul_peak(cfg["matmul_size"]),
                                        "bandwidth": jax_bandwidth(cfg["bandwidth_bytes"])})
        results["rates"] = rates
        log(f"jax bf16 matmul {rates['matmul_flops'] / 1e12:.1f} TFLOP/s, copy bandwidth "
            f"{rates['bandwidth'] / 1e12:.2f} TB/s")
        jx = results["jax"] = {}
        by_variant = results["jax_variants"] = {}  # variant name -> {"encoder": ..., "train": ...}
        main_attn = {"attn_implementation": variants[0]["attn_implementation"]}
        train_cache = {}
        for number, (item, lengths) in enumerate(plan):
            if item == "encoder":
                for name in args.attn_impl:
                    variant = {"attn_implementation": name}
                    out = phase(f"jax_{number}_encoder_{name}", lambda: jax_encoder(cfg, folders, inputs, lengths,
                                                                                    deadline, variant))
                    by_variant.setdefault(name, {})["encoder"] = out
                    if variant == main_attn:
                        jx["encoder"] = out
            elif item == "train":
                for variant in variants:
                    out = phase(f"jax_{number}_train_{variant_name(variant)}", lambda: jax_train(
                        cfg, folders, inputs, lengths, deadline, train_cache, variant))
                    by_variant.setdefault(variant_name(variant), {}).setdefault("train", {}).update(out)
                    if variant is variants[0]:
                        jx.setdefault("train", {}).update(out)
            else:
                jx["generate"] = phase(f"jax_{number}_generate", lambda: jax_generate(cfg, folders, inputs, deadline,
                                                                                      main_attn))
        train_cache.clear()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    ref = results.get("reference", {})

    # Generation comparison.
    jg, rg = results["jax"].get("generate", {}), ref.get("generate", {})
    gen = {"kwargs": gen_kwargs(cfg)}
    seqs = {k: np.asarray(r.pop("sequences")) for k, r in (("jax", jg), ("reference", rg))
            if isinstance(r, dict) and "sequences" in r}
    gen["shapes"] = {k: list(s.shape) for k, s in seqs.items()}
    expected = [cfg["gen_batch"], 1 + cfg["gen_new_tokens"]]
    gen["expected_shape"] = expected
    if len(seqs) == 2 and seqs["jax"].shape == seqs["reference"].shape:
        gen["token_agreement"] = float((seqs["jax"] == seqs["reference"]).mean())
    if any(list(s.shape) != expected for s in seqs.values()):
        log(f"!! generated lengths differ from {expected}: {gen['shapes']}")
    if jg.get("s") and rg.get("s"):
        gen["speedup"] = rg["s"] / jg["s"]
    results["generate"] = gen

    # Floor and targets.
    m = cfg["model"]
    n_floor = 16384 if not args.tiny else max(n for n in cfg["encoder_lengths"] if n <= m["max_position_embeddings"])
    cost = lsg_encoder_cost(m, n_floor)
    rates = results.get("rates", {})
    floor = {"tokens": n_floor, **cost,
             "sheet_compute_ms": 1e3 * cost["flops"] / H100_SXM["bf16_dense_flops"],
             "sheet_memory_ms": 1e3 * cost["bytes"] / H100_SXM["hbm_bytes_per_s"]}
    if rates:
        floor.update(matmul_flops=rates["matmul_flops"], bandwidth=rates["bandwidth"],
                     compute_ms=1e3 * cost["flops"] / rates["matmul_flops"],
                     memory_ms=1e3 * cost["bytes"] / rates["bandwidth"])
        floor["floor_ms"] = max(floor["compute_ms"], floor["memory_ms"])
        floor["sum_ms"] = floor["compute_ms"] + floor["memory_ms"]
    results["floor"] = floor
    results["targets"] = targets(results, cfg)
    sides = [("jax", results.get("jax", {})), ("original", ref), ("dense", results.get("dense_sdpa", {}))]
    main_names = {variants[0]["attn_implementation"], variant_name(variants[0])}  # already in results["jax"]
    sides += [(f"jax {name}", res) for name, res in results.get("jax_variants", {}).items() if name not in main_names]
    for side, res in sides:
        for part, items in (res.items() if side != "dense" else [("encoder", res)]):
            if isinstance(items, dict):
                if "skipped" in items:
                    results["skipped"].append(f"{side} {part}")
                for n, r in items.items():
                    if isinstance(r, dict) and "skipped" in r:
                        results["skipped"].append(f"{side} {part} {n}")
    log(f"FLOP count: {cost['formula']}")
    print("\n" + "\n".join(report(results, cfg)), flush=True)
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
