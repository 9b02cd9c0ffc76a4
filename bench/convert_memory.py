"""Peak host memory of converting and loading a sharded T5 checkpoint, on a CPU.

    python bench/convert_memory.py [--preset large] [--formats safetensors,bin] [--workdir DIR] [--out results.json]

Writes a synthetic sharded PyTorch checkpoint (random float32 weights under transformers' T5 keys, as
`model-0000k-of-0000n.safetensors` or `pytorch_model-0000k-of-0000n.bin` shards plus their index), then, each in a
fresh process whose peak resident memory (VmHWM: the high-water mark of its own memory map; ru_maxrss would also
count the spawning process's, which a child takes over through exec) is read against its resident memory just
before the work (after the imports):

- convert: `python -m convert t5 SRC DST --dtype bfloat16` (Flax weights, written shard by shard), and back to
  PyTorch names with `--to-pytorch` from the converted folder;
- read: from_pretrained's host side (read, convert, cast to bfloat16) with a consumer that keeps nothing, as
  placing each tensor on a GPU leaves the host;
- load: `T5ForConditionalGeneration.from_pretrained(SRC, dtype=bfloat16, param_dtype=bfloat16, mesh=...)` over 8
  fake CPU devices (here the devices' memory is host memory: its parameters count too).

The bound checked: peak - start <= 1.3 x the largest weight file read + OVERHEAD (+ for load the bytes the devices
hold: the parameters, replicated over the mesh's data axis). Presets: `test` (T5 v1.1 small's width with 12 + 12
layers and an 8192-token vocabulary, 0.3 GB in 64 MB shards; tests/test_large_checkpoints.py runs it) and `large`
(t5-v1_1-large's shape, 3.1 GB in 1 GB shards). The converted folder is checked against the source tensor by tensor.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # jaxport, t5_jax without installation

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxport.convert import iter_flax_to_pytorch, iter_pytorch_to_flax  # noqa: E402
from jaxport.hf import ShardedWriter, find_weights, iter_tensors, param_paths  # noqa: E402
from t5_jax import T5Config, T5ForConditionalGeneration  # noqa: E402
from t5_jax.convert import t5_rules  # noqa: E402

MB = 2**20
# What the interpreter, JAX's tracing, the allocator and the tensor being converted add besides the file being read:
# 4 to 6 MB measured with the test preset's 63 MB shards, 75 MB with the large preset's 1015 MB shards (its 126 MB
# embeddings converted one at a time), bench/RESULTS.md.
OVERHEAD = 96 * MB
SHARD_FACTOR = 1.3
T5_V1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0, num_heads=8, d_kv=64)
PRESETS = {
    "test": dict(model=dict(T5_V1_1, vocab_size=8192, d_model=512, d_ff=1024, num_layers=12), shard_mb=64),
    "large": dict(model=dict(T5_V1_1, vocab_size=32128, d_model=1024, d_ff=2816, num_heads=16, num_layers=24),
                  shard_mb=1024),
}


def log(*args):
    print(*args, flush=True)


def abstract_params(config: T5Config) -> dict:
    model = nnx.eval_shape(lambda: T5ForConditionalGeneration(config, rngs=nnx.Rngs(0)))
    return param_paths(model)


def write_checkpoint(folder: Path, config: T5Config, shard_bytes: int, kind: str) -> dict:
    """Random float32 weights under transformers' keys, in shards of at most shard_bytes, holding one shard at a
    time. Returns {"bytes", "largest_shard_bytes", "shards"}."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {**config.to_dict(), "architectures": ["T5ForConditionalGeneration"]}
    (folder / "config.json").write_text(json.dumps(values))
    rng = np.random.default_rng(0)
    flax_tensors = ((path, (0.05 * rng.standard_normal(leaf.shape, np.float32)).astype(np.float32))
                    for path, leaf in abstract_params(config).items())
    tensors = iter_flax_to_pytorch(flax_tensors, t5_rules(config))
    if kind == "safetensors":
        with ShardedWriter(folder, "model", shard_bytes, {"format": "pt"}, header_reserve=2**16) as writer:
            for key, array in tensors:
                writer.add(key, array)
        sizes = [file.stat().st_size for file in writer.files]
    else:
        sizes = write_bin_shards(folder, tensors, shard_bytes)
    return {"bytes": sum(sizes), "largest_shard_bytes": max(sizes), "shards": len(sizes)}


def write_bin_shards(folder: Path, tensors, shard_bytes: int) -> list[int]:
    """pytorch_model-0000k-of-0000n.bin shards (torch.save of one shard's state dict at a time) and their index."""
    import torch

    shard_of, shard, size, total = {}, {}, 0, 0

    def flush():
        torch.save(shard, folder / f"shard{len(set(shard_of.values()))}.bin")
        shard_of.update(dict.fromkeys(shard, len(set(shard_of.values()))))

    for key, array in tensors:
        if shard and size + array.nbytes > shard_bytes:
            flush()
            shard, size = {}, 0
        shard[key] = torch.from_numpy(np.ascontiguousarray(array))
        size += array.nbytes
        total += array.nbytes
    flush()
    count = len(set(shard_of.values()))
    names = [f"pytorch_model-{n:05d}-of-{count:05d}.bin" for n in range(1, count + 1)]
    for n, name in enumerate(names):
        (folder / f"shard{n}.bin").rename(folder / name)
    index = {"metadata": {"total_size": total}, "weight_map": {key: names[n] for key, n in shard_of.items()}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return [(folder / name).stat().st_size for name in names]


CHILD = textwrap.dedent("""\
    import json, sys, threading, time
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np, torch
    import convert
    from jaxport import hf, sharding
    from t5_jax import T5ForConditionalGeneration

    def status():
        with open("/proc/self/status") as f:
            return {{line.split(":")[0]: int(line.split()[1]) * 1024 for line in f
                    if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile"))}}

    highest = status()

    def sample():  # what the peak is made of: anonymous memory or mapped file pages (every 20 ms)
        global highest
        while True:
            now = status()
            if now["VmRSS"] > highest["VmRSS"]:
                highest = now
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    start = status()["VmRSS"]
    mode, src, dst = {mode!r}, {src!r}, {dst!r}
    extra = 0
    if mode == "convert":
        convert.main(["t5", src, dst, "--dtype", "bfloat16"])
    elif mode == "convert-back":
        convert.main(["t5", src, dst, "--to-pytorch"])
    elif mode == "read":
        cls = T5ForConditionalGeneration
        folder = hf.resolve_folder(src)
        config = cls.folder_config(folder)
        abstract = hf.nnx.eval_shape(lambda: cls(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                 rngs=hf.nnx.Rngs(0)))
        for path, array in cls._read_params(folder, config, hf.param_paths(abstract), strict=True):
            del array
    else:
        model = T5ForConditionalGeneration.from_pretrained(src, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                            mesh=sharding.make_mesh(2, 2, 2))
        leaves = jax.tree.leaves(hf.nnx.state(model, hf.nnx.Param))
        extra = sum(shard.data.nbytes for leaf in leaves for shard in leaf.addressable_shards)  # replicas too
        embedding = model.shared.embedding[...]
        print("SHARDING", json.dumps({{"spec": str(embedding.sharding.spec),
                                       "shard_shape": list(embedding.addressable_shards[0].data.shape),
                                       "devices": len(embedding.sharding.device_set)}}))
    peak = status()["VmHWM"]
    print("MEMORY", json.dumps({{"start": start, "peak": peak, "params_bytes": extra, "sampled_peak": highest}}))
    """)


def measure(mode: str, src: Path, dst: Path | None) -> dict:
    """Run one job in a fresh process; its start / peak resident bytes (and what it printed)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
    code = CHILD.format(root=str(ROOT), mode=mode, src=str(src), dst=str(dst or ""))
    begin = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{mode} failed:\n{result.stdout}\n{result.stderr}")
    out = {"seconds": time.perf_counter() - begin}
    for line in result.stdout.splitlines():
        if line.startswith(("MEMORY ", "SHARDING ")):
            name, _, payload = line.partition(" ")
            out[name.lower()] = json.loads(payload)
    return out


def check_same(src: Path, dst: Path, config: T5Config) -> int:
    """The converted Flax folder against the source, tensor by tensor (bfloat16 of the same float32 values).
    Returns the number of tensors compared."""
    import ml_dtypes

    target = {path: jax.ShapeDtypeStruct(leaf.shape, ml_dtypes.bfloat16) for path, leaf in
              abstract_params(config).items()}
    expected = iter_pytorch_to_flax(iter_tensors(find_weights(src).files), target, t5_rules(config))
    converted = dict(iter_tensors(find_weights(dst).files))  # memory-mapped: read as compared
    count = 0
    for path, array in expected:
        if not np.array_equal(array.view(np.uint16), np.asarray(converted[path]).view(np.uint16)):
            raise AssertionError(f"{path} differs from the source")
        count += 1
    if count != len(converted):
        raise AssertionError(f"{len(converted)} converted tensors, {count} expected")
    return count


def largest_shard(folder: Path) -> int:
    return max(path.stat().st_size for path in find_weights(folder).files)


def bound(source: Path, device_bytes: int = 0) -> int:
    """SHARD_FACTOR x the source's largest weight file + OVERHEAD (+ what the devices hold, on a CPU)."""
    return int(SHARD_FACTOR * largest_shard(source) + OVERHEAD + device_bytes)


JOBS = ("convert", "convert-back", "read", "load")


def run(preset: str, formats: list[str], workdir: Path, jobs=JOBS) -> dict:
    spec = PRESETS[preset]
    config = T5Config.create(**spec["model"])
    results = {"preset": preset, "model": spec["model"], "overhead_bytes": OVERHEAD, "shard_factor": SHARD_FACTOR,
               "runs": {}}
    for kind in formats:
        src = workdir / f"src-{kind}"
        begin = time.perf_counter()
        checkpoint = write_checkpoint(src, config, spec["shard_mb"] * MB, kind)
        log(f"{kind}: {checkpoint['shards']} shards, {checkpoint['bytes'] / MB:.0f} MB, largest "
            f"{checkpoint['largest_shard_bytes'] / MB:.0f} MB (written in {time.perf_counter() - begin:.0f} s)")
        runs = {"checkpoint": checkpoint}
        sources = {"convert": (src, workdir / f"flax-{kind}"), "read": (src, None), "load": (src, None),
                   "convert-back": (workdir / f"flax-{kind}", workdir / f"back-{kind}")}  # the first format only
        for mode in [job for job in JOBS if job in jobs and (job != "convert-back" or kind == formats[0])]:
            job_src, dst = sources[mode]
            out = measure(mode, job_src, dst)
            memory = out["memory"]
            grown = memory["peak"] - memory["start"]
            limit = bound(job_src, memory["params_bytes"])
            out.update(grown_bytes=grown, bound_bytes=limit, within_bound=grown <= limit)
            runs[mode] = out
            params = f", on the devices {memory['params_bytes'] / MB:.0f} MB" if memory["params_bytes"] else ""
            log(f"  {mode:<13} peak - start {grown / MB:7.0f} MB (bound {limit / MB:.0f} MB{params}) in "
                f"{out['seconds']:.0f} s {'ok' if grown <= limit else 'OVER'}"
                + (f"; embedding {out['sharding']}" if "sharding" in out else ""))
        if "convert" in jobs:
            runs["tensors_checked"] = check_same(src, workdir / f"flax-{kind}", config)
            log(f"  converted folder equals the source ({runs['tensors_checked']} tensors)")
        results["runs"][kind] = runs
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="large")
    parser.add_argument("--formats", default="safetensors,bin", help="comma-separated: safetensors, bin")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)} "
                        "(convert-back needs convert; it runs for the first format)")
    parser.add_argument("--workdir", help="where the checkpoints go (default: a temporary folder, removed)")
    parser.add_argument("--out", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    formats, jobs = args.formats.split(","), args.jobs.split(",")
    if args.workdir:
        results = run(args.preset, formats, Path(args.workdir), jobs)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            results = run(args.preset, formats, Path(workdir), jobs)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
