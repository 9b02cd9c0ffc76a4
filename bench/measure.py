"""What several benchmarks share, without torch (so a JAX-only benchmark does not load it): model shapes, analytic
FLOP counts, and the timing and memory of JAX programs. Importing it puts the repository root on sys.path, so the
scripts that import it (run as `python bench/NAME.py`) find jaxport and the families without installation."""
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# ------------------------------------------------------------------------------------------------ shapes

BYT5_SMALL = dict(vocab_size=384, d_model=1472, d_kv=64, num_heads=6, d_ff=3584, num_layers=12,
                  num_decoder_layers=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                  dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
LSG_BART_BASE = dict(
    vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
    decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=16384,
    activation_function="gelu", dropout=0.1, attention_dropout=0.0, activation_dropout=0.1, init_std=0.02,
    scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    forced_eos_token_id=2, block_size=256, num_global_tokens=64, sparse_block_size=0, sparsity_factor=0,
    sparsity_type="none", adaptive=True, mask_first_token=False, pass_global_tokens_to_decoder=True,
    pool_with_global=True)


# ------------------------------------------------------------------------------------------------ arithmetic

def t5_train_flops(m: dict, batch: int, t_in: int, t_out: int) -> dict:
    """Model FLOPs of one training step (fwd + bwd = 3 x fwd), counted analytically.

    Matmul weights: 6 FLOPs per weight per token that passes through it. Cross-attention's key/value
    projections run over the encoder tokens, its query/output over the decoder tokens. Attention scores
    and values: 2 matmuls x 2 FLOPs x B x heads x d_kv x T_q x T_k per layer forward (the decoder's causal
    self-attention is counted in full, as both implementations compute it), x 3 for fwd + bwd.
    Embedding lookups, norms, softmax and the optimizer are not counted."""
    d, hk, ff, vocab = m["d_model"], m["num_heads"] * m["d_kv"], m["d_ff"], m["vocab_size"]
    mlp = (3 if m["feed_forward_proj"].startswith("gated-") else 2) * d * ff
    enc_tokens, dec_tokens = batch * t_in, batch * t_out
    encoder_params = m["num_layers"] * (4 * d * hk + mlp)
    decoder_params = m["num_decoder_layers"] * (4 * d * hk + 2 * d * hk + mlp)  # self q,k,v,o; cross q,o; mlp
    cross_kv_params = m["num_decoder_layers"] * 2 * d * hk
    head_params = d * vocab
    terms = {
        "encoder": 6 * encoder_params * enc_tokens,
        "decoder": 6 * decoder_params * dec_tokens,
        "cross_kv": 6 * cross_kv_params * enc_tokens,
        "lm_head": 6 * head_params * dec_tokens,
        "attention": 3 * 4 * batch * hk * (m["num_layers"] * t_in * t_in
                                           + m["num_decoder_layers"] * (t_out * t_out + t_out * t_in)),
    }
    formula = (f"6*({encoder_params:,} enc params x {enc_tokens:,} tok + {decoder_params:,} dec params x "
               f"{dec_tokens:,} tok + {cross_kv_params:,} cross-kv params x {enc_tokens:,} tok + {head_params:,} "
               f"lm_head params x {dec_tokens:,} tok) + 3*4*B*H*dk*(Le*Ti^2 + Ld*(To^2 + To*Ti))")
    return {"terms": terms, "total": sum(terms.values()), "formula": formula}


def lsg_encoder_cost(m: dict, tokens: int) -> dict:
    """FLOPs and minimum HBM bytes of one LSG encoder forward (batch 1, `tokens` input tokens, bf16).

    FLOPs (2 per multiply-add): per layer, Q/K/V/O projections 2*L*4*d^2 and the MLP 2*L*2*d*ff over L = G + T
    tokens; block attention 4*T*(G + 3*block)*d (scores and values; each block of queries sees the globals and
    three blocks of keys) and the global queries 4*G*L*d. Bytes: the weights once, plus per layer and token
    18*d + 2*ff bf16 values (read x, write q/k/v, a fused attention reading q/k/v once and writing its output,
    out-projection in/out, residual + LayerNorm reading two and writing one, fc1 in and ff-wide out with GELU
    fused, fc2 ff-wide in and out, residual + LayerNorm), plus the embedding gathers. Scores never reach HBM in
    this count: it is the floor of a fused kernel, not of the einsum formulation."""
    d, ff, layers = m["d_model"], m["encoder_ffn_dim"], m["encoder_layers"]
    G, bs = m["num_global_tokens"], m["block_size"]
    T = tokens
    L = G + T
    local_keys = G + 3 * bs if T > 2 * bs else L
    terms = {
        "projections": layers * 2 * L * 4 * d * d,
        "mlp": layers * 2 * L * 2 * d * ff,
        "block_attention": layers * 4 * T * local_keys * d,
        "global_attention": layers * 4 * G * L * d,
    }
    weight_bytes = 2 * layers * (4 * d * d + 2 * d * ff + 4 * d + ff + d + 4 * d)
    activation_bytes = 2 * layers * L * (18 * d + 2 * ff) + 2 * 3 * L * d  # + token/position gathers, first LN
    return {"flops_terms": terms, "flops": sum(terms.values()), "bytes_weights": weight_bytes,
            "bytes_activations": activation_bytes, "bytes": weight_bytes + activation_bytes,
            "formula": f"per layer 2*L*4*d^2 + 2*L*2*d*ff + 4*T*(G+3*block)*d + 4*G*L*d with L={L}, T={T}, d={d}, "
                       f"ff={ff}, G={G}, block={bs}; bytes = weights + 2*layers*L*(18*d + 2*ff) + 6*L*d"}


def lsg_train_flops(m: dict, tokens_in: int, tokens_out: int) -> dict:
    """Model FLOPs of one training step (3 x forward): the encoder as in lsg_encoder_cost; the decoder's matmuls
    (self Q/K/V/O, cross Q/O and MLP over the target tokens, cross K/V over the G + T encoder states), its
    attention (self T_out^2 counted in full, cross T_out x (G + T)) and the LM head over the target tokens."""
    d, ff, V = m["d_model"], m["decoder_ffn_dim"], m["vocab_size"]
    L_enc = m["num_global_tokens"] + tokens_in
    layers = m["decoder_layers"]
    terms = {
        "encoder": 3 * lsg_encoder_cost(m, tokens_in)["flops"],
        "decoder": 3 * layers * 2 * tokens_out * (6 * d * d + 2 * d * ff),
        "cross_kv": 3 * layers * 2 * L_enc * 2 * d * d,
        "decoder_attention": 3 * layers * 4 * d * (tokens_out * tokens_out + tokens_out * L_enc),
        "lm_head": 3 * 2 * tokens_out * d * V,
    }
    return {"terms": terms, "total": sum(terms.values())}


# ------------------------------------------------------------------------------------------------ timing, memory

B2B_BLOCKS = 3  # back-to-back blocks: the median block is kept, so one host hiccup cannot make the figure


def median_ms(times) -> float:
    """The median of times in seconds, in milliseconds."""
    return 1e3 * statistics.median(times)


def jax_back_to_back_ms(call, runs: int) -> float:
    """The mean ms of `runs` calls of call() dispatched back to back, waiting on the last one's result only (calls run
    in order on one stream)."""
    start = time.perf_counter()
    outs = [call() for _ in range(runs)]
    jax.block_until_ready(outs[-1])
    return 1e3 * (time.perf_counter() - start) / runs


def time_jax(fn, warmup: int, runs: int) -> dict:
    """`fn`'s calls timed three ways after `warmup` calls: each synchronised ("times", s), the host time until each
    returns ("dispatch", median s), and back to back ("back_to_back", s): the median over B2B_BLOCKS blocks of the
    mean call of `runs` calls dispatched back to back ("back_to_back_blocks"; each block waits on its last call
    only: calls run in order on one stream, and earlier training states are donated)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times, dispatch = [], []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        dispatch.append(time.perf_counter() - start)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
        del out
    blocks = [jax_back_to_back_ms(fn, runs) / 1e3 for _ in range(B2B_BLOCKS)]
    return {"times": times, "dispatch": statistics.median(dispatch), "back_to_back": statistics.median(blocks),
            "back_to_back_blocks": blocks}


def chained_steps(compiled, state, batch):
    """A call that runs one training step on the last call's (donated) state and returns the new state; the call's
    `last` holds it."""
    def step():
        step.last = compiled(step.last, batch)
        return step.last

    step.last = state
    return step


def compiled_memory(compiled) -> dict | None:
    """Device bytes a compiled program holds while it runs: arguments + outputs + its temporary slab - what the
    outputs alias (donated inputs). XLA's own peak field is kept beside it."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends have none
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"peak_bytes": total, "argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
            "temp_bytes": m.temp_size_in_bytes, "alias_bytes": m.alias_size_in_bytes,
            "xla_peak_memory_in_bytes": getattr(m, "peak_memory_in_bytes", None)}


def pool_peak():
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def print_kernel_results(title: str, results: dict) -> None:
    """One line per implementation of a kernel benchmark: microseconds synchronised, back to back and (JAX) of GPU
    kernels, and the largest error against the float32 reference."""
    print(f"\n== {title} ({jax.devices()[0].device_kind})")
    for name, r in results.items():
        kernels = f", kernels {1e3 * r['kernel_ms']:.1f} us" if "kernel_ms" in r else ""
        print(f"  {name:>6}: {1e3 * r['ms']:8.1f} us synchronised, {1e3 * r['ms_back_to_back']:8.1f} us back to back"
              f"{kernels}; max |error| vs float32 {r['max_error']:.2e}")


def write_results(results: dict, out: str | None) -> None:
    """The run's whole record as JSON at `out` (nothing without one), said on stdout."""
    if out:
        Path(out).write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"wrote {out}", flush=True)


def measure_attention(title: str, make, inputs, names, reference: str = "xla") -> dict:
    """Each implementation in `names` of an attention (make(implementation, dtype) -> attention(q, k, v)) in bf16:
    its output and gradients' errors against `reference` in float32, and its time forward and forward + backward
    (synchronised median, back to back). inputs: q, k, v and the output's cotangent (bf16)."""
    def programs(name, dtype):
        attention = make(name, dtype)

        def forward_backward(q, k, v, cotangent):
            out, vjp = jax.vjp(attention, *(x.astype(dtype) for x in (q, k, v)))
            return out, *vjp(cotangent.astype(dtype))
        return jax.jit(attention), jax.jit(forward_backward)

    expected = [np.asarray(x, np.float32) for x in programs(reference, jnp.float32)[1](*inputs)]
    print(title)
    results = {}
    for name in names:
        forward, forward_backward = programs(name, jnp.bfloat16)
        errors = {}
        for part, got, want in zip(("out", "dq", "dk", "dv"), forward_backward(*inputs), expected, strict=True):
            diff = np.abs(np.asarray(got, np.float32) - want)
            errors[part] = {"max": float(diff.max()), "mean": float(diff.mean()), "scale": float(np.abs(want).mean())}
        times = {"forward": time_jax(lambda: forward(*inputs[:3]), 3, 20),
                 "forward_backward": time_jax(lambda: forward_backward(*inputs), 3, 20)}
        results[name] = {"errors": errors, **{what: {"ms": 1e3 * statistics.median(t["times"]),
                                                     "ms_back_to_back": 1e3 * t["back_to_back"]}
                                              for what, t in times.items()}}
        timing = results[name]
        print(f"{name:>7}: forward {timing['forward']['ms']:.3f} ms (b2b {timing['forward']['ms_back_to_back']:.3f}), "
              f"forward + backward {timing['forward_backward']['ms']:.3f} ms (b2b "
              f"{timing['forward_backward']['ms_back_to_back']:.3f}); |error| max / mean vs float32: "
              + ", ".join(f"{part} {e['max']:.4f} / {e['mean']:.5f} (scale {e['scale']:.4f})"
                          for part, e in errors.items()))
    return results
