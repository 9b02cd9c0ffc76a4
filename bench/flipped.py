"""T5 v1.1 at FLIPPED's sizes on one GPU: this project's JAX port beside transformers' PyTorch T5, in one process.

    python bench/flipped.py --what score --out flipped_score.json      # scoring, 3B and 11B, JAX and PyTorch
    python bench/flipped.py --what train3b --out flipped_train3b.json  # 3B training step, largest batch, MFU
    python bench/flipped.py --what train11b --out flipped_train11b.json  # does an 11B training step fit? MFU
    python bench/flipped.py --tiny                                     # CPU smoke test of all three (tiny shapes)

Random weights of the real shapes (t5-v1_1-xl: d_model 2048, d_ff 5120, 32 heads; xxl: d_model 4096, d_ff 10240,
64 heads; both 24 + 24 layers, heads of 64, gated-gelu, untied head, vocabulary 32128), dropout 0 (FLIPPED trains
with 0.1; T5's attention dropout would keep attention on the einsums, and bench/t5.py measures without it too).

1. Zero-shot scoring (`score`): 32 examples x 4 options, inputs of 384 tokens (lengths 192 to 384), one instruction
   of up to 64 tokens per example; the score of an option is the summed log-likelihood of the instruction's tokens.
   JAX: flipped_jax.score_options on a bf16 FlippedModel (attn_implementation auto: cuDNN attention); PyTorch:
   transformers' T5ForConditionalGeneration in bf16 (its default attention, recorded), the same sums and argmax
   under inference_mode. Median ms per batch, examples/s, JAX's speedup.
2. Training step (`train3b`, `train11b`): the flipped loss (gold and wrong inputs as 2B rows, the instruction
   teacher-forced after each), Adafactor as FLIPPED trains (no parameter scaling, constant 5e-5, clipping 0.5),
   bf16 compute over float32 parameters, T5Config.remat (3B: dots, 11B: full), through jaxport.trainer.build +
   make_train_step with the state donated, as python -m train runs it. 3B: inputs 512, 11B: 384; instructions 64.
   3B, the largest batch that fits: the compiled step's memory (arguments + outputs + temporaries - aliased) at two
   probe batches gives a fixed part and a part per example, hence the largest batch within 95% of the device's
   memory; that batch is compiled and timed (one step down by 15% if it runs out of memory). 11B, whether it fits:
   batch 8, else 2, by the same compiled memory, with float32 parameters, then with bfloat16 parameters if those do
   not fit; the first that fits is timed. MFU: model FLOPs counted
   analytically (bench/measure.py's t5_train_flops, printed; rematerialised work not counted) over the step time,
   against the bf16 matmul peak measured in the run.

`--budget` (seconds, default 540) bounds the run: an item starts only with enough of it left; skipped items are named.
`--train-batch N` skips the search. The last lines are a compact table; `--out` writes everything as JSON.
"""
import os

# PyTorch and JAX take turns on the GPU: JAX allocates as it goes (no pool taken up front), up to 95% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # flipped_jax, jaxport, t5_jax without installation

import argparse
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx
from measure import median_ms, t5_train_flops, write_results
from project_train import last_loss, train_setup
from rates import jax_matmul_peak
from t5 import versions
from torch_measure import torch_free, torch_sync

from flipped_jax import FlippedModel, score_options
from flipped_jax.tasks import FlippedTask
from jaxport import runtime, trainer
from jaxport.seq2seq import shift_right
from t5_jax import T5Config
from t5_jax.modeling import attention_implementation

T5_V1_1 = dict(vocab_size=32128, d_kv=64, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
SHAPES = {"3b": dict(T5_V1_1, d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32),
          "11b": dict(T5_V1_1, d_model=4096, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64)}
TINY_SHAPES = {"3b": dict(T5_V1_1, vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                          num_heads=4),
               "11b": dict(T5_V1_1, vocab_size=384, d_model=96, d_kv=16, d_ff=192, num_layers=2, num_decoder_layers=2,
                           num_heads=6)}
ADAFACTOR = dict(name="adafactor", multiply_by_parameter_scale=False, clip_norm=0.5)  # configs/flipped_train.py's
LEARNING_RATE = 5e-5
FULL = dict(score=dict(batch=32, options=4, inputs=384, instruction=64, warmup=2, calls=5),
            # 3b: the largest batch, from two probes; 11b: the first of the candidates that fits.
            train={"3b": dict(inputs=512, targets=64, remat="dots", probes=(8, 16), param_dtypes=("float32",)),
                   "11b": dict(inputs=384, targets=64, remat="full", candidates=(8, 2),
                               param_dtypes=("float32", "bfloat16"))},
            steps=10, warmup=2, matmul_size=8192, budget=540, memory_margin=0.95, max_batch=1024,
            # An item starts only with this much of the budget left (compiles included).
            needs={"score": 150, "train3b": 300, "train11b": 400})
TINY = dict(score=dict(batch=2, options=4, inputs=32, instruction=8, warmup=1, calls=2),
            # No device memory limit on a CPU: a stand-in, cpu_limit_factor times the first compiled step's memory.
            train={"3b": dict(inputs=32, targets=8, remat="dots", probes=(2, 4), param_dtypes=("float32",),
                              cpu_limit_factor=3.0),
                   "11b": dict(inputs=32, targets=8, remat="full", candidates=(64, 2),
                               param_dtypes=("float32", "bfloat16"), cpu_limit_factor=0.5)},
            steps=2, warmup=1, matmul_size=256, budget=600, memory_margin=0.95, max_batch=16,
            needs={"score": 0, "train3b": 0, "train11b": 0})
WHAT = ("score", "train3b", "train11b")


def log(*args):
    print(*args, flush=True)


# ------------------------------------------------------------------------------------------------ models

def random_jax_model(config: T5Config, dtype):
    """A FlippedModel with random weights in `dtype`, initialised on the device in one jitted call."""
    make = lambda: FlippedModel(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.split(make())[1])())


def random_torch_model(shape: dict, device, dtype):
    """transformers' T5 built directly in `dtype` on `device`, with its own random lm_head (transformers 5 ties it
    whatever tie_word_embeddings says)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.T5ForConditionalGeneration(transformers.T5Config(**shape))
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * shape["d_model"] ** -0.5)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


# ------------------------------------------------------------------------------------------------ scoring

def score_inputs(cfg: dict, vocab: int) -> tuple[np.ndarray, ...]:
    """input_ids, attention_mask [B, K, L] (lengths L/2 to L), instruction ids and mask [B, T] (lengths T/2 to T,
    ending in </s>), option_mask [B, K] (all real)."""
    rng = np.random.default_rng(0)
    B, K, L, T = cfg["batch"], cfg["options"], cfg["inputs"], cfg["instruction"]
    lengths = rng.integers(L // 2, L + 1, (B, K))
    attention_mask = (np.arange(L) < lengths[..., None]).astype(np.int32)
    input_ids = rng.integers(2, vocab, (B, K, L)).astype(np.int32) * attention_mask
    instruction_lengths = rng.integers(T // 2, T + 1, B)
    instruction_mask = (np.arange(T) < instruction_lengths[:, None]).astype(np.int32)
    instruction_ids = rng.integers(2, vocab, (B, T)).astype(np.int32) * instruction_mask
    instruction_ids[np.arange(B), instruction_lengths - 1] = T5_V1_1["eos_token_id"]
    return input_ids, attention_mask, instruction_ids, instruction_mask, np.ones((B, K), np.int32)


def torch_score_options(model, input_ids, attention_mask, instruction_ids, instruction_mask, option_mask):
    """The authors' scoring on transformers' T5: per option, the instruction's summed token log-likelihood after
    (input, option); the prediction its argmax. Arguments as score_options' (instruction shared by the options)."""
    B, K, L = input_ids.shape
    labels = instruction_ids[:, None].expand(B, K, -1).reshape(B * K, -1)
    label_mask = instruction_mask[:, None].expand(B, K, -1).reshape(B * K, -1)
    logits = model(input_ids=input_ids.reshape(B * K, L), attention_mask=attention_mask.reshape(B * K, L),
                   decoder_input_ids=model._shift_right(labels), decoder_attention_mask=label_mask).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]
    scores = (log_probs * label_mask).sum(-1).reshape(B, K).masked_fill(option_mask == 0, float("-inf"))
    return scores, scores.argmax(-1)


def time_calls(call, sync, warmup: int, calls: int) -> dict:
    times = []
    for i in range(warmup + calls):
        start = time.perf_counter()
        out = call()
        sync(out)
        elapsed = time.perf_counter() - start
        if i == 0:
            first = elapsed
        if i >= warmup:
            times.append(elapsed)
    return {"ms": median_ms(times), "times_ms": [1e3 * t for t in times], "first_call_s": first}


def jax_score(shape: dict, cfg: dict, inputs) -> dict:
    """(The model goes with the call: the caller frees its memory.)"""
    config = T5Config.create(**shape)
    start = time.perf_counter()
    model = random_jax_model(config, jnp.bfloat16)
    jax.block_until_ready(nnx.state(model))
    init_s = time.perf_counter() - start
    log(f"  jax: random bf16 weights in {init_s:.0f} s")
    out = time_calls(lambda: score_options(model, *inputs), jax.block_until_ready, cfg["warmup"], cfg["calls"])
    out["init_s"] = init_s
    out["attention"] = attention_implementation(config, jnp.bfloat16, (cfg["inputs"], cfg["instruction"]), False)
    return out


def torch_score(shape: dict, cfg: dict, inputs, device) -> dict:
    start = time.perf_counter()
    model = random_torch_model(shape, device, torch.bfloat16)
    torch_sync(device)
    init_s = time.perf_counter() - start
    log(f"  torch: random bf16 weights in {init_s:.0f} s")
    tensors = [torch.from_numpy(x).long().to(device) for x in inputs]
    with torch.inference_mode():
        out = time_calls(lambda: torch_score_options(model, *tensors), lambda _: torch_sync(device), cfg["warmup"],
                         cfg["calls"])
    out["init_s"] = init_s
    out["attention"] = model.config._attn_implementation
    return out


def parity_check(shape: dict, cfg: dict, inputs) -> dict:
    """Tiny mode: the same weights (torch save_pretrained -> FlippedModel.from_pretrained), float32 on both sides:
    the scores' relative error and whether the predictions agree."""
    reference = random_torch_model(shape, "cpu", torch.float32)
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model = FlippedModel.from_pretrained(folder)
        ours, ours_pred = (np.asarray(x) for x in score_options(model, *inputs))
    with torch.inference_mode():
        theirs, theirs_pred = (x.numpy() for x in torch_score_options(reference, *map(torch.from_numpy, (
            x.astype(np.int64) for x in inputs))))
    return {"scores_rel_err": float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)),
            "same_predictions": bool((ours_pred == theirs_pred).all())}


def score_part(shapes: dict, cfg: dict, device, tiny: bool) -> dict:
    results = {}
    for name, shape in shapes.items():
        inputs = score_inputs(cfg, shape["vocab_size"])
        log(f"scoring {name}: {cfg['batch']} examples x {cfg['options']} options, inputs {cfg['inputs']}, "
            f"instruction {cfg['instruction']} ...")
        r = {}
        if tiny:
            r["parity_float32"] = parity_check(shape, cfg, inputs)
            log(f"  float32 parity with transformers: {r['parity_float32']}")
        r["torch"] = torch_score(shape, cfg, inputs, device)
        torch_free(device)
        log(f"  torch ({r['torch']['attention']} attention): {r['torch']['ms']:.1f} ms")
        r["jax"] = jax_score(shape, cfg, inputs)
        torch_free(device)
        log(f"  jax ({r['jax']['attention']} attention): {r['jax']['ms']:.1f} ms (first call incl. compile "
            f"{r['jax']['first_call_s']:.1f} s)")
        for side in ("torch", "jax"):
            r[side]["examples_per_s"] = cfg["batch"] / (r[side]["ms"] / 1e3)
        r["speedup_jax_vs_torch"] = r["torch"]["ms"] / r["jax"]["ms"]
        results[name] = r
    return results


# ------------------------------------------------------------------------------------------------ training

class FlippedStepTask(FlippedTask):
    """FlippedTask's model and loss without its data pipeline: benchmark batches are fixed arrays."""

    def __init__(self, model_config: T5Config, param_dtype):
        self.model_config = model_config
        self.param_dtype = param_dtype
        self.data_config = types.SimpleNamespace(ul_weight=3.0)

    def create_model(self, config, rngs: nnx.Rngs):
        return FlippedModel(self.model_config, dtype=jnp.dtype(config.train.compute_dtype),
                            param_dtype=self.param_dtype, rngs=rngs)


def train_batch(batch: int, inputs: int, targets: int, vocab: int) -> dict:
    """Every position a real token: input_ids, attention_mask [B, 2, L] (gold then wrong input), the instruction."""
    rng = np.random.default_rng(1)
    input_ids = rng.integers(2, vocab, (batch, 2, inputs)).astype(np.int32)
    labels = rng.integers(2, vocab, (batch, targets)).astype(np.int32)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "labels": labels,
            "decoder_input_ids": np.asarray(shift_right(labels, 0, 0)), "decoder_attention_mask": np.ones_like(labels)}


def compiled_bytes(compiled) -> int:
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def device_limit() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats["bytes_limit"])


def train_one(shape: dict, tcfg: dict, cfg: dict, param_dtype: str, fixed_batch: int | None) -> dict:
    """Probe, pick the largest batch, time it. Returns the record (fits False when no batch fits)."""
    model_config = T5Config.create(**shape, remat=tcfg["remat"])
    task = FlippedStepTask(model_config, jnp.dtype(param_dtype))
    setup_start = time.perf_counter()
    state, step, batch_sharding = train_setup(task, None, LEARNING_RATE, 0.0, optimizer=ADAFACTOR)
    r = {"remat": tcfg["remat"], "param_dtype": param_dtype, "setup_s": time.perf_counter() - setup_start}
    abstract = lambda b: {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding) for k, v in
                          train_batch(b, tcfg["inputs"], tcfg["targets"], shape["vocab_size"]).items()}

    def compile_at(state, batch):
        start = time.perf_counter()
        compiled = step.lower(state, abstract(batch)).compile()
        r.setdefault("compile_s", {})[str(batch)] = time.perf_counter() - start
        return compiled

    compiled = None
    if fixed_batch is not None:
        batch = fixed_batch
    elif "probes" in tcfg:
        probes = {b: compiled_bytes(compile_at(state, b)) for b in tcfg["probes"]}
        (b1, m1), (b2, m2) = sorted(probes.items())
        per_example = max((m2 - m1) / (b2 - b1), 1.0)
        fixed = m1 - per_example * b1
        limit = device_limit() or int(tcfg["cpu_limit_factor"] * m1)
        batch = int((cfg["memory_margin"] * limit - fixed) // per_example)
        batch = min(batch - batch % 8 if batch >= 16 else batch, cfg["max_batch"])
        r.update(probe_bytes=probes, fixed_bytes=fixed, bytes_per_example=per_example, limit_bytes=limit)
        log(f"    compiled at batch {b1}: {m1 / 2**30:.1f} GiB, {b2}: {m2 / 2**30:.1f} GiB: fixed {fixed / 2**30:.1f} "
            f"GiB + {per_example / 2**30:.3f} GiB per example; {limit / 2**30:.1f} GiB on the device: batch {batch}")
    else:
        batch = 0
        for candidate in tcfg["candidates"]:
            compiled = compile_at(state, candidate)
            needed = compiled_bytes(compiled)
            limit = r.get("limit_bytes") or device_limit() or int(tcfg["cpu_limit_factor"] * needed)
            r.setdefault("candidate_bytes", {})[str(candidate)] = needed
            r["limit_bytes"] = limit
            log(f"    batch {candidate}: {needed / 2**30:.1f} GiB compiled, {limit / 2**30:.1f} GiB on the device")
            if needed <= cfg["memory_margin"] * limit:
                batch = candidate
                break
    if batch < 1:
        r.update(fits=False, batch=0)
        return r
    for attempt in range(2):
        try:
            if compiled is None:
                compiled = compile_at(state, batch)
            r["compiled_bytes"] = compiled_bytes(compiled)
            data = trainer.global_batch(train_batch(batch, tcfg["inputs"], tcfg["targets"], shape["vocab_size"]),
                                        batch_sharding)
            times = []
            for i in range(cfg["warmup"] + cfg["steps"]):
                start = time.perf_counter()
                state = compiled(state, data)
                jax.block_until_ready(state)
                if i >= cfg["warmup"]:
                    times.append(time.perf_counter() - start)
                if i == 0:
                    r["first_loss"] = last_loss(state)
            break
        except jax.errors.JaxRuntimeError as error:
            if "RESOURCE_EXHAUSTED" not in str(error) or attempt or batch == 1:
                raise
            log(f"    batch {batch} ran out of memory: trying {max(1, int(batch * 0.85))}")
            batch, compiled = max(1, int(batch * 0.85)), None
            state, step, batch_sharding = train_setup(task, None, LEARNING_RATE, 0.0, optimizer=ADAFACTOR)
    if int(state.nonfinite_step) >= 0:
        raise FloatingPointError(f"loss became non-finite at step {int(state.nonfinite_step)}")
    r.update(fits=True, batch=batch, ms=median_ms(times), times_ms=[1e3 * t for t in times],
             last_loss=last_loss(state))
    return r


def train_part(name: str, shape: dict, tcfg: dict, cfg: dict, peak: float, fixed_batch: int | None,
               device) -> dict:
    results = {"inputs": tcfg["inputs"], "targets": tcfg["targets"], "attempts": []}
    for param_dtype in tcfg["param_dtypes"]:
        log(f"training {name}: Adafactor, bf16 compute over {param_dtype} parameters, remat {tcfg['remat']} ...")
        r = train_one(shape, tcfg, cfg, param_dtype, fixed_batch)
        torch_free(device)
        results["attempts"].append(r)
        if r["fits"]:
            flops = t5_train_flops(shape, 2 * r["batch"], tcfg["inputs"], tcfg["targets"])
            r.update(flops=flops, mfu=flops["total"] / (r["ms"] / 1e3) / peak,
                     examples_per_s=r["batch"] / (r["ms"] / 1e3),
                     tokens_per_s=2 * r["batch"] * (tcfg["inputs"] + tcfg["targets"]) / (r["ms"] / 1e3),
                     attention=attention_implementation(T5Config.create(**shape), jnp.bfloat16,
                                                        (tcfg["inputs"], tcfg["targets"]), True))
            log(f"  batch {r['batch']} ({2 * r['batch']} rows): {r['ms']:.0f} ms, MFU {100 * r['mfu']:.1f}% "
                f"({r['attention']} attention), loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}")
            break
        log(f"  no batch fits with {param_dtype} parameters")
    results["fits"] = any(r["fits"] for r in results["attempts"])
    return results


# ------------------------------------------------------------------------------------------------ main

def table(results: dict) -> list[str]:
    lines = []
    for name, r in results.get("score", {}).items():
        if "skipped" in r:
            continue
        lines.append(f"score {name:<4} jax {r['jax']['ms']:8.1f} ms {r['jax']['examples_per_s']:7.1f} ex/s | torch "
                     f"{r['torch']['ms']:8.1f} ms {r['torch']['examples_per_s']:7.1f} ex/s | "
                     f"{r['speedup_jax_vs_torch']:.2f}x")
    for name in ("3b", "11b"):
        r = results.get(f"train{name}")
        if not r or "skipped" in r:
            continue
        for attempt in r["attempts"]:
            if attempt["fits"]:
                lines.append(f"train {name:<4} {attempt['param_dtype']} params, remat {attempt['remat']}: batch "
                             f"{attempt['batch']} in {attempt['ms']:.0f} ms, MFU {100 * attempt['mfu']:.1f}%, "
                             f"{attempt['examples_per_s']:.1f} ex/s")
            else:
                lines.append(f"train {name:<4} {attempt['param_dtype']} params, remat {attempt['remat']}: "
                             "no batch fits")
    if results["skipped"]:
        lines.append(f"skipped for the time budget: {', '.join(results['skipped'])}")
    return lines


def main(argv=None) -> dict:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and batches (CPU smoke test)")
    parser.add_argument("--what", default=",".join(WHAT), help=f"comma-separated, of {', '.join(WHAT)}")
    parser.add_argument("--shapes", default="3b,11b", help="scoring: comma-separated, of 3b, 11b")
    parser.add_argument("--train-batch", type=int, help="examples per training step (skips the search)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 540)")
    parser.add_argument("--out", help="write all results to this JSON file")
    args = parser.parse_args(argv)
    cfg = dict(TINY if args.tiny else FULL)
    if args.budget:
        cfg["budget"] = args.budget
    what = args.what.split(",")
    if set(what) - set(WHAT):
        parser.error(f"--what: unknown {sorted(set(what) - set(WHAT))}; choose from {WHAT}")
    shapes = TINY_SHAPES if args.tiny else SHAPES
    runtime.configure()  # before the random weights are drawn: XLA's default threefry lowering compiled a 300M
    # T5's random init for over 200 s on an H100 (bench/RESULTS.md), the GPU kernel lowering in seconds
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = versions(device)
    log(f"devices: torch {info['torch_device']} | jax {info['jax_device']}")
    if not args.tiny and (device.type != "cuda" or jax.default_backend() != "gpu"):
        log("!! full-size run without a GPU on both sides: numbers will not mean much")
    results = {"mode": "tiny" if args.tiny else "full", "config": cfg, "shapes": shapes, "versions": info,
               "skipped": []}
    left = lambda: cfg["budget"] - (time.perf_counter() - start)

    if "score" in what:
        if left() < cfg["needs"]["score"]:
            results["skipped"].append("score")
        else:
            chosen = {name: shapes[name] for name in args.shapes.split(",")}
            results["score"] = score_part(chosen, cfg["score"], device, args.tiny)
    if any(part.startswith("train") for part in what):
        peak = jax_matmul_peak(cfg["matmul_size"])
        results["matmul_peak_flops"] = {"jax": peak, "size": cfg["matmul_size"]}
        log(f"bf16 matmul peak (jax, {cfg['matmul_size']}^3): {peak / 1e12:.1f} TFLOP/s")
        for name in ("3b", "11b"):
            part = f"train{name}"
            if part not in what:
                continue
            if left() < cfg["needs"][part]:
                results["skipped"].append(part)
                continue
            results[part] = train_part(name, shapes[name], cfg["train"][name], cfg, peak, args.train_batch, device)
    if device.type == "cuda":
        results["torch_max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    results["total_s"] = time.perf_counter() - start

    log(f"\n== FLIPPED T5 v1.1 {results['mode']} | {info['torch_device']} | jax {info['jax']} torch {info['torch']} "
        f"transformers {info['transformers']}")
    for line in table(results):
        log(line)
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
