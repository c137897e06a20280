"""The pretraining data pipeline: prepared ArrayRecord shards -> packed, batched rows.

Grain, in this order: global shuffle of documents by seed (reshuffled each epoch) -> this
process's slice -> concat-then-split packing into rows of seq_len + 1 tokens -> model inputs
(tokens, targets, positions, segment ids, loss weights) -> batches. The iterator's state is
small (indices into the shuffled order) and goes into checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import grain
import numpy as np

from lmlib.data import prepare as prepare_lib
from lmlib.data import sources
from lmlib.data.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer, \
    train_sentencepiece
from lmlib.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    path: str = ""  # a tokenizer.model or tokenizer.json; "" = train one on the corpus
    vocab_size: int = 4096  # when training one
    num_samples: int = 200_000  # lines sampled to train it
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PretrainData:
    source: str = "stdlib"  # the embedded corpus (your own files: the data issue's sources)
    tokenizer: TokenizerConfig = TokenizerConfig()
    cache_dir: str = ""  # prepared data and trained tokenizers; "" = $LMLIB_CACHE or ~/.cache/lmlib
    num_shards: int = 8
    # Packed rows are shuffled in windows of this many rows: a long document fills many
    # consecutive rows, and without this they would land in the same or adjacent batches.
    row_shuffle_window: int = 1024

    def __post_init__(self):
        if self.source != "stdlib":
            raise ConfigError(f"data.source={self.source!r}: only 'stdlib' (the embedded corpus) "
                              "is available in this version")


def cache_dir(config: PretrainData) -> Path:
    return Path(config.cache_dir or os.environ.get("LMLIB_CACHE")
                or Path.home() / ".cache" / "lmlib")


@dataclasses.dataclass(frozen=True)
class PreparedData:
    tokenizer: Tokenizer
    directory: Path
    manifest: dict

    def shards(self, split: str) -> list[str]:
        return prepare_lib.shard_paths(self.directory, self.manifest, split)


def prepare_data(config: PretrainData) -> PreparedData:
    """Trains the tokenizer and tokenizes the corpus if that was not done before (cached)."""
    splits = {split: sources.stdlib_files(split) for split in ("train", "eval")}
    source_fp = sources.fingerprint_files(splits["train"] + splits["eval"])
    root = cache_dir(config) / f"stdlib-{source_fp}"
    tok = config.tokenizer
    if tok.path:
        if not Path(tok.path).exists():
            raise ConfigError(f"data.tokenizer.path: no such file: {tok.path}")
        tokenizer_path = Path(tok.path)
    else:
        tokenizer_path = root / f"tokenizer-bpe{tok.vocab_size}-seed{tok.seed}.model"
        if not tokenizer_path.exists():
            print(f"tokenizer: training a {tok.vocab_size}-piece BPE model -> {tokenizer_path}",
                  flush=True)
            train_sentencepiece(sources.stdlib_documents("train"), tokenizer_path,
                                vocab_size=tok.vocab_size, num_samples=tok.num_samples,
                                seed=tok.seed)
    tokenizer = load_tokenizer(tokenizer_path)
    directory = root / tokenizer.fingerprint
    manifest = prepare_lib.prepare(
        directory, splits, sources.read_whole_file, tokenizer_path=str(tokenizer_path),
        fingerprints={"source": source_fp, "tokenizer": tokenizer.fingerprint},
        num_shards=config.num_shards)
    return PreparedData(tokenizer, directory, manifest)


def _decode(record: bytes) -> dict[str, np.ndarray]:
    return {"tokens": np.frombuffer(record, dtype=np.int32)}


def _model_inputs(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One packed row of seq_len + 1 tokens -> next-token inputs and targets.

    Positions restart at 0 at each document start and at the row start (a document split across
    rows continues in the next row from position 0), so they never exceed seq_len. The target of
    the last token of one document is the first token of the next: its weight is 0.
    """
    tokens, segments = row["tokens"], row["tokens_segment_ids"]
    inputs, targets = tokens[:-1], tokens[1:]
    input_segments, target_segments = segments[:-1], segments[1:]
    starts = np.r_[True, input_segments[1:] != input_segments[:-1]]
    index = np.arange(len(inputs))
    positions = index - np.maximum.accumulate(np.where(starts, index, 0))
    weights = (input_segments == target_segments) & (input_segments != 0)
    return {
        "tokens": inputs.astype(np.int32),
        "targets": targets.astype(np.int32),
        "positions": positions.astype(np.int32),
        "segment_ids": input_segments.astype(np.int32),
        "weights": weights.astype(np.float32),
    }


def packed_dataset(shard_paths: list[str], *, seq_len: int, batch_size: int, seed: int,
                   shuffle: bool, repeat: bool, row_shuffle_window: int = 0,
                   process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """Batches of packed rows for this process: `batch_size` is the per-process batch."""
    if not shard_paths:
        raise ConfigError("the prepared data has no shards for this split")
    dataset = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(shard_paths))
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset[process_index::process_count].map(_decode)
    rows = grain.experimental.ConcatThenSplitIterDataset(
        dataset.to_iter_dataset(), length_struct={"tokens": seq_len + 1}).map(_model_inputs)
    if shuffle and row_shuffle_window > 1:
        rows = grain.experimental.WindowShuffleIterDataset(
            rows, window_size=row_shuffle_window, seed=seed)
    return rows.batch(batch_size, drop_remainder=True)


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def restore_iterator_state(iterator: grain.DatasetIterator, state: dict) -> None:
    """Sets a state that went through JSON (in a checkpoint) on a fresh iterator.

    JSON turns tuples into lists, and Grain's concat-then-split packer compares its remainder
    slice with the tuple (-1, -1) to mean "empty": a list there silently replays wrong rows.
    Grain states hold no lists of their own, so every list goes back to a tuple.
    """
    iterator.set_state(_lists_to_tuples(state))
