"""The pretraining data pipeline: prepared ArrayRecord shards -> packed, batched rows.

Grain, in this order: global shuffle of documents by seed (reshuffled each epoch) ->
concat-then-split packing into rows of seq_len + 1 tokens -> model inputs (tokens, targets,
positions, segment ids, loss weights) -> global batches -> this process's block of each (the
row steps shared with finetuning are lmlib.data.rows). The iterator's state is small (indices
into the shuffled order) and goes into checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import fsspec
import grain
import numpy as np

from lmlib.data import prepare as prepare_lib
from lmlib.data import sources, stdlib
from lmlib.data.rows import model_inputs, process_batches, read_order
from lmlib.data.tokenizer import (SentencePieceTokenizer, Tokenizer, load_tokenizer,
                                  train_sentencepiece)
from lmlib.errors import ConfigError, check_choices


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    path: str = ""  # a tokenizer.model or tokenizer.json; "" = train one on the corpus
    vocab_size: int = 4096  # when training one
    num_samples: int = 200_000  # lines sampled to train it
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PretrainData:
    source: str = "stdlib"  # "stdlib": the embedded corpus; "urls": your files, in train_urls
    # Comma-separated URLs: local paths, gs://, s3://, http(s)://, with braces and globs
    # (gs://b/train.{000..127}.jsonl.zst); .gz .zst .bz2 .xz are decompressed. A mixture of
    # datasets gives each entry a weight: "web/*.jsonl.zst:0.7,code/*.parquet:0.3". With
    # format=hf an entry may be a hub id (owner/name), where the network allows.
    train_urls: str = ""
    validation_urls: str = ""  # "" = hold out validation_fraction of the train documents
    validation_fraction: float = 0.01  # of the documents, chosen by a hash of their text
    format: str = "auto"  # auto (by extension; a save_to_disk directory is hf, a TFDS
    #                       dataset version directory is tfds), jsonl, text, parquet, hf, tfds
    text_key: str = "text"  # the JSONL key, or the Parquet / `datasets` column, of the text
    text_split: str = "file"  # plain text: one document per "file" or per "blank_line" block
    on_error: str = "stop"  # a bad record stops with file:line: reason; "skip" counts them
    tokenizer: TokenizerConfig = TokenizerConfig()
    cache_dir: str = ""  # prepared data and trained tokenizers; "" = $LMLIB_CACHE or ~/.cache/lmlib
    prepared_dir: str = ""  # where the shards go (may be gs://...); "" = under cache_dir
    num_shards: int = 8  # jobs per dataset and split: the unit of parallelism and resuming
    num_workers: int = 0  # processes that tokenize; 0 = one per core
    # Packed rows are shuffled in windows of this many rows: a long document fills many
    # consecutive rows, and without this they would land in the same or adjacent batches.
    row_shuffle_window: int = 1024

    @functools.cached_property
    def mixture(self) -> sources.Mixture:
        """train_urls and validation_urls, parsed once (by validate()) and kept."""
        return sources.Mixture.parse(self.train_urls, self.validation_urls, self.format)

    def validate(self) -> None:
        choices = {"source": ("stdlib", "urls"), "format": ("auto", *sources.READERS),
                   "text_split": ("file", "blank_line"), "on_error": ("stop", "skip")}
        check_choices(self, "data", choices)
        if self.source == "urls" and not self.train_urls:
            raise ConfigError("data.source=urls needs data.train_urls (comma-separated URLs)")
        if self.source == "stdlib" and (self.train_urls or self.validation_urls):
            raise ConfigError("data.train_urls is set but data.source=stdlib (the embedded "
                              "corpus): also set data.source=urls")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"data.validation_fraction={self.validation_fraction}: expected "
                              "a fraction in [0, 1)")
        self.mixture  # parsed now: its errors before tokenizer training, not after


def cache_dir(config: PretrainData) -> Path:
    return Path(config.cache_dir or os.environ.get("LMLIB_CACHE")
                or Path.home() / ".cache" / "lmlib")


EMPTY_SPLIT = {
    "train": "the train split has no documents: are the inputs empty?",
    "eval": "the eval split is empty: set data.validation_urls, or a larger "
            "data.validation_fraction",
}


@dataclasses.dataclass(frozen=True)
class PreparedData:
    tokenizer: Tokenizer
    directory: str  # where the shards are read from (a local copy of remote ones)
    manifest: dict
    fingerprint: str  # of the inputs: files, sizes, dates and reader options
    weights: tuple[float, ...] = (1.0,)  # mixture weight of each dataset
    row_shuffle_window: int = 0

    def dataset(self, split: str, *, seq_len: int, batch_size: int, seed: int, shuffle: bool,
                repeat: bool, process_index: int = 0, process_count: int = 1
                ) -> grain.IterDataset:
        """This process's batches of packed rows of `split`: the Trainer's entry point."""
        if not self.shards(split):
            raise ConfigError(EMPTY_SPLIT[split])
        return packed_dataset(
            self.shards(split), seq_len=seq_len, batch_size=batch_size, seed=seed,
            shuffle=shuffle, repeat=repeat, row_shuffle_window=self.row_shuffle_window,
            process_index=process_index, process_count=process_count,
            weights=self.shard_weights(split), complete=not repeat)

    def shards(self, split: str) -> list[str]:
        return [path for path, _ in self._shards(split)]

    def shard_weights(self, split: str) -> list[float] | None:
        """Per shard: its dataset's weight times its share of that dataset's documents, so that
        mixing shards mixes datasets by `weights`; None for a single dataset."""
        if len(self.weights) == 1 or split != "train":
            return None
        shards = [shard for _, shard in self._shards(split)]
        totals = {}
        for shard in shards:
            totals[shard["dataset"]] = totals.get(shard["dataset"], 0) + shard["documents"]
        return [self.weights[s["dataset"]] * s["documents"] / totals[s["dataset"]]
                for s in shards]

    def _shards(self, split: str) -> list[tuple[str, dict]]:
        paths = prepare_lib.shard_paths(self.directory, self.manifest, split)
        return [(path, shard) for path, shard in zip(paths, self.manifest["splits"][split])
                if shard["documents"]]  # an empty shard (e.g. nothing held out) is not a source


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What to prepare: inputs per dataset and split, how to read them, what they are."""

    name: str  # of the cache directory
    datasets: list[dict[str, list[str]]]
    reader: prepare_lib.Reader
    stamps: dict[str, str]  # input -> size and modification stamp
    holdout: float
    options: dict  # reader settings that change the tokens


def _stdlib_plan() -> _Plan:
    splits = {split: [str(p) for p in stdlib.stdlib_files(split)] for split in ("train", "eval")}
    fingerprint = stdlib.fingerprint_files([Path(p) for p in splits["train"] + splits["eval"]])
    return _Plan(f"stdlib-{fingerprint}", [splits], stdlib.read_stdlib_file,
                 {"stdlib": fingerprint}, 0.0, {})


def _urls_plan(config: PretrainData) -> _Plan:
    mixture = config.mixture
    datasets = [{"train": mixture.files(source.urls)} for source in mixture.train]
    validation = mixture.files(mixture.validation)
    holdout = 0.0 if validation else config.validation_fraction
    if validation:
        datasets[0]["eval"] = validation
    else:
        print(f"data: no validation_urls; holding out {holdout:.2%} of the train documents "
              "(by a hash of their text) for validation", flush=True)
    options = sources.ReadOptions(config.format, config.text_key, config.text_split,
                                  config.on_error)
    stamps = {f: sources.file_stamp(f) for d in datasets for files in d.values() for f in files}
    described = json.dumps([datasets, stamps, holdout, dataclasses.asdict(options)],
                           sort_keys=True)
    name = "data-" + hashlib.sha256(described.encode()).hexdigest()[:16]
    return _Plan(name, datasets, functools.partial(sources.read_documents, options=options),
                 stamps, holdout, dataclasses.asdict(options))


def _tokenizer_path(config: PretrainData, plan: _Plan, root: Path) -> Path:
    if config.tokenizer.path:
        if not Path(config.tokenizer.path).exists():
            raise ConfigError(f"data.tokenizer.path: no such file: {config.tokenizer.path}")
        return Path(config.tokenizer.path)
    tok = config.tokenizer
    path = root / f"tokenizer-bpe{tok.vocab_size}-seed{tok.seed}.model"
    if not path.exists():
        train_tokenizer(config, path, plan)
    return path


def stdlib_tokenizer(config: PretrainData) -> Path:
    """The embedded corpus's tokenizer (trained once, cached): the demos share it."""
    plan = _stdlib_plan()
    return _tokenizer_path(config, plan, cache_dir(config) / plan.name)


def train_tokenizer(config: PretrainData, output: str | Path,
                    plan: _Plan | None = None) -> SentencePieceTokenizer:
    """A BPE model trained on the data's train documents with config.tokenizer's settings."""
    tok = config.tokenizer
    print(f"tokenizer: training a {tok.vocab_size}-piece BPE model -> {output}", flush=True)
    # The embedded corpus is small enough to read whole; your data may not be.
    max_lines = None if config.source == "stdlib" else 4 * tok.num_samples
    return train_sentencepiece(plan_documents(plan or plan_data(config), max_lines), output,
                               vocab_size=tok.vocab_size, num_samples=tok.num_samples,
                               seed=tok.seed)


def plan_documents(plan: _Plan, max_lines: int | None = None) -> Iterator[str]:
    """The train documents in file order, stopping after about `max_lines` lines."""
    lines = 0
    for dataset in plan.datasets:
        for file in dataset["train"]:
            for text in plan.reader(file, "train", sources.SkipCounter()):
                yield text
                lines += text.count("\n") + 1
                if max_lines is not None and lines >= max_lines:
                    return


def plan_data(config: PretrainData) -> _Plan:
    return _stdlib_plan() if config.source == "stdlib" else _urls_plan(config)


def prepare_data(config: PretrainData, tokenizer_path: str | Path | None = None
                 ) -> PreparedData:
    """Trains the tokenizer (unless `tokenizer_path`, a run's own, is given) and tokenizes the
    corpus if that was not done before (cached)."""
    plan = plan_data(config)
    root = cache_dir(config) / plan.name
    tokenizer_path = tokenizer_path or _tokenizer_path(config, plan, root)
    tokenizer = load_tokenizer(tokenizer_path)
    fingerprints = {"source": plan.name, "tokenizer": tokenizer.fingerprint}
    directory = config.prepared_dir or str(root / tokenizer.fingerprint)
    jobs = prepare_lib.make_jobs(plan.datasets, config.num_shards, plan.holdout)
    manifest = prepare_lib.prepare(
        directory, jobs, plan.reader, tokenizer_path=str(tokenizer_path),
        fingerprints=fingerprints, sources=plan.stamps, num_workers=config.num_workers)
    if "://" in directory:
        directory = str(_local_copy(directory, manifest, cache_dir(config)))
    return PreparedData(tokenizer, directory, manifest, plan.name, config.mixture.weights,
                        config.row_shuffle_window)


def _local_copy(url: str, manifest: dict, cache: Path) -> Path:
    """Remote shards copied to local disk once: ArrayRecord's reader opens local files only."""
    key = json.dumps(manifest["fingerprints"], sort_keys=True) + url
    local = cache / "copies" / hashlib.sha256(key.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    fs, path = fsspec.core.url_to_fs(url)
    for split in manifest["splits"].values():
        for shard in split:
            target = local / shard["path"]
            if not target.exists():
                tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
                fs.get_file(f"{path}/{shard['path']}", str(tmp))
                tmp.replace(target)
    print(f"data: reading {url} through the local copy {local}", flush=True)
    return local


def _decode(record: bytes) -> dict[str, np.ndarray]:
    return {"tokens": np.frombuffer(record, dtype=np.int32)}


def _documents(shard_paths: Sequence[str], seed: int, shuffle: bool,
               repeat: bool) -> grain.MapDataset:
    dataset = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(list(shard_paths)))
    return read_order(dataset, seed=seed, shuffle=shuffle, repeat=repeat)


def packed_dataset(shard_paths: list[str], *, seq_len: int, batch_size: int, seed: int,
                   shuffle: bool, repeat: bool, row_shuffle_window: int = 0,
                   process_index: int = 0, process_count: int = 1,
                   weights: Sequence[float] | None = None, complete: bool = False
                   ) -> grain.IterDataset:
    """Batches of packed rows for this process: `batch_size` is the per-process batch.

    Every process packs the same stream of rows and keeps block `process_index` of each global
    batch (`batch_size * process_count` rows), so the global batches, and the iterator's state,
    are the same for any number of processes: losses match a one-process run, and a checkpoint
    resumes on another process count. The price: each process reads every document's tokens
    (4 bytes a token) to pack them, and keeps 1/process_count of the rows.

    With `weights` (one per shard, PreparedData.shard_weights), documents are drawn from the
    shards in those proportions, each shard shuffled on its own and repeated without end.
    """
    if not shard_paths:
        raise ConfigError("no documents to read: the prepared data has no shards of this "
                          "split (are the inputs empty?)")
    if weights is None:
        dataset = _documents(shard_paths, seed, shuffle, repeat)
    else:
        dataset = grain.MapDataset.mix(
            [_documents([path], seed + i, shuffle, repeat=True)
             for i, path in enumerate(shard_paths)], weights)
    rows = grain.experimental.ConcatThenSplitIterDataset(
        dataset.map(_decode).to_iter_dataset(),
        length_struct={"tokens": seq_len + 1}).map(model_inputs)
    if shuffle and row_shuffle_window > 1:
        rows = grain.experimental.WindowShuffleIterDataset(
            rows, window_size=row_shuffle_window, seed=seed)
    return process_batches(rows, batch_size, process_index, process_count, complete=complete)
