"""The original PyTorch LSG-BART (lsg-converter 0.1.9 on transformers 4.44.2) timed for bench/lsg.py.

Runs in its own interpreter, because lsg-converter imports only with transformers 4.44.2 while the project uses
transformers 5: bench/lsg.py starts it as a subprocess, either under .venv-lsg (tests/lsg_reference/make_env.sh)
or, on the GPU machine, under the image's python3 with PYTHONPATH pointing at the wheels of .whl-lsg installed
with `pip install --no-index --no-deps --target DIR` (torch and numpy then come from the image).

    python bench/lsg_reference.py SPEC.json

SPEC.json (written by bench/lsg.py):
  build: {"config": {...}, "folder", "seed", "long_folder"?, "long_max_positions"?}
      a random LSG-BART (the model's own initialisation, std init_std) saved with save_pretrained; the long
      folder holds the same weights with position tables extended to long_max_positions (new rows random).
  inputs: npz from bench/lsg.py with ids_<L> [1, L], labels [1, T_out], gen [B, T] (the same inputs both sides)
  plan: [[item, lengths], ...] run in this order, item "encoder", "train" or "generate" (lengths null);
  encoder_runs/warmup, train_steps/warmup, generate {...}, dtype ("float16"), deadline (a time.time() after which
  remaining items are skipped), out (JSON written here after every item).
Inference runs the model cast to dtype (model.half()); training keeps float32 weights under autocast(dtype) with
a GradScaler and AdamW (fused where torch has it), as an fp16 training run of the original would.
Every item catches its own errors (out of memory included) and records them, so one failure loses one number.
"""
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np
import torch

T0 = time.time()


def log(*args):
    print(f"[ref {time.time() - T0:6.1f}s]", *args, flush=True)


class Timer:
    """Wall time of one call with the device synchronised on both ends (CUDA events would hide host gaps the
    same way; the host clock after a sync is what a user waits)."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn):
        self.sync()
        start = time.perf_counter()
        result = fn()
        self.sync()
        return time.perf_counter() - start, result


def reset_peak(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return None


def peak(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def error_record(e):
    traceback.print_exc()
    return {"error": f"{type(e).__name__}: {e}"[:1500]}


# ------------------------------------------------------------------------------------------------ build

def build(spec):
    from lsg_converter.bart.modeling_lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration

    torch.manual_seed(spec["seed"])
    config = LSGBartConfig(**spec["config"])
    model = LSGBartForConditionalGeneration(config)  # the original's _init_weights: normal(0, init_std)
    model.save_pretrained(spec["folder"])
    log(f"built {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {spec['folder']}")
    if spec.get("long_folder"):
        n = spec["long_max_positions"]
        long_model = LSGBartForConditionalGeneration(LSGBartConfig(**{**spec["config"], "max_position_embeddings": n}))
        source = model.state_dict()
        with torch.no_grad():
            for name, param in long_model.state_dict().items():
                if name not in source:
                    continue
                if param.shape == source[name].shape:
                    param.copy_(source[name])
                else:  # position tables: the trained rows, then the new rows as initialised
                    param[:source[name].shape[0]] = source[name]
        long_model.save_pretrained(spec["long_folder"])
        log(f"long copy ({n} positions) -> {spec['long_folder']}")
        del long_model
    del model
    gc.collect()


# ------------------------------------------------------------------------------------------------ helpers

def load(folder, device, dtype=None):
    from lsg_converter.bart.modeling_lsg_bart import LSGBartForConditionalGeneration

    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    return LSGBartForConditionalGeneration.from_pretrained(folder, **kwargs).to(device)


def folder_for(spec, length):
    if length > spec["build"]["config"]["max_position_embeddings"]:
        return spec["build"]["long_folder"]
    return spec["build"]["folder"]


def adamw(params, lr, weight_decay):
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True), "foreach"


def grad_scaler(device):
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, RuntimeError, TypeError):
        return torch.cuda.amp.GradScaler(enabled=device.type == "cuda")


def past_deadline(spec):
    return time.time() > spec["deadline"]


# ------------------------------------------------------------------------------------------------ items

def encoder_forward(spec, lengths, inputs, device, dtype, timer, cache):
    results, model, model_folder = {}, None, None
    for length in lengths:
        key = str(length)
        if past_deadline(spec):
            results[key] = {"skipped": "time budget"}
            continue
        try:
            if folder_for(spec, length) != model_folder:
                model = None
                free(device)
                model_folder = folder_for(spec, length)
                model = load(model_folder, device, dtype).eval()
            encoder = model.model.encoder
            ids = torch.from_numpy(inputs[f"ids_{length}"]).long().to(device)
            mask = torch.ones_like(ids)
            base = reset_peak(device)
            times = []
            with torch.inference_mode():
                for i in range(spec["encoder_warmup"] + spec["encoder_runs"]):
                    elapsed, out = timer(lambda: encoder(input_ids=ids, attention_mask=mask)[0])
                    if i >= spec["encoder_warmup"]:
                        times.append(elapsed)
                    del out
            results[key] = {"ms": 1e3 * statistics.median(times), "times_ms": [1e3 * t for t in times],
                            "peak_bytes": peak(device), "weights_bytes": base}
            log(f"encoder {length}: {results[key]['ms']:.2f} ms, peak "
                f"{(results[key]['peak_bytes'] or 0) / 2**30:.2f} GiB")
        except Exception as e:  # noqa: BLE001 - one failed length does not stop the others
            results[key] = error_record(e)
        free(device)
    del model
    free(device)
    return results


def train_steps(spec, lengths, inputs, device, dtype, timer, cache):
    """cache keeps the float32 model, its optimizer and the GradScaler from one length to the next."""
    results = {}
    labels_np = inputs["labels"]
    for length in lengths:
        key = str(length)
        if past_deadline(spec):
            results[key] = {"skipped": "time budget"}
            continue
        try:
            if folder_for(spec, length) != cache.get("folder"):
                cache.clear()
                free(device)
                model = load(folder_for(spec, length), device).train()  # float32 master weights
                optimizer, kind = adamw(model.parameters(), spec["learning_rate"], spec["weight_decay"])
                cache.update(folder=folder_for(spec, length), model=model, optimizer=optimizer, kind=kind,
                             scaler=grad_scaler(device))
            model, optimizer, kind, scaler = cache["model"], cache["optimizer"], cache["kind"], cache["scaler"]
            ids = torch.from_numpy(inputs[f"ids_{length}"]).long().to(device)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "labels": torch.from_numpy(labels_np).long().to(device)}

            def step():
                with torch.autocast(device.type, dtype=dtype):
                    loss = model(**batch, use_cache=False).loss
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                return loss.detach()

            times, first_loss, base = [], None, None
            for i in range(spec["train_warmup"] + spec["train_steps"]):
                if i == spec["train_warmup"]:
                    base = reset_peak(device)  # optimizer state exists from here on
                elapsed, loss = timer(step)
                if i == 0:
                    first_loss = float(loss)
                if i >= spec["train_warmup"]:
                    times.append(elapsed)
            results[key] = {"ms": 1e3 * statistics.median(times), "times_ms": [1e3 * t for t in times],
                            "peak_bytes": peak(device), "state_bytes": base, "first_loss": first_loss,
                            "last_loss": float(loss), "optimizer": f"torch.optim.AdamW ({kind})",
                            "grad_scale": float(scaler.get_scale()) if scaler.is_enabled() else None}
            log(f"train {length}: {results[key]['ms']:.1f} ms, peak {(results[key]['peak_bytes'] or 0) / 2**30:.2f} "
                f"GiB, first loss {first_loss:.4f}")
        except Exception as e:  # noqa: BLE001
            results[key] = error_record(e)
            model = optimizer = scaler = batch = None
            cache.clear()  # start the next length from a fresh model: this one may hold stale gradients
        free(device)
    return results


def generate(spec, lengths, inputs, device, dtype, timer, cache):
    g = spec["generate"]
    if past_deadline(spec):
        return {"skipped": "time budget"}
    try:
        model = load(folder_for(spec, g["input_length"]), device, dtype).eval()
        ids = torch.from_numpy(inputs["gen"]).long().to(device)
        mask = torch.ones_like(ids)
        kwargs = dict(g["kwargs"])
        times = []
        with torch.inference_mode():
            # Warm-up: a short call (kernels, cuBLAS handles); then the timed full-length calls.
            elapsed, _ = timer(lambda: model.generate(input_ids=ids, attention_mask=mask,
                                                      **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4}))
            log(f"generate warm-up (4 tokens) {elapsed:.2f}s")
            base = reset_peak(device)
            for _ in range(g["calls"]):
                if times and past_deadline(spec):
                    break
                elapsed, sequences = timer(lambda: model.generate(input_ids=ids, attention_mask=mask, **kwargs))
                times.append(elapsed)
                log(f"generate {elapsed:.2f}s, shape {tuple(sequences.shape)}")
        result = {"s": statistics.median(times), "times_s": times, "peak_bytes": peak(device), "weights_bytes": base,
                  "sequences": sequences.cpu().numpy().tolist()}
        model = None
        free(device)
        return result
    except Exception as e:  # noqa: BLE001
        free(device)
        return error_record(e)


def versions(device):
    from importlib.metadata import version

    import transformers
    from lsg_converter.bart import modeling_lsg_bart
    assert modeling_lsg_bart.LSGBartForConditionalGeneration  # importable here, with this transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "transformers": transformers.__version__, "lsg_converter": version("lsg-converter"),
            "numpy": np.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"}


def main(path):
    with open(path) as f:
        spec = json.load(f)
    out = {"started": T0}
    device = torch.device("cuda" if torch.cuda.is_available() and not spec.get("cpu") else "cpu")
    dtype = getattr(torch, spec.get("dtype", "float16"))
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        out["versions"] = versions(device)
        log(f"{out['versions']}")
        build(spec["build"])
        out["built"] = True
    except Exception as e:  # noqa: BLE001 - without a folder nothing else can run
        out["build_error"] = error_record(e)["error"]
        with open(spec["out"], "w") as f:
            json.dump(out, f)
        sys.exit(1)
    if spec.get("build_only"):
        with open(spec["out"], "w") as f:
            json.dump(out, f)
        return
    inputs = dict(np.load(spec["inputs"]))
    timer = Timer(device)
    items = {"encoder": encoder_forward, "train": train_steps, "generate": generate}
    train_cache = {}
    out["phase_s"] = {}
    for number, (item, lengths) in enumerate(spec["plan"]):  # in the order of the plan (most wanted first)
        start = time.time()
        result = items[item](spec, lengths, inputs, device, dtype, timer, train_cache)
        if item == "generate":
            out[item] = result
        else:
            out.setdefault(item, {}).update(result)
        train_cache.clear()  # peak memory of the next item is its own
        free(device)
        out["phase_s"][f"{number}_{item}"] = time.time() - start
        with open(spec["out"], "w") as f:  # written after every item: a killed run keeps what it measured
            json.dump(out, f)
    log("done")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1])
