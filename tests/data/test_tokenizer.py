"""tools/train_tokenizer.py: a sentencepiece model and a tokenizer.json that encode alike."""

import subprocess
import sys

from conftest import REPO
from lmlib.data import sources
from lmlib.data.tokenizer import HFTokenizer, SentencePieceTokenizer


def test_trained_tokenizer_loads_in_transformers_and_encodes_identically(tmp_path):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    texts = [sources.read_text(p) for p in sources.stdlib_files("eval")[:8]]
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
