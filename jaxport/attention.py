"""Which attention implementation runs, and the fused formulation every family shares.

A model's config names an implementation (`attn_implementation`): "einsum" (the family's own einsums: scores kept
in float32, attention dropout), "xla" or "cudnn" (`jax.nn.dot_product_attention`: XLA's formulation anywhere,
cuDNN flash attention on an NVIDIA GPU, which never writes the [batch, heads, queries, keys] scores to memory), or
"auto". `resolve` turns that name into the implementation of one forward pass, once; the model hands it down to
its attention layers, which call `fused_attention` for anything other than "einsum". Families with kernels of
their own (LSG's Pallas kernels) build their choice on top of `resolve`.
"""
import jax
import jax.numpy as jnp

HALF = (jnp.bfloat16, jnp.float16)
IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "auto")


def default_platform() -> str:
    """JAX's default backend, where "gpu" means an NVIDIA GPU (cuDNN, the Triton kernels as tested): "rocm" else."""
    backend = jax.default_backend()
    if backend == "gpu" and "cuda" not in jax.devices()[0].client.platform_version.lower():
        return "rocm"
    return backend


def cudnn_supported(dtype, head_dim: int, platform: str) -> bool:
    """Whether cuDNN flash attention takes this attention: an NVIDIA GPU, half-precision compute and a head dim that
    is a multiple of 8 up to 128 (256 on Hopper and later; 128 holds everywhere)."""
    return (platform == "gpu" and jnp.dtype(dtype) in map(jnp.dtype, HALF) and head_dim % 8 == 0
            and head_dim <= 128)


def resolve(name: str, dtype, head_dim: int, *, dropout: bool, lengths: tuple[int, ...] = (),
            platform: str | None = None) -> str:
    """The implementation of one forward pass of an attention computing in `dtype` with heads of `head_dim`:

    - "einsum" whenever attention dropout applies (`dropout`: training with a nonzero rate; fused attention has
      none);
    - "auto": "cudnn" where `cudnn_supported` and every length in `lengths` (queries, keys) is even (cuDNN refuses
      odd lengths with a bias in training), else "einsum" (CPU, TPU, float32 models: their attention stays
      float32);
    - another name as given; "cudnn" off an NVIDIA GPU is an error.

    platform: default_platform()'s name, this process's by default."""
    platform = platform or default_platform()
    if dropout:
        return "einsum"
    if name == "auto":
        even = all(length % 2 == 0 for length in lengths)
        return "cudnn" if even and cudnn_supported(dtype, head_dim, platform) else "einsum"
    if name == "cudnn" and platform != "gpu":
        raise ValueError("attn_implementation='cudnn' needs an NVIDIA GPU as JAX's default backend; use 'xla' (the "
                         "same formulation through XLA), 'einsum' or 'auto'")
    return name


def compute_dtype(dtype, implementation: str):
    """cuDNN takes half precision only: other inputs are computed in bfloat16 there, in their own dtype by XLA."""
    return jnp.bfloat16 if implementation == "cudnn" and jnp.dtype(dtype) not in map(jnp.dtype, HALF) else dtype


def fused_attention(q, k, v, bias, mask, implementation: str, *, scale: float | None = None,
                    is_causal: bool = False) -> jax.Array:
    """softmax(scale * q k^T + bias) v over the keys `mask` allows, through jax.nn.dot_product_attention
    (implementation "xla" or "cudnn"). q [B, T, H, D], k/v [B, S, H, D]; bias float [B | 1, H | 1, T, S] or None
    (differentiable: T5's learned relative positions); mask boolean, broadcastable to [B, H, T, S], or None;
    is_causal: query t sees keys up to t (the kernel's own mask: cuDNN skips the blocks above the diagonal); scale
    None for 1/sqrt(D). Returns [B, T, H, D] in the computation's dtype (compute_dtype of q's).

    Bias and mask stay apart, as the API takes them. cuDNN adds them into one bias in q's dtype (so the bias is cast
    to it here: a float32 bias gave NaN gradients, jax-ml/jax#32242) and needs that bias to have T rows: a mask
    without a bias is broadcast to them (jax-ml/jax#28974)."""
    compute = compute_dtype(q.dtype, implementation)
    q, k, v = (x.astype(compute) for x in (q, k, v))
    if implementation == "cudnn":
        if bias is not None:
            bias = bias.astype(compute)
        elif mask is not None:
            mask = jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
                                        implementation=implementation)
