"""Hugging Face interop: imported models compute HF's logits, exports load in transformers
unchanged, and an exported tokenizer encodes as lmlib's does."""

import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from lmlib import hf
from lmlib.data import stdlib
from lmlib.data.tokenizer import train_sentencepiece
from lmlib.errors import ConfigError
from lmlib.models import abstract_model, rope

LLAMA_SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   bos_token_id=1, eos_token_id=2)
# original_max_position_embeddings=32 puts the 8 RoPE wavelengths of head_dim 16 in all three
# bands of the llama3 scaling: kept (< 32 / 4), ramp, stretched (> 32 / 1).
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32, rope_theta=50000.0)

HF_CONFIGS = {
    "llama_gqa": lambda: transformers.LlamaConfig(**LLAMA_SHAPE),
    "llama_tied": lambda: transformers.LlamaConfig(**LLAMA_SHAPE, tie_word_embeddings=True),
    "llama3_rope": lambda: transformers.LlamaConfig(**LLAMA_SHAPE, rope_parameters=LLAMA3_ROPE),
    "mistral": lambda: transformers.MistralConfig(**LLAMA_SHAPE),
    "qwen2": lambda: transformers.Qwen2Config(**LLAMA_SHAPE),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                            n_positions=64, bos_token_id=1, eos_token_id=2),
}


def random_hf_model(hf_config) -> transformers.PreTrainedModel:
    """Every parameter random, so that biases and norm scales are tested too (HF inits them
    to constants)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module", params=HF_CONFIGS)
def hf_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    random_hf_model(HF_CONFIGS[request.param]()).save_pretrained(path)
    return path


def batch(vocab_size: int, length: int = 48):
    tokens = np.random.default_rng(0).integers(0, vocab_size, (2, length))
    return tokens, np.broadcast_to(np.arange(length), tokens.shape), np.ones_like(tokens)


def lmlib_logits(config, params, tokens, positions, segment_ids) -> np.ndarray:
    graphdef, _ = nnx.split(abstract_model(config))
    model = nnx.merge(graphdef, params)
    hidden = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    return np.asarray(model.logits(hidden))


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


def test_imported_model_computes_the_logits_of_transformers(hf_dir):
    config, params = hf.load_hf(hf_dir)
    tokens, positions, segment_ids = batch(config.vocab_size)
    expected = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(hf_dir), tokens)
    np.testing.assert_allclose(lmlib_logits(config, params, tokens, positions, segment_ids),
                               expected, atol=1e-4, rtol=0)


def test_llama3_rope_scaling_is_imported_and_changes_frequencies(tmp_path):
    random_hf_model(HF_CONFIGS["llama3_rope"]()).save_pretrained(tmp_path)
    config = hf.model_config_from_hf(hf.read_hf_config(tmp_path))
    assert config.rope_scaling is not None and config.rope_theta == 50000.0
    scaled = np.asarray(rope.rope_inv_freq(16, config.rope_theta, config.rope_scaling))
    plain = np.asarray(rope.rope_inv_freq(16, config.rope_theta))
    assert scaled[0] == plain[0]  # the shortest wavelength is kept
    np.testing.assert_allclose(scaled[2:], plain[2:] / 8.0, rtol=1e-6)  # long ones stretched
    assert plain[1] / 8.0 < scaled[1] < plain[1]  # and one on the ramp


def test_round_trip_is_bit_identical_and_shards(hf_dir, tmp_path):
    config, params = hf.load_hf(hf_dir)
    hf.save_hf(tmp_path, config, params, max_shard_bytes=40_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    original = load_file(hf_dir / "model.safetensors")
    exported = dict(hf.open_hf_tensors(tmp_path).items())
    assert set(exported) <= set(original)
    for name, array in exported.items():
        np.testing.assert_array_equal(array, original[name], err_msg=name)


def test_bfloat16_round_trip_is_bit_identical(tmp_path):
    model = random_hf_model(HF_CONFIGS["llama_gqa"]()).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "in")
    config, params = hf.load_hf(tmp_path / "in")
    hf.save_hf(tmp_path / "out", config, params, dtype="bf16")
    original = load_file(tmp_path / "in" / "model.safetensors")
    for name, array in load_file(tmp_path / "out" / "model.safetensors").items():
        assert array.dtype == original[name].dtype
        np.testing.assert_array_equal(array, original[name], err_msg=name)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_export_loads_in_transformers_without_warnings_and_same_logits(hf_dir, tmp_path):
    config, params = hf.load_hf(hf_dir)
    hf.save_hf(tmp_path, config, params)
    records = Records()
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(records)
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path, output_loading_info=True)
    finally:
        transformers_logger.removeHandler(records)
    assert not any(info.values()), info
    assert not records.messages
    tokens, positions, segment_ids = batch(config.vocab_size)
    np.testing.assert_allclose(hf_logits(model.eval(), tokens),
                               lmlib_logits(config, params, tokens, positions, segment_ids),
                               atol=1e-4, rtol=0)


def test_exported_config_reads_back_to_the_same_model_config(hf_dir):
    config = hf.model_config_from_hf(hf.read_hf_config(hf_dir))
    assert hf.model_config_from_hf(hf.hf_config_from_model(config)) == config


def test_unsupported_model_type_names_it():
    with pytest.raises(ConfigError, match="'mamba'"):
        hf.model_config_from_hf({"model_type": "mamba"})


def test_missing_tensor_names_it():
    hf_config = HF_CONFIGS["qwen2"]()
    config = hf.model_config_from_hf(hf_config.to_dict())
    tensors = {k: v.numpy() for k, v in random_hf_model(hf_config).state_dict().items()}
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ConfigError, match=r"'model\.layers\.1\.self_attn\.k_proj\.bias'"):
        hf.params_from_hf(tensors, config)


def test_pickle_checkpoints_need_allow_pickle(tmp_path):
    model = random_hf_model(HF_CONFIGS["gpt2"]())
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="allow_pickle"):
        hf.load_hf(tmp_path)
    config, params = hf.load_hf(tmp_path, allow_pickle=True)
    tokens, positions, segment_ids = batch(config.vocab_size)
    np.testing.assert_allclose(lmlib_logits(config, params, tokens, positions, segment_ids),
                               hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_exported_tokenizer_encodes_like_sentencepiece(tmp_path):
    files = stdlib.stdlib_files("eval")[:12]
    texts = [stdlib.read_text(p) for p in files]
    tokenizer = train_sentencepiece(texts, tmp_path / "spm.model", vocab_size=1000)
    hf.save_hf_tokenizer(tmp_path / "hf", (tmp_path / "spm.model").read_bytes())
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    # Leading spaces, a literal special token, non-ASCII (byte fallback), blank lines.
    texts += ["  indented = 1\n\n\tx", "s = '<s></s><unk><pad>'", "café → 中文 😀 12345"]
    for text in texts:
        assert auto(text, add_special_tokens=False).input_ids == tokenizer.encode(text)
    assert auto("x").input_ids[0] == tokenizer.bos_id


def test_convert_cli_imports_and_exports_a_checkpoint(hf_dir, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert_hf", Path(__file__).parents[1] / "tools" / "convert_hf.py")
    convert_hf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_hf)
    assert convert_hf.main(["import", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    assert convert_hf.main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    original = load_file(hf_dir / "model.safetensors")
    for name, array in load_file(tmp_path / "hf" / "model.safetensors").items():
        np.testing.assert_array_equal(array, original[name], err_msg=name)
