"""GPT-2 (Radford et al. 2019): learned positions, LayerNorm, GELU MLP, biases, tied embeddings."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lmlib.errors import ConfigError
from lmlib.mesh import constrain
from lmlib.models import attention, gpt2_hf, layers, ops
from lmlib.models.family import Family


@dataclasses.dataclass(frozen=True)
class Gpt2Config:
    vocab_size: int = 50257
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int | None = None  # None = 4 * hidden_dim
    seq_len: int = 1024  # also the size of the learned position table
    norm_eps: float = 1e-5
    init_std: float = 0.02
    remat: str = "full"
    attention_impl: str = "auto"
    unroll_layers: bool = False  # True: no layer loop (faster steps on CPU, compile grows with L)

    def validate(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"model.hidden_dim={self.hidden_dim} is not divisible by "
                              f"model.num_heads={self.num_heads}")
        layers.check_compute_options(self.remat, self.attention_impl)

    @property
    def ffn_dim(self) -> int:
        return self.mlp_dim or 4 * self.hidden_dim

    @property
    def kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_size(self) -> int:
        return self.hidden_dim // self.num_heads

    @classmethod
    def small(cls) -> Gpt2Config:
        return cls(hidden_dim=768, num_layers=12, num_heads=12)

    @classmethod
    def medium(cls) -> Gpt2Config:
        return cls(hidden_dim=1024, num_layers=24, num_heads=16)

    @classmethod
    def large(cls) -> Gpt2Config:
        return cls(hidden_dim=1280, num_layers=36, num_heads=20)

    @classmethod
    def xl(cls) -> Gpt2Config:
        return cls(hidden_dim=1600, num_layers=48, num_heads=25)

    def make(self, rngs: nnx.Rngs) -> Gpt2:
        return Gpt2(self, rngs)

    def flops_per_token(self) -> int:
        d = self.hidden_dim
        matmul_params = self.num_layers * (4 * d * d + 2 * d * self.ffn_dim) + self.vocab_size * d
        return layers.flops_per_token(matmul_params, self.num_layers, d, self.seq_len)


class Gpt2(layers.DecoderLM):
    def __init__(self, config: Gpt2Config, rngs: nnx.Rngs):
        c = config
        self.config = c
        d, heads = c.hidden_dim, c.num_heads
        init = ops.normal(c.init_std)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2L).
        out_init = ops.normal(c.init_std / math.sqrt(2 * c.num_layers))

        def make_block(rngs: nnx.Rngs) -> layers.Block:
            return layers.Block(
                layers.LayerNorm(d, c.norm_eps, rngs),
                layers.Attention(d, heads, heads, d // heads, qkv_bias=True, out_bias=True,
                                 rope_theta=None, init=init, out_init=out_init, rngs=rngs),
                layers.LayerNorm(d, c.norm_eps, rngs),
                layers.GeluMLP(d, c.ffn_dim, init, out_init, rngs))

        self.embed = layers.Embed(c.vocab_size, d, init, rngs)
        self.position_embed = ops.param(rngs, ops.normal(0.01), (c.seq_len, d),
                                        ("positions", "embed"))
        self.layers = layers.ScannedBlocks(make_block, c.num_layers, c.remat, rngs,
                                           unroll=c.unroll_layers)
        self.final_norm = layers.LayerNorm(d, c.norm_eps, rngs)

    def forward(self, tokens_bt: jax.Array, positions_bt: jax.Array, mask: attention.Mask,
                kv_cache: layers.KVCache | None = None, cache_index: jax.Array | None = None
                ) -> tuple[jax.Array, layers.KVCache | None]:
        x_btd = self.embed(tokens_bt) + jnp.take(self.position_embed[...], positions_bt, axis=0)
        x_btd = constrain(x_btd, ("act_batch", "act_length", "act_embed"))
        x_btd, kv_cache = self.layers(x_btd, positions_bt, mask, kv_cache, cache_index)
        return self.final_norm(x_btd), kv_cache

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        return self.embed.attend(hidden_btd)


FAMILY = Family(
    name="gpt2", config_class=Gpt2Config, model_class=Gpt2,
    hf_readers={"gpt2": gpt2_hf.read_config}, hf_writes=("gpt2",),
    hf_writer=gpt2_hf.write_config, hf_table=gpt2_hf.param_table,
    # Original checkpoints (openai-community/gpt2) name their tensors without the prefix.
    hf_optional_prefix="transformer.",
    hf_ignored=(r"\.attn\.(masked_)?bias",),  # causal-mask buffers of older transformers
    max_positions=lambda config: config.seq_len)  # the learned position table
