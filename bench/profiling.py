"""Where a jitted program's GPU time goes, from a jax.profiler trace: `profile(title, compiled, fn, ...)` times
synchronised and back-to-back calls, then sums each call's GPU kernel time by the source line XLA's metadata gives
each kernel (file:line and op name), by kernel name and by HLO instruction (with its operand and result shapes:
which GEMM or fusion a kernel ran), and shows where a synchronised call waits (before its first kernel, between
kernels, after its last) and how often the host re-recorded or launched XLA's command buffers.
Used by lsg_profile.py, backpack_profile.py and perceiver_profile.py."""
import collections
import contextlib
import gzip
import io
import json
import re
import statistics
import tempfile
from pathlib import Path

import jax
from measure import compiled_memory, median_ms, time_jax  # bench/ on sys.path


def _kernel_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", name)


def _table(hlo_text: str, title: str) -> dict:
    """One of the compiled HLO text's tables (FileNames, FunctionNames, FileLocations, StackFrames): id -> text."""
    match = re.search(rf"^{title}\n((?:\d+ .*\n)*)", hlo_text, re.M)
    return dict(line.split(" ", 1) for line in match.group(1).splitlines()) if match else {}


def hlo_sources(hlo_text: str, depth: int = 2) -> dict:
    """Instruction name (as kernels are named: non-alphanumerics as '_') -> 'file:line <- caller file:line op'
    from its metadata's stack frame (the innermost `depth` frames) and op name."""
    files, functions = _table(hlo_text, "FileNames"), _table(hlo_text, "FunctionNames")
    locations, frames = _table(hlo_text, "FileLocations"), _table(hlo_text, "StackFrames")
    field = lambda text, name: re.search(rf"{name}=(\d+)", text).group(1)

    def where(frame_id: str) -> str:
        parts = []
        while frame_id in frames and len(parts) < depth:
            location = locations[field(frames[frame_id], "file_location_id")]
            file = Path(files[field(location, "file_name_id")].strip('"')).name
            parts.append(f"{file}:{field(location, 'line')} "
                         f"{functions[field(location, 'function_name_id')].strip(chr(34))}")
            parent = field(frames[frame_id], "parent_frame_id")
            frame_id = parent if parent != frame_id else None
        return " <- ".join(parts) or "?"

    sources = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?metadata=\{([^}]*)\}", hlo_text, re.M):
        op = re.search(r'op_name="([^"]*)"', m.group(2))
        frame = re.search(r"stack_frame_id=(\d+)", m.group(2))
        sources[_kernel_key(m.group(1))] = (f"{where(frame.group(1)) if frame else '?'} "
                                            f"[{op.group(1).split('/')[-1] if op else '?'}]")
    return sources


def hlo_signatures(hlo_text: str) -> dict:
    """Instruction name (as kernels are named) -> 'result-type op(operand types)', e.g. 'bf16[262,768]
    fusion(bf16[32768,262], bf16[32768,768])': which GEMM or fusion a kernel ran, with its shapes (layouts left out)."""
    instructions = re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^)]*\)|\S+) ([\w\-]+)\(([^)]*)\)", hlo_text, re.M)
    types = {name: re.sub(r"\{[^}]*\}", "", result) for name, result, _, _ in instructions}
    operand_types = lambda args: ", ".join(types.get(a.strip().lstrip("%"), a.strip()) for a in args.split(",")
                                           if a.strip())
    return {_kernel_key(name): f"{types[name]} {op}({operand_types(args)})" for name, _, op, args in instructions}


SYNCED_CALL = "bench_profile_synced_call"


def trace_events(trace_dir: Path) -> list:
    """Complete ("X") events of jax.profiler's Perfetto trace, each with "gpu": whether it ran on a GPU stream."""
    trace = json.loads(gzip.open(next(trace_dir.rglob("perfetto_trace.json.gz"))).read())
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    return [{**e, "gpu": "stream" in threads.get((e["pid"], e.get("tid")), "").lower()}
            for e in trace["traceEvents"] if e.get("ph") == "X"]


def trace_kernels(events: list) -> list:
    """(kernel name, HLO op or None, microseconds) of every GPU stream event."""
    return [(e["name"], (e.get("args") or {}).get("hlo_op"), e["dur"]) for e in events if e["gpu"]]


def synced_calls(events: list):
    """(call event, its kernels' (start, end) sorted by start) for each call annotated SYNCED_CALL that ran kernels."""
    kernels = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e["gpu"])
    for call in (e for e in events if e["name"] == SYNCED_CALL):
        inside = [k for k in kernels if call["ts"] <= k[0] <= call["ts"] + call["dur"]]
        if inside:
            yield call, inside


def synced_timeline(events: list) -> dict | None:
    """Where a synchronised call's time goes, median over the calls annotated SYNCED_CALL (microseconds): before
    its first kernel starts ("lead"), GPU idle between its kernels ("gaps"), after its last kernel ends until the
    host has the result ("tail"), and kernel time ("busy"). None without GPU events."""
    parts = collections.defaultdict(list)
    for call, inside in synced_calls(events):
        busy, covered_to = 0.0, inside[0][0]
        for start, end in inside:  # union of kernel intervals (streams may overlap)
            busy += max(0.0, end - max(start, covered_to))
            covered_to = max(covered_to, end)
        parts["lead"].append(inside[0][0] - call["ts"])
        parts["gaps"].append(covered_to - inside[0][0] - busy)
        parts["tail"].append(call["ts"] + call["dur"] - covered_to)
        parts["busy"].append(busy)
    return {name: statistics.median(values) for name, values in parts.items()} or None


def host_events_by_name(events: list, top: int) -> dict:
    """Host events (not on a GPU stream) inside the synchronised calls, microseconds per call summed by name, split
    into those that start before the call's first kernel ("lead") and after its last ("tail"): what the host does
    while the GPU waits. Nested events each count."""
    calls = sum(e["name"] == SYNCED_CALL for e in events)
    host = [e for e in events if not e["gpu"] and e["name"] != SYNCED_CALL]
    split = {"lead": collections.Counter(), "tail": collections.Counter()}
    for call, inside in synced_calls(events):
        end = call["ts"] + call["dur"]
        first, last = inside[0][0], max(k[1] for k in inside)
        for e in host:
            if call["ts"] <= e["ts"] < first:
                split["lead"][e["name"]] += e["dur"] / calls
            elif last <= e["ts"] <= end:
                split["tail"][e["name"]] += e["dur"] / calls
    return {part: dict(counter.most_common(top)) for part, counter in split.items()}


def command_buffer_events(events: list) -> dict:
    """Per synchronised call: how many times, and for how long, the host ran each command_buffer::* step
    (initialize, update = re-recording after buffer addresses changed, execute = launch) anywhere in the call."""
    calls = sum(e["name"] == SYNCED_CALL for e in events)
    found = collections.defaultdict(lambda: [0.0, 0.0])
    for call, _ in synced_calls(events):
        for e in events:
            if (not e["gpu"] and e["name"].startswith("command_buffer::")
                    and call["ts"] <= e["ts"] <= call["ts"] + call["dur"]):
                found[e["name"]][0] += 1 / calls
                found[e["name"]][1] += e["dur"] / calls
    return {name: {"per_call": n, "ms_per_call": us / 1e3} for name, (n, us) in found.items()}


def profile(title: str, compiled, fn, calls: int, top: int, hlo_dir: str | None = None) -> dict:
    timed = time_jax(fn, 1, 10)
    timing = {"ms": 1e3 * statistics.median(timed["times"]), "ms_back_to_back": 1e3 * timed["back_to_back"],
              "dispatch_ms": 1e3 * timed["dispatch"]}
    memory = compiled_memory(compiled) or {}
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            outs = [fn() for _ in range(calls)]
            jax.block_until_ready(outs[-1])
            del outs
            for _ in range(calls):
                with jax.profiler.TraceAnnotation(SYNCED_CALL):
                    jax.block_until_ready(fn())
        events = trace_events(Path(folder))
    synced = [e for e in events if e["name"] == SYNCED_CALL]
    first_synced = min((e["ts"] for e in synced), default=float("inf"))
    kernels = trace_kernels([e for e in events if e["ts"] < first_synced])  # the back-to-back calls
    timeline = synced_timeline(events)
    host_waits = host_events_by_name(events, 12)
    command_buffers = command_buffer_events(events)
    hlo = compiled.as_text()
    if hlo_dir:
        Path(hlo_dir, f"{title.split()[0]}.hlo.txt.gz").write_bytes(gzip.compress(hlo.encode()))
    sources, signatures = hlo_sources(hlo), hlo_signatures(hlo)
    by_source, by_kernel, by_instruction = collections.Counter(), collections.Counter(), collections.Counter()
    launches = collections.Counter()  # XLA reuses one kernel for identical fusions (a layer's, in every layer)
    for name, op, us in kernels:
        key = next((k for k in (_kernel_key(op or ""), _kernel_key(name)) if k in signatures), _kernel_key(name))
        by_source[sources.get(key, "?")] += us / calls
        by_kernel[name] += us / calls
        by_instruction[key] += us / calls
        launches[key] += 1 / calls
    total = sum(by_kernel.values()) or 1e-9  # no GPU stream events off a GPU
    print(f"\n== {title}: {timing['ms']:.2f} ms synchronised, {timing['ms_back_to_back']:.2f} ms back to back, "
          f"dispatch {timing['dispatch_ms']:.3f} ms; {total / 1e3:.2f} ms of GPU kernels in "
          f"{len(kernels) // calls} launches per call; peak {memory.get('peak_bytes', 0) / 1e9:.2f} GB "
          f"(temp {memory.get('temp_bytes', 0) / 1e9:.2f} GB)")
    if timeline:
        print("  one synchronised call: " + ", ".join(f"{name} {us / 1e3:.3f} ms" for name, us in timeline.items())
              + " (lead: before its first kernel; gaps: GPU idle between its kernels; tail: after its last)")
    for part, names in host_waits.items():
        print(f"  host events in the {part} (ms per synchronised call): "
              + "; ".join(f"{name[:60]} {us / 1e3:.3f}" for name, us in names.items()))
    print("  command buffers, per synchronised call: " + "; ".join(
        f"{name} x{v['per_call']:.0f} {v['ms_per_call']:.3f} ms" for name, v in command_buffers.items()))
    print("  by source line (file:line op):")
    for source, us in by_source.most_common(top):
        print(f"    {us / 1e3:7.3f} ms  {100 * us / total:5.1f}%  {source[:100]}")
    print("  by kernel:")
    for name, us in by_kernel.most_common(top):
        print(f"    {us / 1e3:7.3f} ms  {100 * us / total:5.1f}%  {name[:100]}")
    print("  by HLO instruction (launches per call, its shapes, then its source):")
    for key, us in by_instruction.most_common(top):
        print(f"    {us / 1e3:7.3f} ms  {100 * us / total:5.1f}%  x{launches[key]:<4.0f} {key[:40]}  "
              f"{signatures.get(key, '?')[:150]}  {sources.get(key, '?')[:80]}")
    return {"title": title, **timing, **memory, "kernel_ms": total / 1e3,
            "synced_call_ms": {k: v / 1e3 for k, v in (timeline or {}).items()},
            "synced_command_buffers": command_buffers,
            "synced_host_ms": {part: {k: v / 1e3 for k, v in names.items()} for part, names in host_waits.items()},
            "by_source_ms": {k: v / 1e3 for k, v in by_source.most_common()},
            "by_kernel_ms": {k: v / 1e3 for k, v in by_kernel.most_common()},
            "by_instruction": {k: {"ms": v / 1e3, "launches": launches[k], "hlo": signatures.get(k, "?"),
                                   "source": sources.get(k, "?")} for k, v in by_instruction.most_common()}}


def kernel_benchmark(compiled, inputs) -> dict:
    """compiled(*inputs) timed: the median ms of synchronised calls, the mean ms back to back, the GPU kernels' ms
    from a profile (printed nowhere), and the result ("out")."""
    call = lambda: compiled(*inputs)
    timed = time_jax(call, 3, 20)
    with contextlib.redirect_stdout(io.StringIO()):
        kernels = profile("kernel benchmark", compiled, call, 3, 1)["kernel_ms"]
    return {"ms": median_ms(timed["times"]), "ms_back_to_back": 1e3 * timed["back_to_back"], "kernel_ms": kernels,
            "out": call()}
