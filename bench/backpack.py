"""Backpack-GPT2 shape on one GPU: this project's JAX port beside the authors' PyTorch code, eager and under
torch.compile, in one process; plain GPT-2 small beside transformers' GPT-2 under torch.compile.

    python bench/backpack.py [--tiny] [--out results.json] [--ref-file PATH] [--skip-compile] [--skip-gpt2]
                             [--skip-generate] [--skip-parts] [--steps N] [--dropout P] [--train-batch B]
                             [--attn-implementation NAME]

Model: n_embd 768, 12 layers, 12 heads, 16 senses, sense MLP 4 x wider, vocab 50264, 512 positions, attention scaled
by the inverse layer index (the authors' stanfordnlp/backpack-gpt2), dropout --dropout (default 0.1, the released
config's). The reference is the authors' modeling file as pyvene 0.1.8 ships it
(pyvene/models/backpack_gpt2/modelings_backpack_gpt2.py), loaded by path, not through pyvene's package: --ref-file,
default the file of an installed pyvene, found without importing it. Random weights built by the reference are saved
as an HF folder, and JAX loads that folder (BackpackGPT2LMHeadModel.from_pretrained).

1. Training step, batch 32 x 512, next-token cross-entropy, AdamW (lr 6e-4, weight decay 0.1, no clipping), bf16
   compute over float32 weights: the project's jitted, state-donating step (jaxport.trainer.build +
   make_train_step over backpack_jax.tasks.CausalLMTask's loss, as `python -m train` runs it) vs the reference under
   torch.autocast(bf16) with fused AdamW, eager and torch.compile. Median ms/step, tokens/s, MFU (FLOPs counted
   below, against the larger of the bf16 matmul rates measured here in torch and JAX, and against the H100/H200
   data sheet's 989 TFLOP/s).
2. The same for plain GPT-2 small (vocab 50257, 1024 positions, the same batch): backpack_jax.GPT2LMHeadModel vs
   transformers' GPT2LMHeadModel (sdpa attention) under torch.compile (and eager).
3. Greedy generation, batch 32, prompt 128 tokens, exactly 128 new tokens, bf16 weights: JAX `model.generate` (a KV
   cache for the contextualization network, senses and sense keys cached) vs what transformers' generate does with
   the original, which has no cache: the whole sequence through its forward at every step (a greedy loop).
4. Where the JAX step's time goes (--skip-parts leaves it out): forward + backward, jitted, of the GPT-2
   contextualization network alone, the sense network alone, and the weighted sum of senses alone, at the training
   shape in bf16.

FLOPs (2 per multiply-add, training = 3 x forward): 6 x (the matmul weights a token passes through) per token
(GPT-2 blocks, the sense network's two MLPs, the weight network's projection, the output layer over the vocabulary),
plus causal attention counted in full (12 x layers x d x T per token, as PaLM's MFU counts it), plus Backpack's
weighted sum of senses (6 x senses x T x d per token) and sense-weight scores (6 x T x d per token). Embedding
lookups, norms, softmax and the optimizer are not counted. The formula and terms are printed.

--tiny: a tiny shape and batch, a CPU smoke test of every path (five minutes on 2 cores, mostly torch.compile).
"""
import os

# Both frameworks share the GPU: JAX takes a fixed pool up front, torch's caching allocator the rest.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # backpack_jax / jaxport without installation

import argparse
import dataclasses
import functools
import gc
import importlib.util
import json
import platform
import statistics
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
from flax import nnx
from measure import median_ms, write_results
from project_train import timed_train
from rates import jax_matmul_peak
from torch_measure import timed_torch_steps, torch_adamw, torch_free, torch_matmul_peak, torch_sync

from backpack_jax import BackpackGPT2Config, BackpackGPT2LMHeadModel, GPT2Config, GPT2LMHeadModel
from backpack_jax.configuration import ATTN_IMPLEMENTATIONS
from backpack_jax.modeling import attention_implementation
from backpack_jax.tasks import CausalLMTask

BACKPACK = dict(vocab_size=50264, n_positions=512, n_embd=768, n_layer=12, n_head=12, num_senses=16,
                sense_intermediate_scale=4, scale_attn_by_inverse_layer_idx=True, activation_function="gelu_new",
                layer_norm_epsilon=1e-5)
GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                  activation_function="gelu_new", layer_norm_epsilon=1e-5)
FULL = dict(backpack=BACKPACK, gpt2=GPT2_SMALL, train_batch=32, train_length=512, gen_batch=32, gen_prompt=128,
            gen_new_tokens=128, matmul_size=8192, warmup=5, steps=20, compile_warmup=10, gen_warmup=1, gen_calls=3,
            ref_gen_calls=1, parts_runs=20)
TINY_SHAPE = dict(n_embd=64, n_layer=2, n_head=4)
TINY = dict(FULL, backpack=dict(BACKPACK, vocab_size=512, n_positions=128, num_senses=4, **TINY_SHAPE),
            gpt2=dict(GPT2_SMALL, vocab_size=512, n_positions=128, **TINY_SHAPE), train_batch=4, train_length=64,
            gen_batch=4, gen_prompt=16, gen_new_tokens=16, matmul_size=512, warmup=2, steps=3, compile_warmup=2,
            gen_calls=2, parts_runs=3)
LEARNING_RATE, WEIGHT_DECAY = 6e-4, 0.1
DATASHEET_BF16_FLOPS = 989.4e12  # H100 SXM / H200 dense bf16, for reference beside the measured peak
REF_FILE = "models/backpack_gpt2/modelings_backpack_gpt2.py"  # inside pyvene 0.1.8


def log(*args):
    print(*args, flush=True)


def error_record(e) -> dict:
    traceback.print_exc()
    return {"error": f"{type(e).__name__}: {e}"[:2000]}


# ------------------------------------------------------------------------------------------------ FLOPs

def train_flops(m: dict, batch: int, length: int, backpack: bool) -> dict:
    """FLOPs of one training step, counted analytically (see the module docstring)."""
    d, layers, vocab, tokens = m["n_embd"], m["n_layer"], m["vocab_size"], batch * length
    terms = {"gpt2_blocks": 6 * layers * 12 * d * d * tokens,  # q, k, v, o (4 d^2) and the MLP (8 d^2)
             "attention": 12 * layers * d * length * tokens,
             "output_layer": 6 * d * vocab * tokens}
    formula = "6*layers*12*d^2*N + 12*layers*d*T*N + 6*d*V*N"
    if backpack:
        k, scale = m["num_senses"], m["sense_intermediate_scale"]
        terms["sense_network"] = 6 * (8 * d * d + scale * d * d * (1 + k)) * tokens  # block MLP; final d->sd->kd
        terms["weight_network"] = 6 * 2 * d * d * tokens  # c_attn: d -> 2 x senses x (d / senses)
        terms["sense_scores"] = 6 * length * d * tokens
        terms["weighted_sum"] = 6 * k * length * d * tokens
        formula += " + 6*(8d^2 + s*d^2*(1+k))*N + 12*d^2*N + 6*T*d*N + 6*k*T*d*N"
    return {"terms": terms, "total": sum(terms.values()),
            "formula": f"{formula} with N={tokens:,} tokens, T={length}, d={d}, layers={layers}, V={vocab}"
                       + (f", k={m['num_senses']}, s={m['sense_intermediate_scale']}" if backpack else "")}


# ------------------------------------------------------------------------------------------------ models

def default_ref_file() -> str | None:
    """The authors' modeling file inside an installed pyvene, found without importing pyvene (its package imports
    much more than the file needs)."""
    spec = importlib.util.find_spec("pyvene")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / REF_FILE
    return str(path) if path.exists() else None


def load_reference_module(path: str):
    spec = importlib.util.spec_from_file_location("backpack_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_backpack(ref, m: dict, dropout: float):
    torch.manual_seed(0)
    config = ref.BackpackGPT2Config(**m, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return ref.BackpackGPT2LMHeadModel(config)


def reference_gpt2(m: dict, dropout: float):
    torch.manual_seed(0)
    config = transformers.GPT2Config(**m, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return transformers.GPT2LMHeadModel(config)


def save_reference(model, folder: Path) -> None:
    """An HF folder of a torch model: config.json and every key of its state dict in model.safetensors, tied copies
    included, as the authors' folders hold them (transformers 5's save_pretrained refuses the authors' class: its
    tied weights are not declared)."""
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    safetensors.torch.save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def make_batch(cfg: dict, vocab: int) -> dict:
    rng = np.random.default_rng(cfg["seed"])
    tokens = rng.integers(0, vocab, (cfg["train_batch"], cfg["train_length"] + 1), dtype=np.int32)
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}


class FixedBatchLMTask(CausalLMTask):
    """CausalLMTask's model and loss without its data pipeline: benchmark batches are fixed arrays."""

    def __init__(self, model_class, model_config):
        self.model_class = model_class
        self.model_config = model_config


# ------------------------------------------------------------------------------------------------ training

def jax_train(cfg: dict, model_class, model_config, folder, np_batch: dict) -> dict:
    return timed_train(FixedBatchLMTask(model_class, model_config), folder, np_batch, LEARNING_RATE, WEIGHT_DECAY,
                       cfg["warmup"], cfg["steps"])


def torch_train(cfg: dict, make_model, np_batch: dict, device, compiled: bool) -> dict:
    model = make_model().to(device).train()
    optimizer, kind = torch_adamw(model.parameters(), LEARNING_RATE, WEIGHT_DECAY)
    forward = torch.compile(model) if compiled else model
    inputs = torch.from_numpy(np_batch["input_ids"]).long().to(device)
    labels = torch.from_numpy(np_batch["labels"]).long().to(device)

    def step(forward, inputs, labels, optimizer):  # arguments, not closures: the finally below frees them
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    warmup = cfg["compile_warmup"] if compiled else cfg["warmup"]
    try:
        record = timed_torch_steps(functools.partial(step, forward, inputs, labels, optimizer), device, warmup,
                                   cfg["steps"], "compile" if compiled else "eager")
    finally:
        del model, optimizer, forward, inputs, labels
        torch_free(device)
    return {**record, "optimizer": f"torch.optim.AdamW ({kind})"}


def compare_training(cfg, name, jax_side, make_torch_model, np_batch, device, flops, peak, skip_compile) -> dict:
    """JAX, torch eager and torch.compile steps of one model; tokens/s, MFU and speedups."""
    runs = {}
    log(f" {name}: JAX ...")
    try:
        runs["jax"] = jax_train(cfg, *jax_side, np_batch)
    except Exception as e:  # noqa: BLE001 - report and carry on
        runs["jax"] = error_record(e)
    gc.collect()
    for compiled in (False, True) if not skip_compile else (False,):
        label = "torch_compile" if compiled else "torch_eager"
        log(f" {name}: {label} ...")
        try:
            runs[label] = torch_train(cfg, make_torch_model, np_batch, device, compiled)
        except Exception as e:  # noqa: BLE001
            runs[label] = error_record(e)
        torch._dynamo.reset()
    tokens = np_batch["input_ids"].size
    best_torch = min((r["ms"] for k, r in runs.items() if k != "jax" and "ms" in r), default=None)
    for r in runs.values():
        if "ms" in r:
            r["tokens_per_s"] = tokens / (r["ms"] / 1e3)
            r["mfu"] = flops["total"] / (r["ms"] / 1e3) / peak
            r["mfu_datasheet"] = flops["total"] / (r["ms"] / 1e3) / DATASHEET_BF16_FLOPS
            if best_torch:
                r["speedup_vs_fastest_torch"] = best_torch / r["ms"]
    if "first_loss" in runs.get("jax", {}) and "first_loss" in runs.get("torch_eager", {}):
        a, b = runs["jax"]["first_loss"], runs["torch_eager"]["first_loss"]
        runs["first_loss_rel_diff_jax_vs_torch"] = abs(a - b) / abs(b)
    return runs


# ------------------------------------------------------------------------------------------------ generation

def generation_prompt(cfg: dict, vocab: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, vocab, (cfg["gen_batch"], cfg["gen_prompt"]), dtype=np.int32)


def jax_generate(cfg: dict, folder, prompt) -> dict:
    model = BackpackGPT2LMHeadModel.from_pretrained(folder, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    n = cfg["gen_new_tokens"]
    ids, times = jnp.asarray(prompt), []
    for i in range(cfg["gen_warmup"] + cfg["gen_calls"]):
        start = time.perf_counter()
        sequences = jax.block_until_ready(model.generate(ids, max_new_tokens=n, min_new_tokens=n).sequences)
        if i >= cfg["gen_warmup"]:
            times.append(time.perf_counter() - start)
        elif i == 0:
            log(f"   jax generate first call (incl. compile) {time.perf_counter() - start:.1f}s")
    del model
    return {"s": statistics.median(times), "times_s": times, "sequences": np.asarray(sequences)}


def torch_greedy_generate(cfg: dict, make_model, prompt, device) -> dict:
    """What transformers' generate does with a model that keeps no cache: the whole sequence through the forward
    at every step, the argmax appended."""
    model = make_model().to(device=device, dtype=torch.bfloat16).eval()
    ids, times = torch.from_numpy(prompt).long().to(device), []
    with torch.inference_mode():
        for i in range(cfg["gen_warmup"] + cfg["ref_gen_calls"]):
            torch_sync(device)
            start = time.perf_counter()
            sequences = ids
            for _ in range(cfg["gen_new_tokens"]):
                next_token = model(sequences).logits[:, -1].argmax(-1, keepdim=True)
                sequences = torch.cat([sequences, next_token], dim=1)
            torch_sync(device)
            if i >= cfg["gen_warmup"]:
                times.append(time.perf_counter() - start)
    sequences = sequences.cpu().numpy()
    del model, ids
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"s": statistics.median(times), "times_s": times, "sequences": sequences}


# ------------------------------------------------------------------------------------------------ parts

def time_jitted(fn, args, runs: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return median_ms(times)


def jax_parts(cfg: dict, folder, np_batch: dict) -> dict:
    """Forward + backward (gradient of the output's sum) of each part of the Backpack, jitted, bf16 compute."""
    from backpack_jax.modeling import weighted_senses

    model = BackpackGPT2LMHeadModel.from_pretrained(folder, dtype=jnp.bfloat16)
    backpack = model.backpack
    ids = jnp.asarray(np_batch["input_ids"])
    embeds = backpack.gpt2_model.wte(ids)
    _, contextualization, _ = backpack.hidden(ids)
    senses = backpack.token_senses(ids)

    def grad_of(module_fn):
        graphdef, state = nnx.split(backpack)

        def loss(state, *args):
            return jnp.sum(module_fn(nnx.merge(graphdef, state), *args).astype(jnp.float32))
        return jax.jit(jax.grad(loss)), state

    parts = {}
    contextualize, state = grad_of(lambda b, ids: b.gpt2_model.hidden(ids)[0])
    parts["gpt2_contextualization"] = time_jitted(contextualize, (state, ids), cfg["parts_runs"])
    sense_net, state = grad_of(lambda b, embeds: b.sense_network(embeds))
    parts["sense_network"] = time_jitted(sense_net, (state, embeds), cfg["parts_runs"])
    weighted = jax.jit(jax.grad(lambda c, s: jnp.sum(weighted_senses(c, s, jnp.bfloat16).astype(jnp.float32)),
                                argnums=(0, 1)))
    parts["weighted_sum"] = time_jitted(weighted, (contextualization.astype(jnp.bfloat16),
                                                   senses.astype(jnp.bfloat16)), cfg["parts_runs"])
    return {"ms_forward_backward": parts}


# ------------------------------------------------------------------------------------------------ main

def versions(device) -> dict:
    import jaxlib
    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "transformers": transformers.__version__, "numpy": np.__version__,
            "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or "cpu", "jax_device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
            "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}


def report(results: dict) -> None:
    log(f"\n== Backpack-GPT2 {results['mode']} | {results['versions']['torch_device']} | jax "
        f"{results['versions']['jax']} torch {results['versions']['torch']}")
    log(f"{'name':<30}{'ms':>10}{'tokens/s':>13}{'MFU':>8}  vs fastest torch")
    for model in ("backpack", "gpt2"):
        for name, r in results.get("train", {}).get(model, {}).items():
            if not isinstance(r, dict):
                continue
            if "error" in r:
                log(f"train {model} {name:<17}FAILED: {r['error'].splitlines()[0][:80]}")
                continue
            log(f"{'train ' + model + ' ' + name:<30}{r['ms']:>10.1f}{r['tokens_per_s']:>13,.0f}"
                f"{100 * r['mfu']:>7.1f}%  {r.get('speedup_vs_fastest_torch', 0):.2f}x")
    gen = results.get("generate", {})
    for name in ("jax", "torch_greedy_loop"):
        if name in gen and "s" in gen[name]:
            r = gen[name]
            log(f"{'generate ' + name:<30}{1e3 * r['s']:>10.1f}{r['new_tokens_per_s']:>13,.0f}{'-':>8}  "
                f"{r['speedup_vs_torch']:.2f}x")
    for name, ms in results.get("parts", {}).get("ms_forward_backward", {}).items():
        log(f"{'part ' + name:<30}{ms:>10.2f}")
    peak = results["matmul_peak_flops"]
    log(f"MFU against the measured bf16 matmul peak {peak['used'] / 1e12:.1f} TFLOP/s (data sheet "
        f"{DATASHEET_BF16_FLOPS / 1e12:.0f}: train.*.mfu_datasheet in the JSON)")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape and batches (CPU smoke test)")
    parser.add_argument("--out", help="write all results to this JSON file")
    parser.add_argument("--ref-file", default=default_ref_file(),
                        help=f"the authors' modeling file (default: pyvene's {REF_FILE}, if installed)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile runs")
    parser.add_argument("--skip-gpt2", action="store_true", help="leave out plain GPT-2 small")
    parser.add_argument("--skip-generate", action="store_true", help="leave out generation")
    parser.add_argument("--skip-parts", action="store_true", help="leave out the per-part timings")
    parser.add_argument("--steps", type=int, help="timed training steps (median taken)")
    parser.add_argument("--dropout", type=float, default=0.1, help="resid/embd/attn dropout (default 0.1)")
    parser.add_argument("--attn-implementation", default="auto", choices=ATTN_IMPLEMENTATIONS,
                        help="GPT-2's attention in the JAX training (default auto; fused ones need --dropout 0)")
    parser.add_argument("--train-batch", type=int, help="training rows (default 32; fewer to trace the losses of "
                                                         "both sides at a small batch)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random training batch (to repeat a loss trace on other batches)")
    args = parser.parse_args(argv)
    if not args.ref_file:
        parser.error("the authors' modeling file was not found: pip install pyvene==0.1.8 or pass --ref-file")
    cfg = dict(TINY if args.tiny else FULL)
    if args.steps:
        cfg["steps"] = args.steps
    if args.train_batch:
        cfg["train_batch"] = args.train_batch
    cfg["seed"] = args.seed
    transformers.logging.set_verbosity_error()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    jnp.zeros(()).block_until_ready()  # JAX claims its memory pool before torch allocates anything
    info = versions(device)
    log(f"devices: torch {info['torch_device']} | jax {info['jax_device']}")
    results = {"mode": "tiny" if args.tiny else "backpack-gpt2", "config": cfg, "dropout": args.dropout,
               "reference_file": args.ref_file, "versions": info}
    ref = load_reference_module(args.ref_file)
    b, t = cfg["train_batch"], cfg["train_length"]
    flops = {name: train_flops(cfg[name], b, t, backpack=name == "backpack") for name in ("backpack", "gpt2")}
    results["train_flops"] = flops
    # What GPT-2's attention runs in the JAX training step (auto: the einsums under attention dropout, cuDNN's with
    # --dropout 0; --attn-implementation pallas: the Pallas kernels with the dropout inside).
    results["jax_attention_train"] = attention_implementation(
        BackpackGPT2Config.create(**cfg["backpack"], attn_pdrop=args.dropout,
                                  attn_implementation=args.attn_implementation),
        jnp.bfloat16, t, training=True)
    log(f"JAX attention in training: {results['jax_attention_train']}")
    for name, f in flops.items():
        log(f"{name} train FLOPs/step = {f['formula']}\n  = "
            + " + ".join(f"{k} {v:.4g}" for k, v in f["terms"].items()) + f" = {f['total']:.4g}")

    peaks = {"torch": torch_matmul_peak(cfg["matmul_size"], device), "jax": jax_matmul_peak(cfg["matmul_size"])}
    peak = max(peaks.values())
    results["matmul_peak_flops"] = {**peaks, "used": peak, "size": cfg["matmul_size"]}
    log(f"peak bf16 matmul: torch {peaks['torch'] / 1e12:.1f} TFLOP/s, jax {peaks['jax'] / 1e12:.1f} TFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        folders = {"backpack": Path(tmp) / "backpack", "gpt2": Path(tmp) / "gpt2"}
        make = {"backpack": lambda: reference_backpack(ref, cfg["backpack"], args.dropout),
                "gpt2": lambda: reference_gpt2(cfg["gpt2"], args.dropout)}
        jax_classes = {"backpack": (BackpackGPT2LMHeadModel, BackpackGPT2Config),
                       "gpt2": (GPT2LMHeadModel, GPT2Config)}
        results["train"] = {}
        for name in ("backpack",) if args.skip_gpt2 else ("backpack", "gpt2"):
            reference = make[name]()
            save_reference(reference, folders[name])
            results.setdefault("num_params", {})[name] = sum(p.numel() for p in reference.parameters())
            del reference
            model_class, config_class = jax_classes[name]
            model_config = dataclasses.replace(config_class.from_json_file(folders[name] / "config.json"),
                                               attn_implementation=args.attn_implementation)
            batch = make_batch(cfg, cfg[name]["vocab_size"])
            log(f"training step {name}, batch {b} x {t} ...")
            results["train"][name] = compare_training(cfg, name, (model_class, model_config, folders[name]),
                                                      make[name], batch, device, flops[name], peak,
                                                      args.skip_compile)
        if not args.skip_generate:
            n = cfg["gen_new_tokens"]
            log(f"greedy generation, batch {cfg['gen_batch']} x {cfg['gen_prompt']} prompt, {n} new tokens ...")
            prompt = generation_prompt(cfg, cfg["backpack"]["vocab_size"])
            gen = {}
            for name, run in (("torch_greedy_loop", lambda: torch_greedy_generate(cfg, make["backpack"], prompt,
                                                                                   device)),
                              ("jax", lambda: jax_generate(cfg, folders["backpack"], prompt))):
                try:
                    gen[name] = run()
                except Exception as e:  # noqa: BLE001
                    gen[name] = error_record(e)
            sequences = {k: v.pop("sequences") for k, v in gen.items() if "sequences" in v}
            for r in gen.values():
                if "s" in r:
                    r["new_tokens_per_s"] = cfg["gen_batch"] * n / r["s"]
                    r["speedup_vs_torch"] = gen["torch_greedy_loop"]["s"] / r["s"] if "s" in gen.get(
                        "torch_greedy_loop", {}) else None
            if len(sequences) == 2:
                same_shape = sequences["jax"].shape == sequences["torch_greedy_loop"].shape
                # bf16 on both sides: greedy paths may part after a near-tie; informative only.
                gen["token_agreement"] = float((sequences["jax"] == sequences["torch_greedy_loop"]).mean()) \
                    if same_shape else None
                gen["shapes"] = {k: list(s.shape) for k, s in sequences.items()}
            results["generate"] = gen
        if not args.skip_parts:
            log("parts of the JAX step ...")
            try:
                results["parts"] = jax_parts(cfg, folders["backpack"], make_batch(cfg, cfg["backpack"]["vocab_size"]))
            except Exception as e:  # noqa: BLE001
                results["parts"] = error_record(e)
    report(results)
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
