"""ByT5-small-shaped T5 on one GPU: this project's JAX port beside transformers' PyTorch T5, in one process.

    python bench/t5.py [--tiny] [--out results.json] [--skip-compile] [--attn-impl auto]

1. Training step (AdamW, bf16 compute, fp32 master weights): the project's jitted, state-donating train step
   (jaxport.trainer.build + make_train_step over Seq2SeqTask's loss) vs PyTorch eager under autocast, and the
   same under torch.compile. ms/step (median), tokens/s, MFU against a bf16 matmul peak measured here.
2. Greedy generation with bf16 weights, exactly N new tokens on both sides: JAX model.generate (jitted) vs
   transformers' generate.
Both sides start from the same weights: the torch model is saved with save_pretrained and the JAX model
loaded from that folder with from_pretrained (if that fails, both are random and the output says so).
The JAX side's attention is T5Config.attn_implementation, `--attn-impl` (default auto: cuDNN fused attention with
the relative-position bias and the padding mask apart, on an NVIDIA GPU in bf16; generation decodes through the
einsums); the output names what ran.
--tiny: a tiny shape and small batches, a CPU smoke test.
"""
import os

# Both frameworks share the GPU: JAX takes a fixed pool up front, torch's caching allocator the rest.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # t5_jax / jaxport without installation

import argparse
import copy
import functools
import gc
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
from measure import BYT5_SMALL, t5_train_flops, write_results
from project_train import FixedBatchTask, timed_train
from rates import jax_matmul_peak
from torch_measure import timed_torch_steps, torch_adamw, torch_free, torch_matmul_peak, torch_sync

from jaxport import runtime
from t5_jax import T5Config, T5ForConditionalGeneration
from t5_jax.modeling import attention_implementation

FULL = dict(model=BYT5_SMALL, train_batch=32, train_inputs=512, train_targets=128,
            gen_batch=32, gen_inputs=256, gen_new_tokens=128, matmul_size=8192,
            warmup=5, steps=20, compile_warmup=10, gen_warmup=1, gen_calls=5)
TINY = dict(model=dict(BYT5_SMALL, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
                       num_decoder_layers=2),
            train_batch=4, train_inputs=64, train_targets=16, gen_batch=4, gen_inputs=32, gen_new_tokens=16,
            matmul_size=512, warmup=2, steps=3, compile_warmup=2, gen_warmup=1, gen_calls=2)
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01
EOS = BYT5_SMALL["eos_token_id"]


def log(*args):
    print(*args, flush=True)


# ------------------------------------------------------------------------------------------------ shared

# ------------------------------------------------------------------------------------------------ peak

# ------------------------------------------------------------------------------------------------ models

def torch_reference(model_dict: dict):
    """A random transformers T5 on the CPU with its own lm_head. transformers 5 ties lm_head to the embedding
    whatever tie_word_embeddings says; a real ByT5 has a separate head, so it gets one here."""
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**model_dict))
    # std d_model**-0.5 keeps initial logits O(1), so the loss check compares sane numbers.
    head = torch.randn_like(model.lm_head.weight) * model_dict["d_model"] ** -0.5
    model.lm_head.weight = torch.nn.Parameter(head)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    return model


def torch_copy(reference, device, dtype=torch.float32):
    # A deep copy keeps the untied head (a reload through from_pretrained might re-tie it on other versions).
    model = copy.deepcopy(reference).to(device=device, dtype=dtype)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    return model


def export_for_jax(reference, model_dict: dict, folder: str):
    """Save the torch model and check the JAX loader reads it back; returns the folder, or None (random init)."""
    try:
        reference.save_pretrained(folder)
        loaded = T5ForConditionalGeneration.from_pretrained(folder)
        assert not loaded.config.tie_word_embeddings, "loaded config ties lm_head"
        got = np.asarray(loaded.lm_head.kernel[...])
        want = reference.lm_head.weight.detach().numpy().T
        assert np.array_equal(got, want), "lm_head differs after save_pretrained -> from_pretrained"
        del loaded
        return folder, "same weights (torch save_pretrained -> JAX from_pretrained)"
    except Exception as e:  # noqa: BLE001 - timing still works from random weights
        log(f"!! weight transfer failed, JAX starts from its own random init: {type(e).__name__}: {e}")
        return None, f"independent random init on each side (transfer failed: {type(e).__name__}: {e})"


def make_batches(cfg: dict, vocab: int):
    rng = np.random.default_rng(0)
    b, t_in, t_out = cfg["train_batch"], cfg["train_inputs"], cfg["train_targets"]
    # Ids from 2 up: no pad (0) or EOS (1), every position a real token on both sides.
    inputs = rng.integers(2, vocab, (b, t_in), dtype=np.int32)
    labels = rng.integers(2, vocab, (b, t_out), dtype=np.int32)
    decoder_inputs = np.concatenate([np.zeros((b, 1), np.int32), labels[:, :-1]], axis=1)  # start token 0
    jax_batch = {"input_ids": inputs, "attention_mask": np.ones_like(inputs), "labels": labels,
                 "decoder_input_ids": decoder_inputs, "decoder_attention_mask": np.ones_like(labels)}
    torch_batch = {"input_ids": inputs, "attention_mask": np.ones_like(inputs), "labels": labels}
    return jax_batch, torch_batch


# ------------------------------------------------------------------------------------------------ training

def jax_train(cfg: dict, model_config: T5Config, folder, np_batch: dict) -> dict:
    """The project's own path: trainer.build (mesh, shardings, optimizer, TrainState) and the jitted step
    train.py runs, with donated state; bf16 compute over fp32 parameters."""
    return timed_train(FixedBatchTask(T5ForConditionalGeneration, model_config), folder, np_batch, LEARNING_RATE,
                       WEIGHT_DECAY, cfg["warmup"], cfg["steps"])


def torch_train(cfg: dict, reference, np_batch: dict, device, compiled: bool) -> dict:
    model = torch_copy(reference, device).train()
    optimizer, kind = torch_adamw(model.parameters(), LEARNING_RATE, WEIGHT_DECAY)
    forward = torch.compile(model) if compiled else model
    batch = {k: torch.from_numpy(v).long().to(device) for k, v in np_batch.items()}

    def step(forward, batch, optimizer):  # arguments, not closures: the finally below frees them
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    warmup = cfg["compile_warmup"] if compiled else cfg["warmup"]
    try:
        record = timed_torch_steps(functools.partial(step, forward, batch, optimizer), device, warmup, cfg["steps"],
                                   "compile" if compiled else "eager")
    finally:
        del model, optimizer, forward, batch
        torch_free(device)
    return {**record, "optimizer": f"torch.optim.AdamW ({kind})"}


# ------------------------------------------------------------------------------------------------ generation

def gen_inputs(cfg: dict, vocab: int):
    rng = np.random.default_rng(1)
    ids = rng.integers(2, vocab, (cfg["gen_batch"], cfg["gen_inputs"]), dtype=np.int32)
    return ids, np.ones_like(ids)


def gen_kwargs(cfg: dict) -> dict:
    # min = max new tokens: EOS is suppressed until the last step, so neither side stops early.
    n = cfg["gen_new_tokens"]
    return dict(do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=n)


def jax_generate(cfg: dict, model_config: T5Config, folder, ids, mask) -> dict:
    if folder:
        model = T5ForConditionalGeneration.from_pretrained(folder, dtype=jnp.bfloat16,
                                                           attn_implementation=model_config.attn_implementation)
    else:
        model = T5ForConditionalGeneration(model_config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                           rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(jnp.bfloat16), state))  # bf16 weights
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    times = []
    for i in range(cfg["gen_warmup"] + cfg["gen_calls"]):
        start = time.perf_counter()
        sequences = jax.block_until_ready(model.generate(ids, mask, **gen_kwargs(cfg)).sequences)
        if i >= cfg["gen_warmup"]:
            times.append(time.perf_counter() - start)
        elif i == 0:
            log(f"   jax generate first call (incl. compile) {time.perf_counter() - start:.1f}s")
    del model
    return {"s": statistics.median(times), "times_s": times, "sequences": np.asarray(sequences)}


def torch_generate(cfg: dict, reference, ids, mask, device) -> dict:
    model = torch_copy(reference, device, torch.bfloat16).eval()
    ids, mask = torch.from_numpy(ids).long().to(device), torch.from_numpy(mask).long().to(device)
    times = []
    with torch.inference_mode():
        for i in range(cfg["gen_warmup"] + cfg["gen_calls"]):
            torch_sync(device)
            start = time.perf_counter()
            sequences = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs(cfg))
            torch_sync(device)
            if i >= cfg["gen_warmup"]:
                times.append(time.perf_counter() - start)
    sequences = sequences.cpu().numpy()
    del model, ids, mask
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"s": statistics.median(times), "times_s": times, "sequences": sequences}


# ------------------------------------------------------------------------------------------------ checks

def fp32_loss_check(reference, model_config, folder, jax_batch, torch_batch) -> dict:
    """Tiny mode: the same batch's loss in float32 on both sides (checks the weight transfer, not bf16)."""
    task = FixedBatchTask(T5ForConditionalGeneration, model_config)
    model = T5ForConditionalGeneration.from_pretrained(folder)
    total, count = task.loss(model, {k: jnp.asarray(v) for k, v in jax_batch.items()}, None)
    jax_loss = float(total / count)
    with torch.no_grad():
        torch_loss = float(reference.eval()(**{k: torch.from_numpy(v).long() for k, v in torch_batch.items()},
                                            use_cache=False).loss)
    return {"jax": jax_loss, "torch": torch_loss, "rel_diff": abs(jax_loss - torch_loss) / abs(torch_loss)}


def versions(device) -> dict:
    import jaxlib
    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "transformers": transformers.__version__, "numpy": np.__version__,
            "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or "cpu", "jax_device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
            "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape and batches (CPU smoke test)")
    parser.add_argument("--out", help="write all results to this JSON file")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile training run")
    parser.add_argument("--steps", type=int, help="timed training steps (median taken)")
    parser.add_argument("--attn-impl", default="auto", help="T5Config.attn_implementation of the JAX side (auto: "
                        "cuDNN attention on an NVIDIA GPU in bf16; einsum, xla, cudnn)")
    args = parser.parse_args(argv)
    cfg = dict(TINY if args.tiny else FULL)
    if args.steps:
        cfg["steps"] = args.steps
    runtime.configure()  # before anything draws random numbers, as python -m train (train_setup applied it later)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    jnp.zeros(()).block_until_ready()  # JAX claims its memory pool before torch allocates anything
    info = versions(device)
    log(f"devices: torch {info['torch_device']} | jax {info['jax_device']}")
    if not args.tiny and (device.type != "cuda" or jax.default_backend() != "gpu"):
        log("!! full-size run without a GPU on both sides: numbers will not mean much")
    results = {"mode": "tiny" if args.tiny else "byt5-small", "config": cfg, "versions": info}

    m = cfg["model"]
    model_config = T5Config.create(**m, attn_implementation=args.attn_impl)
    b, t_in, t_out = cfg["train_batch"], cfg["train_inputs"], cfg["train_targets"]
    flops = t5_train_flops(m, b, t_in, t_out)
    results["train_flops"] = flops
    results["jax_attention"] = {
        "attn_implementation": args.attn_impl,
        "train": attention_implementation(model_config, jnp.bfloat16, (t_in, t_out), training=True),
        "generate_encoder": attention_implementation(model_config, jnp.bfloat16, (cfg["gen_inputs"],), False)}
    log(f"JAX attention: {results['jax_attention']}")
    log(f"train FLOPs/step = {flops['formula']}\n  = " + " + ".join(f"{k} {v:.4g}" for k, v in
                                                                  flops["terms"].items())
        + f" = {flops['total']:.4g}")

    log("peak bf16 matmul ...")
    peaks = {"torch": torch_matmul_peak(cfg["matmul_size"], device), "jax": jax_matmul_peak(cfg["matmul_size"])}
    peak = max(peaks.values())
    results["matmul_peak_flops"] = {**peaks, "used": peak, "size": cfg["matmul_size"]}
    log(f"  torch {peaks['torch'] / 1e12:.1f} TFLOP/s, jax {peaks['jax'] / 1e12:.1f} TFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        reference = torch_reference(m)
        results["num_params"] = sum(p.numel() for p in reference.parameters())
        folder, weights = export_for_jax(reference, m, tmp)
        results["weights"] = weights
        log(f"weights: {weights}; {results['num_params'] / 1e6:.1f}M parameters")
        jax_batch, torch_batch = make_batches(cfg, m["vocab_size"])
        if args.tiny and folder:
            results["fp32_loss_check"] = fp32_loss_check(reference, model_config, folder, jax_batch, torch_batch)
            log(f"fp32 loss check: {results['fp32_loss_check']}")

        train = {}
        log(f"training step, batch {b} x ({t_in} in + {t_out} out) ...")
        log(" JAX ...")
        train["jax"] = jax_train(cfg, model_config, folder, jax_batch)
        gc.collect()
        log(" torch eager ...")
        train["torch_eager"] = torch_train(cfg, reference, torch_batch, device, compiled=False)
        if not args.skip_compile:
            log(" torch compile ...")
            try:
                train["torch_compile"] = torch_train(cfg, reference, torch_batch, device, compiled=True)
            except Exception as e:  # noqa: BLE001 - report and carry on
                traceback.print_exc()
                train["torch_compile"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            torch._dynamo.reset()
        tokens = b * (t_in + t_out)
        for r in train.values():
            if "ms" in r:
                r["tokens_per_s"] = tokens / (r["ms"] / 1e3)
                r["mfu"] = flops["total"] / (r["ms"] / 1e3) / peak
                r["speedup_vs_torch_eager"] = train["torch_eager"]["ms"] / r["ms"]
        first = train["jax"]["first_loss"], train["torch_eager"]["first_loss"]
        train["first_loss_rel_diff_jax_vs_torch"] = abs(first[0] - first[1]) / abs(first[1])
        log(f"first-step loss (bf16): jax {first[0]:.6f} torch {first[1]:.6f} "
            f"rel diff {train['first_loss_rel_diff_jax_vs_torch']:.2e}")
        results["train"] = train

        n_new = cfg["gen_new_tokens"]
        log(f"greedy generation, batch {cfg['gen_batch']} x {cfg['gen_inputs']} in, {n_new} new tokens ...")
        ids, mask = gen_inputs(cfg, m["vocab_size"])
        gen = {"torch_eager": torch_generate(cfg, reference, ids, mask, device)}
        del reference
        gen["jax"] = jax_generate(cfg, model_config, folder, ids, mask)
    sequences = {k: v.pop("sequences") for k, v in gen.items()}
    shapes = {k: list(s.shape) for k, s in sequences.items()}
    expected = [cfg["gen_batch"], 1 + n_new]  # decoder start token + new tokens
    early_eos = {k: bool((s[:, 1:-1] == EOS).any()) for k, s in sequences.items()}
    if any(shape != expected for shape in shapes.values()) or any(early_eos.values()):
        log(f"!! generation lengths differ: shapes {shapes} (expected {expected}), EOS before the end {early_eos}")
    for r in gen.values():
        r["new_tokens_per_s"] = cfg["gen_batch"] * n_new / r["s"]
        r["speedup_vs_torch_eager"] = gen["torch_eager"]["s"] / r["s"]
    gen["shapes"] = shapes
    gen["eos_before_end"] = early_eos
    gen["same_length"] = len({tuple(s) for s in shapes.values()}) == 1 and shapes["jax"] == expected
    # bf16 on both sides: greedy paths may part after a near-tie; informative only.
    gen["token_agreement"] = float((sequences["jax"] == sequences["torch_eager"]).mean()) \
        if gen["same_length"] else None
    results["generate"] = gen

    rows = [("peak matmul torch", None, None, None, f"{peaks['torch'] / 1e12:.1f} TFLOP/s"),
            ("peak matmul jax", None, None, None, f"{peaks['jax'] / 1e12:.1f} TFLOP/s")]
    for name in ("jax", "torch_eager", "torch_compile"):
        r = train.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append((f"train {name}", None, None, None, "FAILED: " + r["error"].splitlines()[0][:80]))
            continue
        rows.append((f"train {name}", r["ms"], f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%",
                     f"{r['speedup_vs_torch_eager']:.2f}x"))
    for name in ("jax", "torch_eager"):
        r = gen[name]
        rows.append((f"generate {name}", 1e3 * r["s"], f"{r['new_tokens_per_s']:,.0f}", "-",
                     f"{r['speedup_vs_torch_eager']:.2f}x"))
    log(f"\n== T5 {results['mode']} | {info['torch_device']} | jax {info['jax']} torch {info['torch']} "
        f"transformers {info['transformers']} | {weights}")
    log(f"{'name':<22}{'ms':>10}{'tokens/s':>13}{'MFU':>8}  vs torch eager")
    for name, ms, tok, mfu, ratio in rows:
        log(f"{name:<22}{'' if ms is None else f'{ms:.1f}':>10}{tok or '':>13}{mfu or '':>8}  {ratio}")
    log(f"train tokens/step {tokens:,} (in + out); FLOPs/step {flops['total']:.4g}; MFU vs {peak / 1e12:.1f} "
        f"TFLOP/s; first-step loss rel diff {train['first_loss_rel_diff_jax_vs_torch']:.2e}; generation "
        f"shapes {shapes}, token agreement {gen['token_agreement']}")
    if "fp32_loss_check" in results:
        log(f"fp32 loss rel diff {results['fp32_loss_check']['rel_diff']:.2e}")
    write_results(results, args.out)
    return results


if __name__ == "__main__":
    main()
