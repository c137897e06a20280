"""tools/train_tokenizer.py: a sentencepiece model and a tokenizer.json that encode alike."""

import json
import subprocess
import sys

from conftest import REPO, byte_level_bpe
from lmlib.data import stdlib
from lmlib.data.tokenizer import HFTokenizer, SentencePieceTokenizer


def test_trained_tokenizer_loads_in_transformers_and_encodes_identically(tmp_path):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    texts = [stdlib.read_text(p) for p in stdlib.stdlib_files("eval")[:8]]
    corpus.write_text("\n\n".join(texts))
    out = tmp_path / "tok"
    subprocess.run([sys.executable, "tools/train_tokenizer.py", "--exp=JsonlLlamaTiny",
                    f"--set=data.train_urls={corpus}", "--set=data.text_split=blank_line",
                    "--vocab_size=600", "--num_samples=5000", f"--out={out}"],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    spm = SentencePieceTokenizer.load(out / "tokenizer.model")
    assert spm.vocab_size == 600 and (spm.bos_id, spm.eos_id, spm.pad_id) == (1, 2, 3)
    hf_file = HFTokenizer(out / "tokenizer.json")
    auto = AutoTokenizer.from_pretrained(out)
    for text in [*texts, "  leading spaces\n\ttabs, <s> literal, unicode: Grüße 日本"]:
        ids = spm.encode(text)
        assert hf_file.encode(text) == ids
        assert auto(text, add_special_tokens=False)["input_ids"] == ids
        assert spm.decode(ids) == text


def test_hf_tokenizer_specials_come_from_its_config_and_a_missing_bos_frames_with_eos_only(
        tmp_path):
    import numpy as np
    import pytest

    from lmlib.data.prepare import encode_documents
    from lmlib.errors import ConfigError

    llama3 = HFTokenizer(byte_level_bpe(tmp_path / "llama3", "<|begin_of_text|>"))
    assert (llama3.bos_id, llama3.eos_id) == (0, 1)
    [framed] = encode_documents(llama3, ["x = 1"])
    np.testing.assert_array_equal(framed, [0, *llama3.encode("x = 1"), 1])

    qwen2 = HFTokenizer(byte_level_bpe(tmp_path / "qwen2", None))  # Qwen2 has no BOS
    assert qwen2.bos_id is None and qwen2.with_bos([5, 6]) == [5, 6]
    [framed] = encode_documents(qwen2, ["x = 1"])
    np.testing.assert_array_equal(framed, [*qwen2.encode("x = 1"), qwen2.eos_id])

    config = tmp_path / "qwen2" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "eos_token": None}))
    with pytest.raises(ConfigError, match="tokenizer.json: no end-of-sequence token"):
        HFTokenizer(tmp_path / "qwen2" / "tokenizer.json")


def test_a_pad_added_for_finetuning_is_in_the_exported_tokenizer_json(tmp_path):
    from transformers import AutoTokenizer

    from lmlib import hf
    from lmlib.data.supervised import with_pad

    tokenizer = with_pad(HFTokenizer(byte_level_bpe(tmp_path / "base", "<|begin_of_text|>")))
    assert tokenizer.pad_id == tokenizer.vocab_size - 1 == 700
    hf.save_tokenizer(tmp_path / "out", tokenizer)
    auto = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id) == (700, 0, 1)
    assert len(auto) == 701
