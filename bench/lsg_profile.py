"""Where the LSG-BART-base encoder's GPU time goes: `python bench/lsg_profile.py [--attn-impl cudnn] [--length N]`.

Random bf16 weights (the bench/lsg.py shape), batch 1. Profiles jitted calls of the encoder forward and of its
forward + backward (gradient of the summed encoder states) with jax.profiler, and prints the GPU kernels that
take the most time, summed over the profiled calls, per call. Needs a GPU.
"""
import argparse
import collections
import gzip
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from lsg import LSG_BART_BASE  # bench/ is the script's folder, so it is on sys.path
from lsg_jax.configuration import LSGBartConfig
from lsg_jax.modeling import LSGBartForConditionalGeneration


def kernel_times(trace_dir: Path) -> collections.Counter:
    """Microseconds per kernel name, from the Perfetto trace jax.profiler wrote (GPU stream events only)."""
    trace = json.loads(gzip.open(next(trace_dir.rglob("perfetto_trace.json.gz"))).read())
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    times = collections.Counter()
    for event in trace["traceEvents"]:
        if event.get("ph") == "X" and "stream" in threads.get((event["pid"], event.get("tid")), "").lower():
            times[event["name"]] += event["dur"]
    return times


def profile(fn, calls: int, title: str, top: int) -> None:
    jax.block_until_ready(fn())  # compiled and warm
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            jax.block_until_ready([fn() for _ in range(calls)])
        times = kernel_times(Path(folder))
    total = sum(times.values()) / calls
    print(f"\n== {title}: {total / 1e3:.2f} ms of GPU kernels per call ({len(times)} kernel names)")
    for name, us in times.most_common(top):
        print(f"  {us / calls / 1e3:7.3f} ms  {100 * us / calls / total:5.1f}%  {name[:110]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attn-impl", default="cudnn")
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    config = LSGBartConfig(**LSG_BART_BASE, attn_implementation=args.attn_impl)
    model = LSGBartForConditionalGeneration(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ids = jax.random.randint(jax.random.key(1), (1, args.length), 3, config.vocab_size)
    mask = jnp.ones_like(ids)
    encode = jax.jit(lambda state: nnx.merge(graphdef, state).encode(ids, mask))
    grad = jax.jit(jax.grad(lambda state: nnx.merge(graphdef, state).encode(ids, mask).astype(jnp.float32).sum()))
    profile(lambda: encode(state), args.calls, f"encoder forward {args.length} {args.attn_impl}", args.top)
    profile(lambda: grad(state), args.calls, f"encoder forward + backward {args.length} {args.attn_impl}", args.top)


if __name__ == "__main__":
    main()
