"""Attention masks, packed-document metadata, and every attention implementation behind one
entry point, `dot_product_attention` (XLA, the bfloat16 CPU kernel, cuDNN's packed flash
attention).

Shape letters in names are those of lmlib/models/layers.py.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lmlib.errors import ConfigError
from lmlib.models.ops import _f32_dot


def attention_mask(segment_ids_bt: jax.Array) -> jax.Array:
    """(B, 1, T, T) boolean: causal, and only within the same packed document."""
    length = segment_ids_bt.shape[1]
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    same_doc = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
    return (causal[None] & same_doc)[:, None]


# Documents per row that cuDNN's packed attention takes. Its softmax statistics are sized by it
# ((B * M, N, T) float32 per layer); a batch with a row of more documents takes the exact XLA
# attention instead (see dot_product_attention), so the limit costs speed, never correctness.
CUDNN_MAX_DOCS_PER_ROW = 32


class PackedDocs(NamedTuple):
    """A batch's packed documents as cuDNN's packed ("THD") attention reads them: per row, the
    start and length of each document, -1 past the row's last; and, for rows of more than
    CUDNN_MAX_DOCS_PER_ROW documents, the segment ids for the exact fallback."""
    offsets_bm: jax.Array  # (B, M + 1) int32
    lengths_bm: jax.Array  # (B, M) int32
    segment_ids_bt: jax.Array  # (B, T)
    overflow: jax.Array  # () bool: some row holds more than M documents


def packed_docs(segment_ids_bt: jax.Array, max_docs: int = CUDNN_MAX_DOCS_PER_ROW) -> PackedDocs:
    """Documents are runs of equal segment ids (the packers write each document contiguously)."""
    batch, length = segment_ids_bt.shape
    max_docs = min(max_docs, length)
    index_t = jnp.arange(length, dtype=jnp.int32)
    starts_bt = jnp.concatenate([jnp.ones((batch, 1), jnp.bool_),
                                 segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=1)
    # The first max_docs starts of each row in order, `length` where a row has fewer.
    first_bm = -jax.lax.top_k(-jnp.where(starts_bt, index_t, length), max_docs)[0]
    ends_bm = jnp.concatenate([first_bm[:, 1:], jnp.full((batch, 1), length, jnp.int32)], 1)
    valid_bm = first_bm < length
    return PackedDocs(
        offsets_bm=jnp.concatenate([jnp.where(valid_bm, first_bm, -1),
                                    jnp.full((batch, 1), -1, jnp.int32)], axis=1),
        lengths_bm=jnp.where(valid_bm, ends_bm - first_bm, -1),
        segment_ids_bt=segment_ids_bt,
        overflow=jnp.any(starts_bt.sum(axis=1) > max_docs))


class CausalMask(NamedTuple):
    """A dense (B, 1, T, T) mask known to be causal (training rows): no query attends to a later
    position, so attention may skip the blocks above the diagonal."""
    dense_b1tt: jax.Array


# What attention masks with: a dense (B, 1, T, S) boolean mask (any pattern: decoding with a
# cache, padding), a causal one (training rows for XLA), or the packed documents of a training
# batch (causal within each document, for cuDNN).
Mask = jax.Array | CausalMask | PackedDocs


# The values of model.attention_impl (training_mask reads them).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def training_mask(segment_ids_bt: jax.Array, implementation: str) -> Mask:
    """The mask of packed training rows in the form that `implementation` (model.attention_impl)
    reads: packed documents for cuDNN ("auto" on a GPU), the dense mask for XLA."""
    gpu = jax.default_backend() == "gpu"
    if implementation == "auto":
        implementation = "cudnn" if gpu and cudnn_packed_attention() else "xla"
        if gpu and implementation == "xla":
            _warn_once(f"jax {jax.__version__} has no cuDNN packed attention in the form lmlib "
                       "calls (see attention.cudnn_packed_attention): training uses XLA's "
                       "attention, slower and larger on long sequences")
    if implementation == "xla":
        return CausalMask(attention_mask(segment_ids_bt))
    if not gpu:
        raise ConfigError(f"model.attention_impl={implementation!r} needs a GPU; this run has "
                          f"{jax.default_backend()} devices (use auto or xla)")
    if not cudnn_packed_attention():
        raise ConfigError(f"model.attention_impl={implementation!r}: jax {jax.__version__} has "
                          "no cuDNN packed attention in the form lmlib calls (use auto or xla)")
    return packed_docs(segment_ids_bt)


@functools.cache
def cudnn_packed_attention() -> Callable | None:
    """jax's cuDNN attention with per-row document offsets, or None where this jax lacks it.

    jax.nn.dot_product_attention does not expose the offsets, so lmlib calls the private function
    behind it; a jax upgrade may move or change it, and then training falls back to XLA (auto)
    or stops with a ConfigError (cudnn) instead of failing inside a trace.
    """
    try:
        from jax._src.cudnn import fused_attention_stablehlo as cudnn
        parameters = inspect.signature(cudnn.dot_product_attention).parameters
        if ({"q_seqlen", "kv_seqlen", "q_offsets", "kv_offsets", "scale", "mask_type"}
                <= parameters.keys() and hasattr(cudnn.MaskType, "PADDING_CAUSAL")):
            return functools.partial(cudnn.dot_product_attention,
                                     mask_type=cudnn.MaskType.PADDING_CAUSAL)
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    return None


@functools.cache
def _warn_once(message: str) -> None:
    print(f"warning: {message}", flush=True)


def dot_product_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
                          mask: Mask) -> jax.Array:
    """Masked attention; the mask's form chooses the implementation (see training_mask).

    Packed documents (training on a GPU) go to cuDNN's packed flash attention, which skips the
    masked blocks; causal masks (training elsewhere) and dense ones (decoding with a cache) to
    XLA, which on a CPU skips the blocks above a causal mask's diagonal. Grouped-query
    attention (N a multiple of K) is handled here; logits and softmax are float32.
    """
    if isinstance(mask, PackedDocs):
        # The exact XLA attention for rows of more documents than the packed layout takes (and
        # for inputs cuDNN does not take). Rematerialised: a cond keeps the residuals of both
        # branches, and XLA's (B, N, T, T) probabilities would cost ~10 GB a layer on the 1B model.
        dense = jax.checkpoint(lambda q, k, v: dot_product_attention(
            q, k, v, attention_mask(mask.segment_ids_bt)))
        if q_btnh.dtype not in (jnp.bfloat16, jnp.float16):  # cuDNN takes 16-bit inputs only
            return dense(q_btnh, k_bskh, v_bskh)
        return jax.lax.cond(mask.overflow, dense, functools.partial(_cudnn_packed_attention,
                                                                    docs=mask),
                            q_btnh, k_bskh, v_bskh)
    causal = isinstance(mask, CausalMask)
    mask = mask.dense_b1tt if causal else mask
    if q_btnh.dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        return _cpu_bf16_attention_blocks(q_btnh, k_bskh, v_bskh, mask,
                                          CPU_CAUSAL_BLOCKS if causal else 1)
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask, implementation="xla")


def _cudnn_packed_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
                            docs: PackedDocs) -> jax.Array:
    return cudnn_packed_attention()(
        q_btnh, k_bskh, v_bskh, q_seqlen=docs.lengths_bm, kv_seqlen=docs.lengths_bm,
        q_offsets=docs.offsets_bm, kv_offsets=docs.offsets_bm, scale=q_btnh.shape[-1] ** -0.5)


# Causal attention on a CPU in this many query blocks, each against the keys up to its end: the
# blocks above the diagonal are all masked, so they are skipped. The demo's train step (T = 256)
# against 2 blocks, same-process A/B of the whole step (15 rounds, twice): 1 block 1.086x the
# time, 4 blocks 0.985x and 0.989x, 8 blocks 1.06x.
CPU_CAUSAL_BLOCKS = 4


def _cpu_bf16_attention_blocks(q_btnh, k_bskh, v_bskh, mask_b1ts, blocks: int):
    groups, length = q_btnh.shape[2] // k_bskh.shape[2], q_btnh.shape[1]
    if blocks == 1 or length % blocks:
        return _cpu_bf16_attention(q_btnh, k_bskh, v_bskh, mask_b1ts, groups)
    size = length // blocks
    return jnp.concatenate([
        _cpu_bf16_attention(q_btnh[:, i * size:(i + 1) * size], k_bskh[:, :(i + 1) * size],
                            v_bskh[:, :(i + 1) * size],
                            mask_b1ts[:, :, i * size:(i + 1) * size, :(i + 1) * size], groups)
        for i in range(blocks)], axis=1)


# The same attention for bfloat16 on a CPU, written for XLA:CPU's fast dots (bf16 x bf16 -> f32,
# see `ops.einsum`) with heads folded into the batch (X = B * N), forward and backward: on the demo,
# forward 7.6 -> 4.7 ms and forward+backward 40 -> 36 ms a layer against
# jax.nn.dot_product_attention's (benchmarks/profile_step.py). Softmax in float32.

def _heads_to_batch(x_btnh: jax.Array, groups: int = 1) -> jax.Array:
    """(B, T, K, H) -> (B * K * groups, T, H), each head repeated `groups` times (GQA)."""
    x_btnh = jnp.repeat(x_btnh, groups, axis=2) if groups > 1 else x_btnh
    b, t, n, h = x_btnh.shape
    return x_btnh.transpose(0, 2, 1, 3).reshape(b * n, t, h)


def _batch_to_heads(x_xth: jax.Array, batch: int, groups: int = 1) -> jax.Array:
    """The inverse of _heads_to_batch; a repeated head's copies are summed (its gradient)."""
    x, t, h = x_xth.shape
    x_btnh = x_xth.reshape(batch, x // batch, t, h).transpose(0, 2, 1, 3)
    if groups == 1:
        return x_btnh
    return x_btnh.reshape(batch, t, -1, groups, h).sum(3, dtype=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _cpu_bf16_attention(q_btnh, k_bskh, v_bskh, mask_b1ts, groups: int):
    return _cpu_bf16_attention_fwd(q_btnh, k_bskh, v_bskh, mask_b1ts, groups)[0]


def _cpu_bf16_attention_fwd(q_btnh, k_bskh, v_bskh, mask_b1ts, groups):
    batch, _, heads, head_dim = q_btnh.shape
    # The 1/sqrt(H) scales the queries (T * H values a head) rather than the scores (T * S).
    q = _heads_to_batch((q_btnh.astype(jnp.float32) * head_dim ** -0.5).astype(q_btnh.dtype))
    k, v = _heads_to_batch(k_bskh, groups), _heads_to_batch(v_bskh, groups)
    scores = _f32_dot("XTH,XSH->XTS", q, k)
    mask = jnp.broadcast_to(mask_b1ts, (batch, heads, *mask_b1ts.shape[2:]))
    scores = jnp.where(mask.reshape(scores.shape), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = _f32_dot("XTS,XSH->XTH", probs, v).astype(q.dtype)
    return _batch_to_heads(out, batch), (q, k, v, probs, out)


def _cpu_bf16_attention_bwd(groups, residuals, d_out_btnh):
    q, k, v, probs, out = residuals
    batch, dtype, head_dim = d_out_btnh.shape[0], q.dtype, q.shape[-1]
    d_out = _heads_to_batch(d_out_btnh.astype(dtype))
    d_probs = _f32_dot("XTH,XSH->XTS", d_out, v)
    # Softmax backward: dS = P * (dP - rowsum(dO * O)).
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
    d_scores = (probs * (d_probs - row)).astype(dtype)
    d_q = _f32_dot("XTS,XSH->XTH", d_scores, k) * head_dim ** -0.5
    d_k = _f32_dot("XTS,XTH->XSH", d_scores, q)
    d_v = _f32_dot("XTS,XTH->XSH", probs, d_out)
    return (_batch_to_heads(d_q, batch).astype(dtype),
            _batch_to_heads(d_k, batch, groups).astype(dtype),
            _batch_to_heads(d_v, batch, groups).astype(dtype), None)


_cpu_bf16_attention.defvjp(_cpu_bf16_attention_fwd, _cpu_bf16_attention_bwd)
