"""Building blocks shared by the model families: embeddings, norms, the attention layer, MLPs,
the layer scan, the decoder base (ops.py, rope.py and attention.py hold what they compute with).

Shapes in names: B batch, T query length, S key length, D model width, N query heads,
K key/value heads, H head dim, F MLP width, V vocabulary, L layers.
Every parameter carries logical axis names (see lmlib/mesh.py for the rules that shard them).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lmlib.errors import ConfigError
from lmlib.mesh import constrain
from lmlib.models.attention import (ATTENTION_IMPLEMENTATIONS, Mask, dot_product_attention,
                                    training_mask)
from lmlib.models.ops import Initializer, einsum, ones, param, zeros
from lmlib.models.rope import Llama3RopeScaling, apply_rope


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
    the demo's step, and unrolled its step takes 444 ms instead of 544 (benchmarks/profile_step.py).
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
