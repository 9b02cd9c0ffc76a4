"""LSG attention (Condevaux & Harispe, "LSG Attention: Extrapolation of pretrained Transformers to long
sequences") as blocked einsums with static shapes.

Layout: queries/keys/values are [batch, heads, length, head_dim] with the num_global_tokens global tokens first.
Masks are additive float32 biases (0 or NEG_INF) over keys. Every block of `block_size` queries attends to:
  - the global tokens,
  - 2 * sparse_block_size "sparse" tokens: keys summarised from a wider neighbourhood by the sparsity_type
    (norm: highest-norm keys, pooling: averages, lsh: hashed-bucket averages, stride / block_stride: every
    sparsity_factor-th key, bos_pooling: averages weighted by the first token's attention),
  - its own block and the two neighbouring blocks (local attention).
Global tokens attend to everything. Which keys each block sees follows the PyTorch original exactly (its
padding / unfolding arithmetic is replayed once, in numpy, into static index tables).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxport.layers import NEG_INF, dropout, split_rng

HIGHEST = jax.lax.Precision.HIGHEST


def _softmax_attend(scores: jax.Array, values: jax.Array, pattern: str, dtype, dropout_rate: float = 0.0,
                    rng=None) -> jax.Array:
    probs = dropout(jax.nn.softmax(scores, axis=-1).astype(dtype), dropout_rate, rng)
    return jnp.einsum(pattern, probs, values.astype(dtype))


def full_attention(q, k, v, bias, dtype, dropout_rate: float = 0.0, rng=None):
    """Softmax(q k^T / sqrt(d) + bias) v, with dropout on the probabilities when rng is given. q [B,H,Q,D],
    k/v [B,H,K,D], bias broadcastable to [B,H,Q,K]."""
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    return _softmax_attend(scores + bias, v, "bhqk,bhkd->bhqd", dtype, dropout_rate, rng)


@functools.lru_cache(maxsize=None)
def sparse_window_indices(sparse_length: int, num_blocks: int, block_size: int, sparse_block_size: int,
                          sparsity_factor: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query block, the positions in the sparse sequence it attends to: (indices [num_blocks, n] with
    invalid entries set to 0, valid [num_blocks, n]). Replays the original's pad / unfold / slice arithmetic on
    positions, where padding is -1."""
    size, step = sparse_block_size * 3 * 2, block_size // sparsity_factor
    odd = step % 2
    pad = (size - step) // 2 + odd
    padded = np.concatenate([np.full(pad, -1), np.arange(sparse_length), np.full(pad, -1)])
    count = (len(padded) - size) // step + 1
    windows = np.stack([padded[j * step:j * step + size] for j in range(count)])
    if odd:
        windows = windows[:-1]
    u = (size - block_size * 3 // sparsity_factor) // 2 + odd
    s, u_ = sparse_block_size, u + odd
    # Same slicing semantics as torch's (an end of 0 gives an empty slice there too).
    selected = np.concatenate([windows[:, u - s:u], windows[:, -u_:-u_ + s]], axis=1)
    if selected.shape[0] != num_blocks:
        raise ValueError(f"sparse windows ({selected.shape[0]}) do not match the {num_blocks} blocks: "
                         f"block_size={block_size}, sparse_block_size={sparse_block_size}, "
                         f"sparsity_factor={sparsity_factor} are not compatible")
    valid = selected >= 0
    return np.where(valid, selected, 0).astype(np.int32), valid


# ------------------------------------------------------------------------------------------------------------
# Sparse token selection. Each returns keys/values [B, H, S, D] and an additive mask [B, H|1, S].


def _chunk(x, size):
    """[B, H, T, D] -> [B, H, T // size, size, D]."""
    return x.reshape(*x.shape[:2], x.shape[2] // size, size, *x.shape[3:])


def _gather_tokens(k, v, mask, idx):
    """idx [B|1, H, S] positions along the length axis of k/v [B,H,T,D] and mask [B,1,T]."""
    k = jnp.take_along_axis(k, idx[..., None], axis=2)
    v = jnp.take_along_axis(v, idx[..., None], axis=2)
    mask = jnp.take_along_axis(jnp.broadcast_to(mask, (mask.shape[0], idx.shape[1], mask.shape[2])),
                               jnp.broadcast_to(idx, (mask.shape[0], *idx.shape[1:])), axis=2)
    return k, v, mask


def sparse_norm(k, v, mask, cfg):
    """In every chunk of min(block_size, sparse_block_size) keys, the block/sparsity_factor keys of highest norm
    (padding counts as norm 0), in ascending order of norm like the original's argsort."""
    chunk = min(cfg.block_size, cfg.sparse_block_size)
    keep = chunk // cfg.sparsity_factor
    norms = jnp.linalg.norm(k.astype(jnp.float32), axis=-1) * (mask == 0)  # [B, H, T]
    norms = norms.reshape(*norms.shape[:2], -1, chunk)
    order = jnp.argsort(norms, axis=-1)[..., chunk - keep:]
    idx = (order + jnp.arange(norms.shape[2])[:, None] * chunk).reshape(*norms.shape[:2], -1)
    return _gather_tokens(k, v, mask, idx)


def sparse_pooling(k, v, mask, cfg):
    """Mean of the non-padding keys/values of each chunk of sparsity_factor tokens."""
    factor = cfg.sparsity_factor
    valid = (mask == 0).astype(jnp.float32).reshape(mask.shape[0], 1, -1, factor, 1)  # [B,1,S,f,1]
    count = valid.sum(axis=-2)  # [B,1,S,1]
    k = (_chunk(k, factor).astype(jnp.float32) * valid).sum(axis=-2) / (count + 1e-6)
    v = (_chunk(v, factor).astype(jnp.float32) * valid).sum(axis=-2) / (count + 1e-6)
    return k, v, jnp.where(count[..., 0] > 0, 0.0, NEG_INF)


def sparse_stride(k, v, mask, cfg):
    """Every sparsity_factor-th key, head h starting at h % sparsity_factor."""
    factor, heads, length = cfg.sparsity_factor, k.shape[1], k.shape[2]
    idx = np.arange(length // factor)[None, :] * factor + (np.arange(heads) % factor)[:, None]
    return _gather_tokens(k, v, mask, jnp.asarray(idx[None], jnp.int32))


def sparse_block_stride(k, v, mask, cfg):
    """In every block, block_size/sparsity_factor consecutive keys, each head shifted by that many (mod block)."""
    block, factor, heads = cfg.block_size, cfg.sparsity_factor, k.shape[1]
    per_block, num_blocks = block // factor, k.shape[2] // block
    idx = (np.arange(per_block)[None, :] + np.arange(heads)[:, None] * per_block) % block  # [H, p]
    idx = (idx[:, None, :] + np.arange(num_blocks)[None, :, None] * block).reshape(heads, -1)
    return _gather_tokens(k, v, mask, jnp.asarray(idx[None], jnp.int32))


def sparse_bos_pooling(k, v, mask, q_first, cfg):
    """Chunks of sparsity_factor keys/values averaged with the softmax weights the first (non-global) query
    gives them. The original's mask for these tokens ends up 0 everywhere: it averages float32-min values,
    which overflows to -inf, then keeps only entries equal to float32-min. That is reproduced."""
    factor = cfg.sparsity_factor
    kc, vc = _chunk(k, factor), _chunk(v, factor)  # [B,H,S,f,D]
    scores = jnp.einsum("bhd,bhsfd->bhsf", q_first, kc, preferred_element_type=jnp.float32) / math.sqrt(k.shape[-1])
    scores = scores + mask.reshape(mask.shape[0], 1, -1, factor)
    weights = jax.nn.softmax(scores, axis=-1)
    k = jnp.einsum("bhsf,bhsfd->bhsd", weights, kc.astype(jnp.float32), precision=HIGHEST)
    v = jnp.einsum("bhsf,bhsfd->bhsd", weights, vc.astype(jnp.float32), precision=HIGHEST)
    return k, v, jnp.zeros((mask.shape[0], 1, k.shape[2]), jnp.float32)


def lsh_num_bins(cfg) -> list[int]:
    """Output sizes of the hashing rounds: lsh_num_pre_rounds rounds into chunk bins, then chunk/factor."""
    chunk = min(cfg.block_size, cfg.sparse_block_size)
    return [chunk] * cfg.lsh_num_pre_rounds + [chunk // cfg.sparsity_factor]


def lsh_projection_shapes(cfg, heads: int, head_dim: int) -> list[tuple[int, int, int]]:
    """Shapes [heads, head_dim, bins // 2] of the random projections one LSH encoder layer draws, in order."""
    return [(heads, head_dim, bins // 2) for bins in lsh_num_bins(cfg)]


def draw_lsh_projections(key: jax.Array, cfg, heads: int, head_dim: int) -> list[jax.Array]:
    """The standard-normal projections of one layer's LSH rounds, drawn from `key` (round r uses fold_in(key, r))."""
    return [jax.random.normal(jax.random.fold_in(key, r), shape, jnp.float32)
            for r, shape in enumerate(lsh_projection_shapes(cfg, heads, head_dim))]


def sparse_lsh(k, v, mask, projections, cfg):
    """Keys/values of each chunk hashed by random projections (argmax over [xR, -xR] of the normalised key) into
    bins and averaged per bin; lsh_num_pre_rounds rounds into as many bins as the chunk, then one into
    chunk/sparsity_factor bins. Bin sums are one-hot matmuls (no scatter)."""
    chunk = min(cfg.block_size, cfg.sparse_block_size)
    valid = (mask == 0).astype(jnp.float32).reshape(mask.shape[0], 1, -1, chunk, 1)  # [B,1,b,t,1]
    k = _chunk(k, chunk).astype(jnp.float32) * valid
    v = _chunk(v, chunk).astype(jnp.float32) * valid
    weight = jnp.broadcast_to(valid, (*k.shape[:-1], 1))  # [B,H,b,t,1]
    for projection, bins in zip(projections, lsh_num_bins(cfg), strict=True):
        unit = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
        proj = jnp.einsum("bhntd,hdr->bhntr", unit * jnp.clip(weight, 0, 1), projection.astype(jnp.float32),
                          precision=HIGHEST)
        bucket = jnp.argmax(jnp.concatenate([proj, -proj], axis=-1), axis=-1)  # [B,H,b,t], < 2 * (bins // 2)
        onehot = jax.nn.one_hot(bucket, bins, dtype=jnp.float32)  # [B,H,b,t,bins]
        k = jnp.einsum("bhntk,bhntd->bhnkd", onehot, k, precision=HIGHEST)
        v = jnp.einsum("bhntk,bhntd->bhnkd", onehot, v, precision=HIGHEST)
        weight = jnp.einsum("bhntk,bhntd->bhnkd", onehot, weight, precision=HIGHEST)
    k = k / (weight + 1e-8)
    v = v / (weight + 1e-8)
    new_mask = jnp.where(weight[..., 0] > 0, 0.0, NEG_INF)  # [B,H,b,bins]
    flat = lambda x: x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])
    return flat(k), flat(v), new_mask.reshape(*new_mask.shape[:2], -1)


def sparse_tokens(q, k, v, mask, cfg, lsh_projections=None):
    """The sparse keys/values/mask of `cfg.sparsity_type`; q/k/v [B,H,T,D] without global tokens, mask [B,1,T]."""
    if cfg.sparsity_factor == 1:
        return k, v, mask
    kind = cfg.sparsity_type
    if kind == "lsh" and cfg.sparsity_factor == cfg.sparse_block_size:
        kind = "bos_pooling"  # as the original does
    if kind == "norm":
        return sparse_norm(k, v, mask, cfg)
    if kind == "pooling":
        return sparse_pooling(k, v, mask, cfg)
    if kind == "stride":
        return sparse_stride(k, v, mask, cfg)
    if kind == "block_stride":
        return sparse_block_stride(k, v, mask, cfg)
    if kind == "bos_pooling":
        return sparse_bos_pooling(k, v, mask, q[:, :, 0], cfg)
    if kind == "lsh":
        if lsh_projections is None:
            raise ValueError("sparsity_type='lsh' needs random projections (pass an lsh key)")
        return sparse_lsh(k, v, mask, lsh_projections, cfg)
    raise ValueError(f"unknown sparsity_type {kind!r}")


# ------------------------------------------------------------------------------------------------------------


def einsum_lsg_attention(q, k, v, bias, cfg, dtype, lsh_projections=None, rng=None):
    """LSG self-attention as blocked einsums. q/k/v [B, H, G + T, D] (G = num_global_tokens first), bias [B, G + T]
    additive float32 (0 for the global tokens). Returns [B, H, G + T, D]. With rng (training),
    cfg.attention_dropout drops attention probabilities, as the original does."""
    dropping = rng is not None and cfg.attention_dropout > 0
    global_rng, local_rng = split_rng(rng if dropping else None, 2)
    G, bs = cfg.num_global_tokens, cfg.block_size
    B, H, L, D = q.shape
    bias4 = bias[:, None, None, :]
    if L <= 2 * bs + G:  # local attention would cover every token: plain attention
        return full_attention(q, k, v, bias4, dtype, cfg.attention_dropout, global_rng)
    T = L - G
    if T % bs:
        raise ValueError(f"sequence length {T} is not a multiple of block_size {bs} (adaptive=False)")
    nb = T // bs
    global_out = full_attention(q[:, :, :G], k, v, bias4, dtype, cfg.attention_dropout, global_rng)
    kg, vg = k[:, :, :G], v[:, :, :G]
    qn, kn, vn = q[:, :, G:], k[:, :, G:], v[:, :, G:]
    mask = bias[:, None, G:]  # [B,1,T]
    scale = 1.0 / math.sqrt(D)

    qb = qn.reshape(B, H, nb, bs, D)
    # Local keys: previous, own and next block.
    kb = jnp.pad(kn.reshape(B, H, nb, bs, D), ((0, 0), (0, 0), (1, 1), (0, 0), (0, 0)))
    vb = jnp.pad(vn.reshape(B, H, nb, bs, D), ((0, 0), (0, 0), (1, 1), (0, 0), (0, 0)))
    mb = jnp.pad(mask.reshape(B, 1, nb, bs), ((0, 0), (0, 0), (1, 1), (0, 0)), constant_values=NEG_INF)
    k_local = jnp.concatenate([kb[:, :, :-2], kb[:, :, 1:-1], kb[:, :, 2:]], axis=3)  # [B,H,nb,3bs,D]
    v_local = jnp.concatenate([vb[:, :, :-2], vb[:, :, 1:-1], vb[:, :, 2:]], axis=3)
    m_local = jnp.concatenate([mb[:, :, :-2], mb[:, :, 1:-1], mb[:, :, 2:]], axis=3)  # [B,1,nb,3bs]

    f32 = jnp.float32
    scores = [jnp.einsum("bhnqd,bhgd->bhnqg", qb, kg, preferred_element_type=f32) * scale,  # global: bias 0
              jnp.einsum("bhnqd,bhnkd->bhnqk", qb, k_local, preferred_element_type=f32) * scale
              + m_local[:, :, :, None, :]]
    values = [("bhnqg,bhgd->bhnqd", vg), ("bhnqk,bhnkd->bhnqd", v_local)]
    if cfg.has_sparse:
        sk, sv, sm = sparse_tokens(qn, kn, vn, mask, cfg, lsh_projections)
        idx, valid = sparse_window_indices(sk.shape[2], nb, bs, cfg.sparse_block_size, cfg.sparsity_factor)
        if idx.shape[1]:
            k_sparse = jnp.take(sk.astype(dtype), jnp.asarray(idx), axis=2)  # [B,H,nb,n,D]
            v_sparse = jnp.take(sv.astype(dtype), jnp.asarray(idx), axis=2)
            m_sparse = jnp.where(jnp.asarray(valid), jnp.take(sm, jnp.asarray(idx), axis=2), NEG_INF)  # [B,h,nb,n]
            # Padding positions of the window hold zero keys in the original: same scores, as they are masked.
            scores.append(jnp.einsum("bhnqd,bhnkd->bhnqk", qb, k_sparse, preferred_element_type=f32) * scale
                          + m_sparse[:, :, :, None, :])
            values.append(("bhnqk,bhnkd->bhnqd", v_sparse))
    sizes = [s.shape[-1] for s in scores]
    probs = dropout(jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1).astype(dtype), cfg.attention_dropout,
                    local_rng)
    out = 0
    for (pattern, value), part in zip(values, jnp.split(probs, np.cumsum(sizes)[:-1], axis=-1), strict=True):
        out = out + jnp.einsum(pattern, part, value.astype(dtype))
    return jnp.concatenate([global_out, out.reshape(B, H, T, D).astype(global_out.dtype)], axis=2)
