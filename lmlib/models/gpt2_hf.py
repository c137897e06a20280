"""GPT-2 <-> Hugging Face: the config.json reader and writer, and the parameter table that
drives both directions of the weights (lmlib.hf)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmlib.models.hf_table import Layout, Row, require

if TYPE_CHECKING:
    from lmlib.models.gpt2 import Gpt2Config


def param_table(config: Gpt2Config) -> list[Row]:
    # Conv1D stores (in, out): no transposes, only GPT-2's fused q|k|v to split.
    layer, blocks = "transformer.h.{i}.", "layers.blocks."
    attn = blocks + "attn."
    return [
        Row("transformer.wte.weight", ("embed.table",)),
        Row("transformer.wpe.weight", ("position_embed",)),
        Row(layer + "ln_1.weight", (blocks + "attn_norm.scale",)),
        Row(layer + "ln_1.bias", (blocks + "attn_norm.bias",)),
        Row(layer + "attn.c_attn.weight", (attn + "q", attn + "k", attn + "v"),
            Layout(in_axes=1, parts=3)),
        Row(layer + "attn.c_attn.bias", (attn + "q_bias", attn + "k_bias", attn + "v_bias"),
            Layout(in_axes=0, parts=3)),
        Row(layer + "attn.c_proj.weight", (attn + "o",), Layout(in_axes=2)),
        Row(layer + "attn.c_proj.bias", (attn + "o_bias",)),
        Row(layer + "ln_2.weight", (blocks + "mlp_norm.scale",)),
        Row(layer + "ln_2.bias", (blocks + "mlp_norm.bias",)),
        Row(layer + "mlp.c_fc.weight", (blocks + "mlp.up",)),
        Row(layer + "mlp.c_fc.bias", (blocks + "mlp.up_bias",)),
        Row(layer + "mlp.c_proj.weight", (blocks + "mlp.down",)),
        Row(layer + "mlp.c_proj.bias", (blocks + "mlp.down_bias",)),
        Row("transformer.ln_f.weight", ("final_norm.scale",)),
        Row("transformer.ln_f.bias", ("final_norm.bias",)),
    ]


def read_config(hf: dict) -> dict[str, Any]:
    require(hf, "activation_function", ["gelu_new", "gelu_pytorch_tanh"])
    require(hf, "scale_attn_by_inverse_layer_idx", [False])
    require(hf, "tie_word_embeddings", [True])
    return dict(vocab_size=hf["vocab_size"], hidden_dim=hf["n_embd"],
                num_layers=hf["n_layer"], num_heads=hf["n_head"],
                mlp_dim=hf.get("n_inner"), seq_len=hf["n_positions"],
                norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def write_config(c: Gpt2Config) -> dict[str, Any]:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size, "n_embd": c.hidden_dim, "n_layer": c.num_layers,
            "n_head": c.num_heads, "n_inner": c.mlp_dim, "n_positions": c.seq_len,
            "layer_norm_epsilon": c.norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": True}
