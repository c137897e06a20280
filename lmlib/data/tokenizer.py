"""One tokenizer interface over sentencepiece models and Hugging Face `tokenizer.json` files."""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm


class Tokenizer:
    """Text <-> token ids. `fingerprint` changes whenever the mapping could change."""

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int | None
    fingerprint: str

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The same ids as `encode` on each text, through the library's faster batch path."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto  # the serialized model, for exporting it (lmlib.hf)
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.vocab_size()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else None
        self.fingerprint = "spm-" + hashlib.sha256(model_proto).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        return cls(Path(path).read_bytes())

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        # Ids past the model's pieces (a pad token added for finetuning) decode to nothing.
        return self._sp.decode([int(i) for i in ids if int(i) < self._sp.vocab_size()])


class HFTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer file (`tokenizer.json`) through the `tokenizers` library."""

    def __init__(self, path: str | Path, bos_token: str = "<s>", eos_token: str = "</s>",
                 pad_token: str | None = None):
        from tokenizers import Tokenizer as HFTokenizerImpl

        path = Path(path)
        self._tok = HFTokenizerImpl.from_file(str(path))
        # Text such as a literal "<s>" in a document is text, never a control token: as in
        # SentencePiece, and as transformers' split_special_tokens (lmlib.hf's export) does.
        self._tok.encode_special_tokens = True
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._tok.token_to_id(bos_token)
        self.eos_id = self._tok.token_to_id(eos_token)
        self.pad_id = self._tok.token_to_id(pad_token) if pad_token else None
        self.fingerprint = "hf-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # The fast variant skips character offsets, which token ids never need.
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if path.suffix == ".json":
        return HFTokenizer(path)
    return SentencePieceTokenizer.load(path)


def train_sentencepiece(documents: Iterable[str], output: str | Path, *, vocab_size: int,
                        num_samples: int = 200_000, seed: int = 0) -> SentencePieceTokenizer:
    """Trains a Llama-2-style BPE model (byte fallback, `<unk> <s> </s> <pad>` = 0..3).

    Whitespace is kept exactly (identity normalisation, runs of spaces as pieces), and a newline
    is its own piece, because the text is code. Training lines are a seeded sample of all lines,
    so the same documents and seed give the same model.
    """
    lines = [line for doc in documents for line in doc.split("\n") if line.strip()]
    sample = random.Random(seed).sample(lines, min(num_samples, len(lines)))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, user_defined_symbols=["\n"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, input_sentence_size=0,
        shuffle_input_sentence=False, max_sentence_length=16384, num_threads=2, minloglevel=2)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    tmp.replace(output)
    return SentencePieceTokenizer(model.getvalue())
