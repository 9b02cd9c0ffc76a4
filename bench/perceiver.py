"""deepmind/language-perceiver shape on one GPU: this project's JAX port beside transformers' PyTorch
PerceiverForMaskedLM (eager and torch.compile), in one process, on the same batch and weights.

    python bench/perceiver.py [--tiny] [--out results.json] [--skip-compile] [--steps N]

Model: configs/perceiver_mlm.py:paper's (201M parameters: 2048 byte positions of width 768, 256 latents of 1280, one
cross-attention, 26 self-attention layers, qk 256 / v 1280 channels), attention dropout 0.1 as the checkpoint's
config; batch 16 x 2048 bytes, whole words masked (perceiver_jax.masking) in random lower-case "words".

1. MLM training step, bf16 compute over float32 weights: the project's jitted, state-donating train step
   (jaxport.trainer.build + make_train_step over perceiver_jax.tasks' masked-LM loss) vs transformers under
   torch.autocast(bf16), eager and torch.compile. Both sides use AdamW (lr 1e-4, weight decay 0.01, no clipping):
   torch has no LAMB, and the optimizer is a small part of the step. Median ms/step, MFU.
2. Forward (logits of every position), bf16 compute over float32 weights: JAX model.jitted() vs transformers
   under autocast in inference_mode, eager and compiled. Median ms, MFU.
Model FLOPs are counted from the parameter shapes (every matmul: 2 x rows x kernel size, attention 2 x queries x keys
x (qk + v) channels; the training step 3 x the forward); MFU is against the larger bf16 matmul rate measured in torch
and JAX (8192^3). Each side is also timed back to back (as a stream of batches runs: calls queued, one wait at the
end), beside the synchronised median. Issue targets (H100 figures of the issue: eager 107 ms / 19.6 ms): training
step <= 45 ms, forward <= 10 ms, both faster than torch.compile. `--out` writes everything as JSON; the last lines
are a table.
--tiny: the tiny shape of configs/perceiver_mlm.py, batch 2 x 128, a CPU smoke test, with a float32 loss check.
"""
import os

# Both frameworks share the GPU: JAX takes a fixed pool up front, torch's caching allocator the rest.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # perceiver_jax / jaxport without installation

import argparse
import copy
import functools
import gc
import json
import platform
import tempfile
import time
import traceback

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from measure import chained_steps, compiled_memory, jax_back_to_back_ms, median_ms
from project_train import last_loss, train_setup
from rates import jax_matmul_peak
from torch_measure import (
    timed_torch_steps,
    torch_adamw,
    torch_back_to_back_ms,
    torch_free,
    torch_matmul_peak,
    torch_sync,
)

from jaxport import config as config_lib
from jaxport import trainer
from jaxport.hf import param_paths
from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM
from perceiver_jax.masking import MaskedBytes
from perceiver_jax.tasks import MaskedLanguageModelTask

FULL = dict(config="configs/perceiver_mlm.py:paper", batch=16, length=2048, warmup=5, steps=20, compile_warmup=10,
            forward_warmup=5, forward_runs=20, matmul_size=8192)
TINY = dict(config="configs/perceiver_mlm.py:tiny", batch=2, length=128, warmup=2, steps=3, compile_warmup=2,
            forward_warmup=1, forward_runs=3, matmul_size=512)
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01
TARGET_TRAIN_MS, TARGET_FORWARD_MS = 45.0, 10.0


def log(*args):
    print(*args, flush=True)


# ------------------------------------------------------------------------------------------------ arithmetic

def forward_flops(model: PerceiverForMaskedLM, batch: int, length: int) -> dict:
    """Matmul FLOPs of one forward pass, from the parameter shapes: each kernel applied to the rows it sees (the
    encoder's cross-attention keys/values to the bytes, its queries/outputs/MLP to the latents; the self-attention
    layers to the latents, num_blocks times; the decoder's keys/values to the latents and the rest to the byte
    queries), attention scores and values 2 x queries x keys x channels each, and the logits against the byte
    embeddings. Embedding gathers, norms and softmax are not counted."""
    config = model.config
    params = param_paths(model)
    latents, queries = batch * config.num_latents, batch * length
    terms = {"cross_attention": 0, "self_attention": 0, "decoder": 0, "attention": 0,
             "logits": 2 * queries * config.d_model * config.vocab_size}
    width = {}
    for path, value in params.items():
        if not path.endswith("/kernel"):
            continue
        module = path.rsplit("/", 2)[-2]
        if "encoder/cross_attention" in path:
            rows = batch * length if module in ("key", "value") else latents
            terms["cross_attention"] += 2 * rows * value.size
        elif "encoder/self_attends" in path:
            terms["self_attention"] += 2 * latents * value.size * config.num_blocks
        elif "decoder/" in path:
            rows = latents if module in ("key", "value") else queries
            terms["decoder"] += 2 * rows * value.size
        if module in ("query", "value"):
            width[path.rsplit("/", 2)[0] + "/" + module] = int(np.prod(value.shape[1:]))

    def channels(prefix):
        return width[f"{prefix}/query"] + width[f"{prefix}/value"]

    self_layers = sorted({path.split("/self_attends/")[1].split("/")[0] for path in width if "self_attends" in path})
    terms["attention"] = (
        2 * latents * length * channels("perceiver/encoder/cross_attention")
        + sum(2 * latents * config.num_latents * channels(f"perceiver/encoder/self_attends/{i}") * config.num_blocks
              for i in self_layers)
        + 2 * queries * config.num_latents * channels("perceiver/decoder/decoding_cross_attention"))
    return {"terms": terms, "total": sum(terms.values())}


# ------------------------------------------------------------------------------------------------ inputs, models

def make_batch(batch: int, length: int) -> dict:
    """Windows of random lower-case words (1-10 letters) between single spaces, whole words masked as the
    pre-training config masks them."""
    rng = np.random.default_rng(0)
    windows = []
    for _ in range(batch):
        text = " ".join("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(1, 11)))
                        for _ in range(length))
        windows.append(np.frombuffer(text.encode()[:length], np.uint8).astype(np.int32) + 6)
    examples = [MaskedBytes(seed=0)({"tokens": window}) for window in windows]
    return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def torch_labels(batch: dict) -> np.ndarray:
    return np.where(batch["label_mask"] > 0, batch["labels"], -100)


def torch_reference(model_config: dict):
    torch.manual_seed(0)
    fields = {k: v for k, v in model_config.items() if k in transformers.PerceiverConfig().to_dict()}
    return transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**fields))


class BenchTask(MaskedLanguageModelTask):
    """The masked-LM task's model and loss over fixed benchmark batches."""

    def __init__(self, model_config: PerceiverConfig):
        self.model_config = model_config


# ------------------------------------------------------------------------------------------------ JAX

def jax_train(cfg, model_config, folder, batch) -> dict:
    task = BenchTask(model_config)
    state, step, batch_sharding = train_setup(task, folder, LEARNING_RATE, WEIGHT_DECAY)
    inputs = trainer.global_batch(batch, batch_sharding)
    compiled = step.lower(state, inputs).compile()
    memory = compiled_memory(compiled)
    first_loss, times = None, []
    for i in range(cfg["warmup"] + cfg["steps"]):
        jax.block_until_ready(state)
        start = time.perf_counter()
        state = compiled(state, inputs)
        jax.block_until_ready(state)
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - start)
        if i == 0:
            first_loss = last_loss(state)
    record = {"ms": median_ms(times), "times_ms": [1e3 * t for t in times], "first_loss": first_loss,
              "last_loss": last_loss(state), "memory": memory}
    # back to back, as the trainer dispatches them
    return {**record, "back_to_back_ms": jax_back_to_back_ms(chained_steps(compiled, state, inputs), cfg["steps"])}


def jax_forward(cfg, folder, batch) -> dict:
    """bf16 compute over the float32 weights the training step keeps; the model's jitted forward (PretrainedModel.
    jitted: the parameters passed as a few packed arrays)."""
    forward = PerceiverForMaskedLM.from_pretrained(folder, dtype=jnp.bfloat16).jitted()
    inputs, mask = jnp.asarray(batch["inputs"]), jnp.asarray(batch["attention_mask"])
    memory = compiled_memory(forward.func.lower(*forward.args, inputs=inputs, attention_mask=mask).compile())
    call = lambda: forward(inputs=inputs, attention_mask=mask).logits
    for _ in range(cfg["forward_warmup"]):
        jax.block_until_ready(call())
    times = []
    for _ in range(cfg["forward_runs"]):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return {"ms": median_ms(times), "times_ms": [1e3 * t for t in times], "memory": memory,
            "back_to_back_ms": jax_back_to_back_ms(call, cfg["forward_runs"])}


# ------------------------------------------------------------------------------------------------ PyTorch

def torch_train(cfg, reference, batch, device, compiled: bool) -> dict:
    model = copy.deepcopy(reference).to(device).train()
    optimizer, kind = torch_adamw(model.parameters(), LEARNING_RATE, WEIGHT_DECAY)
    forward = torch.compile(model) if compiled else model
    inputs = torch.from_numpy(batch["inputs"]).long().to(device)
    mask = torch.from_numpy(batch["attention_mask"]).long().to(device)
    labels = torch.from_numpy(torch_labels(batch)).long().to(device)

    def step(forward, optimizer):  # arguments, not closures: the finally below frees them
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(inputs=inputs, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = cfg["compile_warmup"] if compiled else cfg["warmup"]
    try:
        record = timed_torch_steps(functools.partial(step, forward, optimizer), device, warmup, cfg["steps"],
                                   "compile" if compiled else "eager")
        record["peak_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    finally:
        del model, optimizer, forward
        torch_free(device)
    return {**record, "optimizer": f"torch.optim.AdamW ({kind})"}


def torch_forward(cfg, reference, batch, device, compiled: bool) -> dict:
    model = copy.deepcopy(reference).to(device).eval()
    forward = torch.compile(model) if compiled else model
    inputs = torch.from_numpy(batch["inputs"]).long().to(device)
    mask = torch.from_numpy(batch["attention_mask"]).long().to(device)
    times = []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            for i in range(cfg["compile_warmup" if compiled else "forward_warmup"] + cfg["forward_runs"]):
                torch_sync(device)
                start = time.perf_counter()
                forward(inputs=inputs, attention_mask=mask).logits
                torch_sync(device)
                if i >= cfg["compile_warmup" if compiled else "forward_warmup"]:
                    times.append(time.perf_counter() - start)
            back_to_back = torch_back_to_back_ms(functools.partial(forward, inputs=inputs, attention_mask=mask),
                                                 device, cfg["forward_runs"])
    finally:
        del model, forward
        torch_free(device)
    return {"ms": median_ms(times), "times_ms": [1e3 * t for t in times], "back_to_back_ms": back_to_back}


def guarded(name, fn):
    log(f" {name} ...")
    try:
        result = fn()
        log(f"   {name}: {result['ms']:.2f} ms")
        return result
    except Exception as e:  # noqa: BLE001 - one failure loses one number
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


def fp32_loss_check(reference, folder, batch) -> dict:
    """Tiny mode: the batch's masked-LM loss in float32 on both sides (checks weights, masks and loss)."""
    model = PerceiverForMaskedLM.from_pretrained(folder)
    total, count = BenchTask(model.config).loss(model, {k: jnp.asarray(v) for k, v in batch.items()}, None)
    with torch.no_grad():
        loss = reference.eval()(inputs=torch.from_numpy(batch["inputs"]).long(),
                                attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
                                labels=torch.from_numpy(torch_labels(batch)).long()).loss.item()
    ours = float(total / count)
    return {"jax": ours, "torch": loss, "rel_diff": abs(ours - loss) / abs(loss)}


def versions(device) -> dict:
    return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "jax_device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape and batch (CPU smoke test)")
    parser.add_argument("--out", help="write all results to this JSON file")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile runs")
    parser.add_argument("--steps", type=int, help="timed training steps (median taken)")
    args = parser.parse_args(argv)
    cfg = dict(TINY if args.tiny else FULL)
    cfg["steps"] = args.steps or cfg["steps"]
    transformers.logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    jnp.zeros(()).block_until_ready()  # JAX claims its memory pool before torch allocates anything
    info = versions(device)
    log(f"devices: torch {info['torch_device']} | jax {info['jax_device']}")
    model_config = config_lib.load_config(str(ROOT / cfg["config"])).model.to_dict()
    results = {"mode": "tiny" if args.tiny else "language-perceiver", "config": cfg, "model": model_config,
               "versions": info}
    batch = make_batch(cfg["batch"], cfg["length"])
    results["masked_fraction"] = float(batch["label_mask"].mean())

    log("peak bf16 matmul ...")
    peaks = {"torch": torch_matmul_peak(cfg["matmul_size"], device), "jax": jax_matmul_peak(cfg["matmul_size"])}
    peak = max(peaks.values())
    results["matmul_peak_flops"] = {**peaks, "used": peak}

    with tempfile.TemporaryDirectory() as folder:
        reference = torch_reference(model_config)
        reference.save_pretrained(folder)
        results["num_params"] = sum(p.numel() for p in reference.parameters())
        jax_model = PerceiverForMaskedLM.from_pretrained(folder)
        flops = forward_flops(jax_model, cfg["batch"], cfg["length"])
        del jax_model
        results["forward_flops"] = flops
        log(f"{results['num_params'] / 1e6:.1f}M parameters; forward FLOPs "
            + " + ".join(f"{k} {v:.3g}" for k, v in flops["terms"].items()) + f" = {flops['total']:.4g}")
        if args.tiny:
            results["fp32_loss_check"] = fp32_loss_check(reference, folder, batch)
            log(f"fp32 loss check: {results['fp32_loss_check']}")

        train = {"jax": guarded("train jax", lambda: jax_train(cfg, jax_model_config(folder), folder, batch))}
        gc.collect()
        train["torch_eager"] = guarded("train torch eager", lambda: torch_train(cfg, reference, batch, device, False))
        forward = {"jax": guarded("forward jax", lambda: jax_forward(cfg, folder, batch)),
                   "torch_eager": guarded("forward torch eager",
                                          lambda: torch_forward(cfg, reference, batch, device, False))}
        if not args.skip_compile:
            train["torch_compile"] = guarded("train torch compile",
                                             lambda: torch_train(cfg, reference, batch, device, True))
            forward["torch_compile"] = guarded("forward torch compile",
                                               lambda: torch_forward(cfg, reference, batch, device, True))
            torch._dynamo.reset()
    for kind, table, factor in (("train", train, 3), ("forward", forward, 1)):
        for r in table.values():
            if "ms" in r:
                r["mfu"] = factor * flops["total"] / (r["ms"] / 1e3) / peak
                r["bytes_per_s"] = cfg["batch"] * cfg["length"] / (r["ms"] / 1e3)
        results[kind] = table
    results["targets"] = targets(train, forward)
    report(results, peak)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
        log(f"wrote {args.out}")
    return results


def jax_model_config(folder) -> PerceiverConfig:
    return PerceiverForMaskedLM.from_pretrained(folder).config


def targets(train: dict, forward: dict) -> dict:
    ms = lambda table, name: table.get(name, {}).get("ms")
    checks = {"train_ms <= 45": (ms(train, "jax"), TARGET_TRAIN_MS), "forward_ms <= 10": (ms(forward, "jax"),
                                                                                         TARGET_FORWARD_MS),
              "train faster than torch.compile": (ms(train, "jax"), ms(train, "torch_compile")),
              "forward faster than torch.compile": (ms(forward, "jax"), ms(forward, "torch_compile"))}
    return {name: None if ours is None or bound is None else ours <= bound for name, (ours, bound) in checks.items()}


def report(results: dict, peak: float) -> None:
    log(f"\n== Perceiver IO {results['mode']} | {results['versions']['torch_device']} | batch "
        f"{results['config']['batch']} x {results['config']['length']} bytes | MFU vs {peak / 1e12:.1f} TFLOP/s")
    log(f"{'name':<24}{'ms':>10}{'MFU':>8}  vs torch eager  back to back ms")
    for kind in ("train", "forward"):
        eager = results[kind].get("torch_eager", {}).get("ms")
        for name, r in results[kind].items():
            if "error" in r:
                log(f"{kind + ' ' + name:<24}  FAILED: {r['error'].splitlines()[0][:80]}")
                continue
            ratio = f"{eager / r['ms']:.2f}x" if eager else "-"
            log(f"{kind + ' ' + name:<24}{r['ms']:>10.2f}{100 * r['mfu']:>7.1f}%  {ratio:>13}  "
                f"{r['back_to_back_ms']:.2f}")
    log(f"targets: {results['targets']}")


if __name__ == "__main__":
    main()
