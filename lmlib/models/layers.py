"""Building blocks shared by the model families: embeddings, norms, attention, MLPs, the layer scan.

Shapes in names: B batch, T query length, S key length, D model width, N query heads,
K key/value heads, H head dim, F MLP width, V vocabulary, L layers.
Every parameter carries logical axis names (see lmlib/mesh.py for the rules that shard them).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmlib.errors import ConfigError
from lmlib.mesh import constrain

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
          names: Sequence[str]) -> nnx.Param:
    """A float32 parameter annotated with logical axis names (mapped to the mesh by lmlib.mesh)."""
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32),
                     out_sharding=tuple(names), eager_sharding=False)


def normal(stddev: float) -> Initializer:
    return nnx.initializers.normal(stddev)


zeros = nnx.initializers.zeros
ones = nnx.initializers.ones


def einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum` of an activation and a weight, for every matmul of the models.

    On a CPU with bfloat16 inputs, the products come out in float32 and are rounded once: XLA:CPU
    runs bf16 x bf16 -> f32 dots 2.7x faster than bf16 -> bf16 ones (860 against 320 GFLOP/s
    on the demo's MLP shapes, tools/profile_step.py), and the backward pass is written to do the
    same (autodiff would make its dots f32 x f32). Elsewhere, and in float32, plain einsum.
    """
    if x.dtype != jnp.bfloat16 or jax.default_backend() != "cpu":
        return jnp.einsum(spec, x, w)
    return _bf16_einsum(spec, x, w)


def _f32_dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bf16_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    return _f32_dot(spec, x, w).astype(x.dtype)


def _bf16_einsum_fwd(spec, x, w):
    return _bf16_einsum(spec, x, w), (x, w)


def _bf16_einsum_bwd(spec, residuals, ct):
    # "xs,ws->os": each index is in two of the three operands, so each gradient is one einsum.
    x, w = residuals
    x_spec, rest = spec.split(",")
    w_spec, out_spec = rest.split("->")
    ct = ct.astype(x.dtype)
    return (_f32_dot(f"{out_spec},{w_spec}->{x_spec}", ct, w).astype(x.dtype),
            _f32_dot(f"{x_spec},{out_spec}->{w_spec}", x, ct).astype(w.dtype))


_bf16_einsum.defvjp(_bf16_einsum_fwd, _bf16_einsum_bwd)


class Embed(nnx.Module):
    """Token embedding table; `attend` reuses it as the output head when embeddings are tied."""

    def __init__(self, vocab_size: int, dim: int, init: Initializer, rngs: nnx.Rngs):
        self.table = param(rngs, init, (vocab_size, dim), ("vocab", "embed"))

    def __call__(self, tokens_bt: jax.Array) -> jax.Array:
        return jnp.take(self.table[...], tokens_bt, axis=0)

    def attend(self, x_btd: jax.Array) -> jax.Array:
        return einsum("BTD,VD->BTV", x_btd, self.table[...])


class RMSNorm(nnx.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), statistics in float32."""

    def __init__(self, dim: int, eps: float, rngs: nnx.Rngs):
        self.scale = param(rngs, ones, (dim,), ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with bias (GPT-2), statistics in float32."""

    def __init__(self, dim: int, eps: float, rngs: nnx.Rngs):
        self.scale = param(rngs, ones, (dim,), ("norm",))
        self.bias = param(rngs, zeros, (dim,), ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        x32 = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (x32 * self.scale[...] + self.bias[...]).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1 long-context RoPE: wavelengths longer than original_seq_len / low_freq_factor
    are stretched by `factor`, those shorter than original_seq_len / high_freq_factor are kept,
    and a linear ramp blends the two in between (HF rope_type "llama3")."""
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_seq_len: int


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: Llama3RopeScaling | None = None) -> np.ndarray:
    """(H/2,) rotation frequencies in float32, as HF computes them so that logits match: the
    power is taken in float64 and rounded once, which gives torch's float32 power."""
    exponent_h = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    power_h = (np.float64(np.float32(theta)) ** exponent_h.astype(np.float64)).astype(np.float32)
    inv_freq_h = np.float32(1.0) / power_h
    if scaling is None:
        return inv_freq_h
    s = scaling
    wavelen_h = 2 * math.pi / inv_freq_h
    # 0 for long wavelengths (fully stretched), 1 for short ones (kept), linear in between.
    ramp_h = np.clip((s.original_seq_len / wavelen_h - s.low_freq_factor)
                     / (s.high_freq_factor - s.low_freq_factor), 0.0, 1.0)
    return ((1 - ramp_h) * inv_freq_h / s.factor + ramp_h * inv_freq_h).astype(np.float32)


# RoPE's cos and sin are read from a table of every position a call can see, computed once in
# NumPy and embedded in the program. Computed from the positions instead, XLA fuses sin and cos
# into each consumer and evaluates them again for every head and both halves: one rotation of
# the demo's queries took 1.6 ms instead of 0.22. Longer tables than this are not embedded
# (8 MB at head dim 128): their angles are computed in place.
ROPE_TABLE_MAX_POSITIONS = 16384


@functools.lru_cache(maxsize=32)
def rope_table(head_dim: int, theta: float, scaling: Llama3RopeScaling | None,
               num_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of positions 0 .. num_positions - 1, each (num_positions, H/2) float32."""
    angles = (np.arange(num_positions, dtype=np.float32)[:, None]
              * rope_inv_freq(head_dim, theta, scaling)).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, theta: float,
               scaling: Llama3RopeScaling | None = None,
               num_positions: int | None = None) -> jax.Array:
    """Rotary position embedding (Su et al. 2021) in the rotate-half layout of HF Llama.

    Positions must be below `num_positions` (default T; decoding passes the cache's length);
    a position past the table reads NaN, never another position's angle.
    """
    num_positions = num_positions or x_btnh.shape[1]
    if num_positions <= ROPE_TABLE_MAX_POSITIONS:
        cos_ph, sin_ph = rope_table(x_btnh.shape[-1], theta, scaling, num_positions)
        cos = jnp.take(cos_ph, positions_bt, axis=0, mode="fill", fill_value=jnp.nan)
        sin = jnp.take(sin_ph, positions_bt, axis=0, mode="fill", fill_value=jnp.nan)
    else:
        angles = positions_bt[..., None].astype(jnp.float32) * rope_inv_freq(
            x_btnh.shape[-1], theta, scaling)
        cos, sin = jnp.cos(angles), jnp.sin(angles)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (B, T, 1, H/2)
    x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_btnh.dtype)


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


def training_mask(segment_ids_bt: jax.Array, implementation: str) -> Mask:
    """The mask of packed training rows in the form that `implementation` (model.attention_impl)
    reads: packed documents for cuDNN ("auto" on a GPU), the dense mask for XLA."""
    gpu = jax.default_backend() == "gpu"
    if implementation == "auto":
        implementation = "cudnn" if gpu and cudnn_packed_attention() else "xla"
        if gpu and implementation == "xla":
            _warn_once(f"jax {jax.__version__} has no cuDNN packed attention in the form lmlib "
                       "calls (see layers.cudnn_packed_attention): training uses XLA's "
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
        if {"q_seqlen", "kv_seqlen", "q_offsets", "kv_offsets", "scale", "mask_type"} \
                <= parameters.keys() and hasattr(cudnn.MaskType, "PADDING_CAUSAL"):
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
# see `einsum`) with heads folded into the batch (X = B * N), forward and backward: on the demo,
# forward 7.6 -> 4.7 ms and forward+backward 40 -> 36 ms a layer against
# jax.nn.dot_product_attention's (tools/profile_step.py). Softmax in float32.

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


# Decoding keeps each layer's keys and values: (k, v), each (B, S, K, H); stacked over layers
# (L, B, S, K, H) for the scan. Training passes None.
KVCache = tuple[jax.Array, jax.Array]


class Attention(nnx.Module):
    """Multi-head attention with grouped-query heads, optional RoPE and optional biases."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 qkv_bias: bool, out_bias: bool, rope_theta: float | None,
                 rope_scaling: Llama3RopeScaling | None = None, init: Initializer,
                 out_init: Initializer, rngs: nnx.Rngs):
        self.q = param(rngs, init, (dim, num_heads, head_dim), ("embed", "heads", "head_dim"))
        self.k = param(rngs, init, (dim, num_kv_heads, head_dim),
                       ("embed", "kv_heads", "head_dim"))
        self.v = param(rngs, init, (dim, num_kv_heads, head_dim),
                       ("embed", "kv_heads", "head_dim"))
        self.o = param(rngs, out_init, (num_heads, head_dim, dim), ("heads", "head_dim", "embed"))
        if qkv_bias:
            self.q_bias = param(rngs, zeros, (num_heads, head_dim), ("heads", "head_dim"))
            self.k_bias = param(rngs, zeros, (num_kv_heads, head_dim), ("kv_heads", "head_dim"))
            self.v_bias = param(rngs, zeros, (num_kv_heads, head_dim), ("kv_heads", "head_dim"))
        if out_bias:
            self.o_bias = param(rngs, zeros, (dim,), ("embed",))
        self.qkv_bias, self.out_bias = qkv_bias, out_bias
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array, mask: Mask,
                 kv_cache: KVCache | None = None,
                 cache_index: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """With a cache, the new keys and values are written at `cache_index` and the queries
        attend over the whole cache (S slots); without one, over this call's T positions."""
        q_btnh = einsum("BTD,DNH->BTNH", x_btd, self.q[...])
        k_btkh = einsum("BTD,DKH->BTKH", x_btd, self.k[...])
        v_btkh = einsum("BTD,DKH->BTKH", x_btd, self.v[...])
        if self.qkv_bias:
            q_btnh += self.q_bias[...]
            k_btkh += self.k_bias[...]
            v_btkh += self.v_bias[...]
        if self.rope_theta is not None:
            num_positions = kv_cache[0].shape[1] if kv_cache is not None else None
            q_btnh, k_btkh = (apply_rope(x, positions_bt, self.rope_theta, self.rope_scaling,
                                         num_positions) for x in (q_btnh, k_btkh))
        q_btnh = constrain(q_btnh, ("act_batch", "act_length", "act_heads", "act_head_dim"))
        k_btkh = constrain(k_btkh, ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
        if kv_cache is not None:
            start = (0, cache_index, 0, 0)
            # The cache lives sharded like the keys: over the batch and the kv heads.
            kv_cache = tuple(
                constrain(jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), start),
                          ("act_batch", "act_length", "act_kv_heads", "act_head_dim"))
                for cache, new in zip(kv_cache, (k_btkh, v_btkh)))
            k_btkh, v_btkh = kv_cache
        out_btnh = dot_product_attention(q_btnh, k_btkh, v_btkh, mask)
        out_btd = einsum("BTNH,NHD->BTD", out_btnh, self.o[...])
        if self.out_bias:
            out_btd += self.o_bias[...]
        return out_btd, kv_cache


class GatedMLP(nnx.Module):
    """SwiGLU feed-forward (Shazeer 2020), as in Llama."""

    def __init__(self, dim: int, mlp_dim: int, init: Initializer, out_init: Initializer,
                 rngs: nnx.Rngs):
        self.gate = param(rngs, init, (dim, mlp_dim), ("embed", "mlp"))
        self.up = param(rngs, init, (dim, mlp_dim), ("embed", "mlp"))
        self.down = param(rngs, out_init, (mlp_dim, dim), ("mlp", "embed"))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        gate_btf = einsum("BTD,DF->BTF", x_btd, self.gate[...])
        up_btf = einsum("BTD,DF->BTF", x_btd, self.up[...])
        h_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("act_batch", "act_length", "act_mlp"))
        return einsum("BTF,FD->BTD", h_btf, self.down[...])


class GeluMLP(nnx.Module):
    """Two-layer GELU feed-forward with biases, as in GPT-2 (tanh-approximate GELU)."""

    def __init__(self, dim: int, mlp_dim: int, init: Initializer, out_init: Initializer,
                 rngs: nnx.Rngs):
        self.up = param(rngs, init, (dim, mlp_dim), ("embed", "mlp"))
        self.up_bias = param(rngs, zeros, (mlp_dim,), ("mlp",))
        self.down = param(rngs, out_init, (mlp_dim, dim), ("mlp", "embed"))
        self.down_bias = param(rngs, zeros, (dim,), ("embed",))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        h_btf = einsum("BTD,DF->BTF", x_btd, self.up[...]) + self.up_bias[...]
        h_btf = constrain(jax.nn.gelu(h_btf, approximate=True),
                          ("act_batch", "act_length", "act_mlp"))
        return einsum("BTF,FD->BTD", h_btf, self.down[...]) + self.down_bias[...]


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, attn_norm: nnx.Module, attn: Attention, mlp_norm: nnx.Module,
                 mlp: nnx.Module):
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array, mask: Mask,
                 kv_cache: KVCache | None = None, cache_index: jax.Array | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        attn_btd, kv_cache = self.attn(self.attn_norm(x_btd), positions_bt, mask,
                                       kv_cache, cache_index)
        x_btd = x_btd + attn_btd
        x_btd = x_btd + self.mlp(self.mlp_norm(x_btd))
        return constrain(x_btd, ("act_batch", "act_length", "act_embed")), kv_cache


# What the backward pass may keep from the forward pass of each layer (the rest is recomputed).
REMAT_POLICIES = {
    "none": None,  # no remat: keep everything (fastest, most memory)
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
}


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def check_compute_options(remat: str, attention_impl: str) -> None:
    """Validates the model config fields that choose how (not what) the model computes."""
    if remat not in REMAT_POLICIES:
        raise ConfigError(f"model.remat={remat!r}: choose one of {sorted(REMAT_POLICIES)}")
    if attention_impl not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"model.attention_impl={attention_impl!r}: choose one of "
                          f"{list(ATTENTION_IMPLEMENTATIONS)}")


class ScannedBlocks(nnx.Module):
    """`num_layers` blocks with parameters stacked on a leading "layers" axis, applied by a scan.

    Scanning compiles one layer instead of L, so compile time stays flat in depth. `unroll`
    compiles the L layers one after another instead (same parameters): on XLA:CPU the loop's
    stacking of each layer's saved activations (zeroed buffers, copies, converts) was half of
    the demo's step, and unrolled its step takes 444 ms instead of 544 (tools/profile_step.py).
    """

    def __init__(self, make_block: Callable[[nnx.Rngs], Block], num_layers: int, remat: str,
                 rngs: nnx.Rngs, unroll: bool = False):
        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def create(rngs: nnx.Rngs) -> Block:
            return make_block(rngs)

        self.blocks = create(rngs)
        self.remat, self.unroll = remat, unroll

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array, mask: Mask,
                 kv_cache: KVCache | None = None, cache_index: jax.Array | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """Each layer reads its slice of the stacked (L, ...) cache; None when training."""
        def body(x_btd, block, layer_cache):
            return block(x_btd, positions_bt, mask, layer_cache, cache_index)

        if self.remat != "none":
            body = nnx.remat(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        return nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0),
                        unroll=self.unroll)(x_btd, self.blocks, kv_cache)


class DecoderLM(nnx.Module):
    """What every model family shares: `forward` over an attention mask (with an optional KV
    cache) and `logits`; calling the model runs packed training rows."""

    def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array,
                 segment_ids_bt: jax.Array) -> jax.Array:
        """Final hidden states (B, T, D) of packed rows; `logits` maps them to the vocabulary."""
        mask = training_mask(segment_ids_bt, self.config.attention_impl)
        return self.forward(tokens_bt, positions_bt, mask)[0]

    def forward(self, tokens_bt: jax.Array, positions_bt: jax.Array, mask: Mask,
                kv_cache: KVCache | None = None, cache_index: jax.Array | None = None
                ) -> tuple[jax.Array, KVCache | None]:
        """(hidden states, updated cache) for any attention mask; lmlib.generate decodes with it."""
        raise NotImplementedError

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        raise NotImplementedError


def flops_per_token(matmul_params: int, num_layers: int, attention_dim: int,
                    seq_len: int) -> int:
    """Training FLOPs per token: 6 per matmul parameter plus attention scores and values
    (PaLM, Chowdhery et al. 2022, appendix B): 6N + 12 * L * (heads * head_dim) * T."""
    return 6 * matmul_params + 12 * num_layers * attention_dim * seq_len
