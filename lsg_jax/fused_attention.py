"""LSG attention through fused attention (`jax.nn.dot_product_attention`: cuDNN flash attention on an NVIDIA GPU,
or XLA's reference implementation anywhere), so the [batch, heads, blocks, block, keys] scores of the einsum
formulation (lsg_jax.attention) never reach HBM.

Every block of queries becomes one batch element of a dense attention over its own keys - the einsum path's keys:
global tokens, sparse tokens, previous / own / next block - gathered as [batch * blocks, keys, heads, head_dim].
The einsum path gives masked keys a NEG_INF bias, so they add exactly 0 to the softmax; here they are left out:
softmax does not depend on the order of the keys, so each key set is permuted to put its valid keys first and
`key_value_seq_lengths` says how many there are (the padding mask, which cuDNN's flash attention supports forward
and backward). Short inputs (full attention in the einsum path too) go through the same helper over all keys;
the global tokens' queries attend to all keys through XLA with the padding as a mask. Sparse tokens whose mask
differs between heads (norm, stride, block_stride, lsh) make each (block, head) its own batch element, since the
lengths are per batch element.

Exactly the einsum path's result for every row with at least one valid key. Global tokens are valid keys of every
row, so within the model (num_global_tokens >= 1) that is every row; without global tokens, a row whose keys are
all padding attends to a single padding key instead of averaging all of them (its output is padding either way).
"""
import jax
import jax.numpy as jnp

from jaxport.attention import compute_dtype
from lsg_jax.attention import sparse_tokens, sparse_window_indices


def _take_rows(x, idx):
    """x [N, S, ...] gathered along axis 1 by idx [N, S]: one gather of whole rows (indices are in range, so no
    out-of-range masking pass)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1, mode="promise_in_bounds")


@jax.custom_vjp
def _permute(x, order, inverse):
    """x [N, S, ...] with its rows permuted: out[:, j] = x[:, order[:, j]]; inverse is order's inverse permutation."""
    return _take_rows(x, order)


def _permute_fwd(x, order, inverse):
    return _take_rows(x, order), inverse


def _permute_bwd(inverse, g):
    # The transpose of a permutation is the inverse permutation: a gather again, where autodiff of the gather
    # would scatter-add (atomics on GPU).
    return _take_rows(g, inverse), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def _attend(q, k, v, valid, implementation: str):
    """Softmax(q k^T / sqrt(d)) v over the valid keys only. q [N, T, H, D], k/v [N, S, H, D], valid [N, S] (same
    for every head) or [N, S, H]. Returns [N, T, H, D]."""
    if valid.ndim == 3:  # per-head key sets: one batch element per (row, head)
        N, T, H, D = q.shape
        fold = lambda x: jnp.swapaxes(x, 1, 2).reshape(N * H, x.shape[1], 1, D)
        out = _attend(fold(q), fold(k), fold(v), jnp.swapaxes(valid, 1, 2).reshape(N * H, -1), implementation)
        return jnp.swapaxes(out.reshape(N, H, T, D), 1, 2)
    count = valid.sum(axis=-1, dtype=jnp.int32)

    def valid_first(k, v):
        order = jnp.argsort(~valid, axis=-1, stable=True)  # valid keys first, in their order
        inverse = jnp.where(valid, jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1,
                            count[:, None] + jnp.cumsum(~valid, axis=-1, dtype=jnp.int32) - 1)
        return _permute(k, order, inverse), _permute(v, order, inverse)

    # Right-padded rows (the usual batch) have their valid keys first already: the permutation's gathers, forward
    # and backward, run only when some row has a hole.
    in_order = jnp.all(valid == (jnp.arange(valid.shape[1]) < count[:, None]))
    k, v = jax.lax.cond(in_order, lambda k, v: (k, v), valid_first, k, v)
    # A row without any valid key (only possible without global tokens) gets one, so that it stays finite.
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.maximum(count, 1),
                                        implementation=implementation)


def fused_padded_attention(q, k, v, key_valid, dtype, implementation: str):
    """Dense attention of q [B, T, H, D] over the valid keys of k/v [B, S, H, D] (key_valid [B, S]) through fused
    attention, implementation "xla" or "cudnn" (the decoder's cross-attention over a long encoder output in
    training: its [B, H, T, S] scores would otherwise be kept for the backward pass). Returns [B, T, H, D] in
    `dtype`."""
    q, k, v = (x.astype(compute_dtype(q.dtype, implementation)) for x in (q, k, v))
    return _attend(q, k, v, key_valid, implementation).astype(dtype)


def _with_neighbours(x, fill):
    """[B, nb, bs, ...] -> [B, nb, 3 * bs, ...]: each block after the previous one and before the next one (`fill`
    beyond the ends)."""
    x = jnp.pad(x, [(0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return jnp.concatenate([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)


def fused_lsg_attention(q, k, v, bias, cfg, dtype, implementation: str, lsh_projections=None):
    """einsum_lsg_attention's contract (q/k/v [B, H, G + T, D] global tokens first, bias [B, G + T] of 0 / NEG_INF;
    returns [B, H, G + T, D] in `dtype`) through jax.nn.dot_product_attention(implementation="xla" | "cudnn").
    cuDNN computes in bfloat16 when the inputs are not already half precision."""
    G, bs = cfg.num_global_tokens, cfg.block_size
    B, H, L, D = q.shape
    compute = compute_dtype(q.dtype, implementation)
    valid = bias == 0  # the einsum path's NEG_INF keys are the invalid ones
    sparse = None
    if cfg.has_sparse and L > 2 * bs + G:  # built by attention.py, in its layout [B, H, S, D] and precision
        sparse = sparse_tokens(q[:, :, G:], k[:, :, G:], v[:, :, G:], bias[:, None, G:], cfg, lsh_projections)
    q, k, v = (jnp.swapaxes(x, 1, 2).astype(compute) for x in (q, k, v))  # [B, L, H, D]
    if L <= 2 * bs + G:  # local attention would cover every token: full attention, as the einsum path does
        return jnp.swapaxes(_attend(q, k, v, valid, implementation), 1, 2).astype(dtype)
    T = L - G
    if T % bs:
        raise ValueError(f"sequence length {T} is not a multiple of block_size {bs} (adaptive=False)")
    nb = T // bs
    blocks = lambda x: x[:, G:].reshape(B, nb, bs, *x.shape[2:])
    # Each block's keys along axis 2: [B, nb, keys, H, D] for k and v, validity [B, nb, keys] (or [B, nb, keys, H]).
    key_parts = [[jnp.broadcast_to(x[:, None, :G], (B, nb, G, H, D))] for x in (k, v)]
    valid_parts = [jnp.ones((B, nb, G), bool)]
    if sparse is not None:
        sk, sv, sm = sparse  # mask [B, 1 | H, S]
        idx, window_valid = sparse_window_indices(sk.shape[2], nb, bs, cfg.sparse_block_size, cfg.sparsity_factor)
        if idx.shape[1]:
            for parts, x in zip(key_parts, (sk, sv), strict=True):
                parts.append(jnp.moveaxis(jnp.take(x.astype(compute), jnp.asarray(idx), axis=2), 1, 3))
            sparse_valid = (jnp.take(sm, jnp.asarray(idx), axis=2) == 0) & window_valid  # [B, 1 | H, nb, n]
            valid_parts.append(jnp.moveaxis(sparse_valid, 1, 3) if sm.shape[1] > 1 else sparse_valid[:, 0])
    for parts, x in zip(key_parts, (k, v), strict=True):
        parts.append(_with_neighbours(blocks(x), 0))
    valid_parts.append(_with_neighbours(blocks(valid), False))
    if any(m.ndim == 4 for m in valid_parts):  # a per-head sparse mask makes every part per head
        valid_parts = [m if m.ndim == 4 else jnp.broadcast_to(m[..., None], (*m.shape, H)) for m in valid_parts]

    def per_block(parts):  # [B * nb, keys, ...]
        x = jnp.concatenate(parts, axis=2)
        return x.reshape(B * nb, *x.shape[2:])

    out = _attend(blocks(q).reshape(B * nb, bs, H, D), per_block(key_parts[0]), per_block(key_parts[1]),
                  per_block(valid_parts), implementation).reshape(B, T, H, D)
    if G:  # the global tokens' queries attend to every valid key
        # Through XLA even under cuDNN: flash attention spreads work over (batch, heads, query tiles), and G queries
        # make a single tile, so cuDNN would run B * H thread blocks down all L keys (measured on an H100: the
        # larger part of the encoder's attention time); XLA's [G, L] scores are small and fully parallel, and
        # take the padding as a mask (no key permutation).
        glob = jax.nn.dot_product_attention(q[:, :G], k, v, mask=valid[:, None, None, :], implementation="xla")
        out = jnp.concatenate([glob, out], axis=1)
    return jnp.swapaxes(out, 1, 2).astype(dtype)
