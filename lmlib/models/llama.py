"""Llama (Touvron et al. 2023): RMSNorm, rotary positions, SwiGLU, grouped-query attention.

Also covers the Llama-shaped families (TeenyTinyLlama, Mistral-style GQA) through presets.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from lmlib.errors import ConfigError
from lmlib.mesh import constrain
from lmlib.models import attention, layers, llama_hf, ops, rope
from lmlib.models.family import Family


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_dim: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads (plain MHA)
    head_dim: int | None = None  # None = hidden_dim // num_heads
    mlp_dim: int = 11008
    seq_len: int = 2048  # training context length
    # The context the model was built for (Hugging Face max_position_embeddings, kept through
    # import and export); 0 = seq_len. An imported model trains on shorter rows by default.
    max_seq_len: int = 0
    rope_theta: float = 10000.0
    # Llama-3.1 RoPE scaling (rope.Llama3RopeScaling); None = plain RoPE. Flat fields, so that
    # `--set` and the JSON config of a checkpoint handle them like any other number.
    rope_scaling_factor: float | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_seq_len: int = 8192
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    init_std: float = 0.02
    remat: str = "full"  # none | minimal | full: what the backward pass recomputes
    attention_impl: str = "auto"  # auto | xla | cudnn
    unroll_layers: bool = False  # True: no layer loop (faster steps on CPU, compile grows with L)

    def validate(self) -> None:
        kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % kv_heads:
            raise ConfigError(f"model.num_heads={self.num_heads} is not a multiple of "
                              f"model.num_kv_heads={kv_heads}")
        if self.head_dim is None and self.hidden_dim % self.num_heads:
            raise ConfigError(f"model.hidden_dim={self.hidden_dim} is not divisible by "
                              f"model.num_heads={self.num_heads}; set model.head_dim")
        layers.check_compute_options(self.remat, self.attention_impl)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_dim // self.num_heads

    @property
    def rope_scaling(self) -> rope.Llama3RopeScaling | None:
        if self.rope_scaling_factor is None:
            return None
        return rope.Llama3RopeScaling(self.rope_scaling_factor, self.rope_low_freq_factor,
                                      self.rope_high_freq_factor, self.rope_original_seq_len)

    # Presets: a named size is a classmethod, so an experiment reads `LlamaConfig.llama2_7b()`.
    @classmethod
    def demo(cls) -> LlamaConfig:
        """A few-million-parameter Llama that learns Python on two CPU cores in minutes."""
        return cls(vocab_size=4096, hidden_dim=256, num_layers=4, num_heads=4, num_kv_heads=2,
                   mlp_dim=768, seq_len=256, tie_embeddings=True, remat="none",
                   unroll_layers=True)

    @classmethod
    def teenytinyllama_160m(cls) -> LlamaConfig:
        """TeenyTinyLlama-160m (Corrêa et al. 2024)."""
        return cls(vocab_size=32000, hidden_dim=768, num_layers=12, num_heads=12,
                   mlp_dim=3072, seq_len=2048)

    @classmethod
    def llama_1b(cls) -> LlamaConfig:
        """The ~1.1B benchmark shape (Llama-3.2-1B layout with the Llama-2 vocabulary)."""
        return cls(vocab_size=32000, hidden_dim=2048, num_layers=16, num_heads=32,
                   num_kv_heads=8, mlp_dim=8192, seq_len=2048)

    @classmethod
    def llama2_7b(cls) -> LlamaConfig:
        return cls(vocab_size=32000, hidden_dim=4096, num_layers=32, num_heads=32,
                   mlp_dim=11008, seq_len=4096)

    @classmethod
    def llama1_7b(cls) -> LlamaConfig:
        return cls(vocab_size=32000, hidden_dim=4096, num_layers=32, num_heads=32,
                   mlp_dim=11008, seq_len=2048, norm_eps=1e-6)

    def make(self, rngs: nnx.Rngs) -> Llama:
        return Llama(self, rngs)

    def flops_per_token(self) -> int:
        d, h = self.hidden_dim, self.head_size
        per_layer = d * self.num_heads * h * 2 + d * self.kv_heads * h * 2 + 3 * d * self.mlp_dim
        matmul_params = self.num_layers * per_layer + self.vocab_size * d
        return layers.flops_per_token(matmul_params, self.num_layers, self.num_heads * h,
                                      self.seq_len)


class Llama(layers.DecoderLM):
    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs):
        c = config
        self.config = c
        init = ops.normal(c.init_std)

        def make_block(rngs: nnx.Rngs) -> layers.Block:
            return layers.Block(
                layers.RMSNorm(c.hidden_dim, c.norm_eps, rngs),
                layers.Attention(c.hidden_dim, c.num_heads, c.kv_heads, c.head_size,
                                 qkv_bias=c.qkv_bias, out_bias=False, rope_theta=c.rope_theta,
                                 rope_scaling=c.rope_scaling, init=init, out_init=init, rngs=rngs),
                layers.RMSNorm(c.hidden_dim, c.norm_eps, rngs),
                layers.GatedMLP(c.hidden_dim, c.mlp_dim, init, init, rngs))

        self.embed = layers.Embed(c.vocab_size, c.hidden_dim, init, rngs)
        self.layers = layers.ScannedBlocks(make_block, c.num_layers, c.remat, rngs,
                                           unroll=c.unroll_layers)
        self.final_norm = layers.RMSNorm(c.hidden_dim, c.norm_eps, rngs)
        if not c.tie_embeddings:
            self.head = ops.param(rngs, init, (c.hidden_dim, c.vocab_size), ("embed", "vocab"))

    def forward(self, tokens_bt: jax.Array, positions_bt: jax.Array, mask: attention.Mask,
                kv_cache: layers.KVCache | None = None, cache_index: jax.Array | None = None
                ) -> tuple[jax.Array, layers.KVCache | None]:
        x_btd = constrain(self.embed(tokens_bt), ("act_batch", "act_length", "act_embed"))
        x_btd, kv_cache = self.layers(x_btd, positions_bt, mask, kv_cache, cache_index)
        return self.final_norm(x_btd), kv_cache

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        if self.config.tie_embeddings:
            return self.embed.attend(hidden_btd)
        return ops.einsum("BTD,DV->BTV", hidden_btd, self.head[...])


FAMILY = Family(
    name="llama", config_class=LlamaConfig, model_class=Llama,
    hf_readers={"llama": llama_hf.read_config, "mistral": llama_hf.read_config,
                "qwen2": llama_hf.read_qwen2_config},
    hf_writes=("llama", "qwen2"), hf_writer=llama_hf.write_config,
    hf_table=llama_hf.param_table,
    hf_ignored=(r"\.rotary_emb\.inv_freq",))  # RoPE buffers of older transformers versions
