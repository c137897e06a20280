"""Llama <-> Hugging Face: the llama, mistral and qwen2 config.json readers, the writer, and the
parameter table that drives both directions of the weights (lmlib.hf)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmlib.errors import ConfigError
from lmlib.models.hf_table import FLAT, LINEAR, LINEAR_OUT, TRAIN_SEQ_LEN, Row, require

if TYPE_CHECKING:
    from lmlib.models.llama import LlamaConfig


def param_table(config: LlamaConfig) -> list[Row]:
    layer, blocks = "model.layers.{i}.", "layers.blocks."
    rows = [
        Row("model.embed_tokens.weight", ("embed.table",)),
        Row(layer + "input_layernorm.weight", (blocks + "attn_norm.scale",)),
        Row(layer + "self_attn.q_proj.weight", (blocks + "attn.q",), LINEAR),
        Row(layer + "self_attn.k_proj.weight", (blocks + "attn.k",), LINEAR),
        Row(layer + "self_attn.v_proj.weight", (blocks + "attn.v",), LINEAR),
        Row(layer + "self_attn.o_proj.weight", (blocks + "attn.o",), LINEAR_OUT),
        Row(layer + "post_attention_layernorm.weight", (blocks + "mlp_norm.scale",)),
        Row(layer + "mlp.gate_proj.weight", (blocks + "mlp.gate",), LINEAR),
        Row(layer + "mlp.up_proj.weight", (blocks + "mlp.up",), LINEAR),
        Row(layer + "mlp.down_proj.weight", (blocks + "mlp.down",), LINEAR),
        Row("model.norm.weight", ("final_norm.scale",)),
    ]
    if config.qkv_bias:
        rows += [Row(layer + f"self_attn.{x}_proj.bias", (blocks + f"attn.{x}_bias",), FLAT)
                 for x in "qkv"]
    if not config.tie_embeddings:
        rows.append(Row("lm_head.weight", ("head",), LINEAR))
    return rows


def _rope_fields(hf: dict) -> dict[str, Any]:
    """LlamaConfig RoPE fields from `rope_parameters` (transformers 5) or `rope_theta` +
    `rope_scaling` (transformers 4 and most hub checkpoints)."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return {"rope_theta": float(theta)}
    if rope_type == "llama3":
        return {"rope_theta": float(theta), "rope_scaling_factor": float(rope["factor"]),
                "rope_low_freq_factor": float(rope["low_freq_factor"]),
                "rope_high_freq_factor": float(rope["high_freq_factor"]),
                "rope_original_seq_len": int(rope["original_max_position_embeddings"])}
    raise ConfigError(f"Hugging Face RoPE type {rope_type!r} is not supported "
                      "(supported: default, llama3)")


def read_config(hf: dict, **fields: Any) -> dict[str, Any]:
    """LlamaConfig fields of a Llama-shaped config.json (mistral: its sliding window caps
    seq_len)."""
    require(hf, "hidden_act", ["silu"])
    require(hf, "attention_bias", [False])
    require(hf, "mlp_bias", [False])
    num_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    max_seq_len = hf.get("max_position_embeddings", 2048)
    # Train on rows of at most TRAIN_SEQ_LEN tokens: a Llama-3.1's 131,072 would be the
    # context it supports, not a sane default row (--set model.seq_len asks for more).
    seq_len = min(max_seq_len, TRAIN_SEQ_LEN)
    # lmlib attends to the whole context; that equals a sliding window only up to its width.
    window = hf.get("sliding_window")
    if window and hf.get("use_sliding_window", True):
        seq_len = min(seq_len, window)
    return dict(
        vocab_size=hf["vocab_size"], hidden_dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=None if head_dim in (None, hf["hidden_size"] // num_heads) else head_dim,
        mlp_dim=hf["intermediate_size"], seq_len=seq_len, max_seq_len=max_seq_len,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False), **_rope_fields(hf), **fields)


def read_qwen2_config(hf: dict) -> dict[str, Any]:
    return read_config(hf, qkv_bias=True)  # Qwen2 is Llama with q/k/v biases


def write_config(c: LlamaConfig) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        rope.update(rope_type="llama3", factor=c.rope_scaling_factor,
                    low_freq_factor=c.rope_low_freq_factor,
                    high_freq_factor=c.rope_high_freq_factor,
                    original_max_position_embeddings=c.rope_original_seq_len)
    model_type = "qwen2" if c.qkv_bias else "llama"  # Qwen2 is Llama with q/k/v biases
    hf = {"model_type": model_type,
          "architectures": ["Qwen2ForCausalLM" if c.qkv_bias else "LlamaForCausalLM"],
          "vocab_size": c.vocab_size, "hidden_size": c.hidden_dim,
          "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
          "num_key_value_heads": c.kv_heads, "head_dim": c.head_size,
          "intermediate_size": c.mlp_dim,
          "max_position_embeddings": max(c.max_seq_len, c.seq_len),
          "rms_norm_eps": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
          "hidden_act": "silu", "rope_parameters": rope}
    if c.qkv_bias:
        hf.update(use_sliding_window=False, sliding_window=None)
    else:
        hf.update(attention_bias=False, mlp_bias=False)
    return hf
