"""One tokenizer interface over sentencepiece models and Hugging Face `tokenizer.json` files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from lmlib.errors import ConfigError


class Tokenizer:
    """Text <-> token ids. `fingerprint` changes whenever the mapping could change."""

    vocab_size: int
    bos_id: int | None  # None where the model has no BOS (Qwen2)
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

    def with_bos(self, ids: list[int]) -> list[int]:
        """A sequence as the model sees one start: after BOS, where the tokenizer has one."""
        return ids if self.bos_id is None else [self.bos_id, *ids]

    def files(self) -> dict[str, bytes]:
        """The tokenizer's own files by name, to write beside a run or a checkpoint."""
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

    def files(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.model_proto}


class HFTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer file (`tokenizer.json`) through the `tokenizers` library.

    BOS, EOS and pad are the `tokenizer_config.json` beside it names (`<|begin_of_text|>` for
    Llama 3, none for Qwen2's BOS), or Llama's `<s>` and `</s>` where there is none.
    """

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizerImpl

        path = Path(path)
        self._tok = HFTokenizerImpl.from_file(str(path))
        # Text such as a literal "<s>" in a document is text, never a control token: as in
        # SentencePiece, and as transformers' split_special_tokens (lmlib.hf's export) does.
        self._tok.encode_special_tokens = True
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        config_path = path.with_name("tokenizer_config.json")
        self.config = json.loads(config_path.read_text()) if config_path.exists() else {
            "bos_token": "<s>", "eos_token": "</s>"}
        self.bos_id, self.eos_id, self.pad_id = (
            self._token_id(key) for key in ("bos_token", "eos_token", "pad_token"))
        if self.eos_id is None:  # documents and responses end with it: training needs one
            raise ConfigError(f"{path}: no end-of-sequence token (eos_token in "
                              f"{config_path.name} names none that {path.name} has)")
        specials = json.dumps([self.bos_id, self.eos_id, self.pad_id]).encode()
        self.fingerprint = "hf-" + hashlib.sha256(path.read_bytes() + specials).hexdigest()[:16]

    def _token_id(self, key: str) -> int | None:
        token = self.config.get(key)
        if isinstance(token, dict):  # an AddedToken serialised as {"content": ..., ...}
            token = token.get("content")
        return self._tok.token_to_id(token) if token else None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # The fast variant skips character offsets, which token ids never need.
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def files(self) -> dict[str, bytes]:
        """tokenizer.json (with the pad token lmlib.data.supervised.with_pad added, if it did)
        and a tokenizer_config.json naming the special tokens: AutoTokenizer loads the pair."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizerImpl

        tokenizer = HFTokenizerImpl.from_str(self._tok.to_str())
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.config}
        if self.pad_id is not None and tokenizer.id_to_token(self.pad_id) is None:
            tokenizer.add_special_tokens([AddedToken("[PAD]", special=True, normalized=False)])
        for key, id in (("bos_token", self.bos_id), ("eos_token", self.eos_id),
                        ("pad_token", self.pad_id)):
            config[key] = tokenizer.id_to_token(id) if id is not None else None
        tokenizer.encode_special_tokens = False  # a file's default; transformers sets its own
        return {"tokenizer.json": tokenizer.to_str().encode(),
                "tokenizer_config.json": json.dumps(config, indent=1).encode()}


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
    if not lines:
        raise ConfigError(f"no documents to train a tokenizer on (writing {output}): the train "
                          "inputs hold no text")
    sample = random.Random(seed).sample(lines, min(num_samples, len(lines)))
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, user_defined_symbols=["\n"],
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, input_sentence_size=0,
            shuffle_input_sentence=False, max_sentence_length=16384, num_threads=2,
            minloglevel=2)
    except RuntimeError as e:  # e.g. fewer pieces asked for than the text has characters
        raise ConfigError(f"training a {vocab_size}-piece tokenizer on {len(sample):,} lines: "
                          f"{str(e).splitlines()[0]} (data.tokenizer.vocab_size, or "
                          "--vocab_size)") from None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    tmp.replace(output)
    return SentencePieceTokenizer(model.getvalue())
