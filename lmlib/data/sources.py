"""Your own data, named by URLs: which files they are, and the documents or records in them.

URLs are read through fsspec (local paths, gs://, s3://, http(s)://), with brace expansion and
globs, decompressed by extension. The data config's URL fields are parsed once into a Mixture
(the train datasets with their weights, the validation URLs, the format) that the pipelines
pass around. Readers turn JSONL, plain text, Parquet, Hugging Face `datasets` and TFDS datasets
(array_record, read without TensorFlow) into documents and report a bad record as
`file:line: reason`. The embedded corpus (the standard library's source) is lmlib.data.stdlib.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import braceexpand
import fsspec

from lmlib.errors import ConfigError

_WEIGHT_SUFFIX = re.compile(r"^(?P<url>.+):(?P<weight>\d+(?:\.\d*)?|\.\d+)$")
_GLOB_CHARS = set("*?[")


class DataError(ConfigError):
    """Bad input data: the message starts with `file:line:` where there is a line."""


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Splits on `separator` outside braces: `a.{0..3}.jsonl,b.{x,y}.txt` is two URLs."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_mixture(text: str) -> list[tuple[list[str], float]]:
    """`a/*.jsonl:0.7,b/*.parquet:0.3` -> datasets with weights; no weights -> one dataset.

    Either every entry has a weight (each entry is then one dataset of the mixture) or none has
    (all entries are one dataset, documents in their natural proportion).
    """
    entries = split_top_level(text)
    matches = [_WEIGHT_SUFFIX.match(entry) for entry in entries]
    if not any(matches):
        return [(entries, 1.0)] if entries else []
    if not all(matches):
        unweighted = [e for e, m in zip(entries, matches) if not m]
        raise ConfigError(f"data.train_urls mixes weighted and unweighted entries: give "
                          f"{unweighted[0]!r} a weight (url:weight) or drop all weights")
    datasets = [([m["url"]], float(m["weight"])) for m in matches]
    if sum(weight for _, weight in datasets) <= 0:
        raise ConfigError(f"data.train_urls: the mixture weights sum to 0 in {text!r}")
    return datasets


def is_hub_id(url: str) -> bool:
    """`owner/name` with no scheme that is not a local path: a Hugging Face hub dataset id."""
    return ("://" not in url and url.count("/") == 1 and not url.startswith((".", "/"))
            and not Path(url).exists())


def expand_url(url: str, format: str = "auto") -> list[str]:
    """One URL pattern -> the files it names (brace expansion, then globs), sorted.

    A dataset directory (Hugging Face `save_to_disk`, TFDS) is one input. A pattern that
    matches nothing is an error that names it, and so is each brace member that matches
    nothing: `web.{000..002}.jsonl.gz` with one file missing must not train on two thirds.
    """
    if format == "hf" and is_hub_id(url):
        return [url]
    files, members = [], list(braceexpand.braceexpand(url))
    for expanded in members:
        try:
            fs, path = fsspec.core.url_to_fs(expanded)
        except ImportError as e:  # e.g. s3:// without s3fs installed
            raise ConfigError(f"{url}: {e}") from None
        if _GLOB_CHARS & set(path):
            matches = sorted(fs.glob(path))
        else:
            matches = [path] if fs.exists(path) else []
        if not matches and len(members) > 1:
            raise ConfigError(f"no file matches {expanded!r} (a member of {url!r}); name only "
                              "the files that exist")
        files += [fs.unstrip_protocol(match) if "://" in expanded else match
                  for match in matches]
    if not files:
        raise ConfigError(f"no file matches {url!r}")
    return list(dict.fromkeys(files))


@dataclasses.dataclass(frozen=True)
class Source:
    """One dataset of a mixture: the URL patterns read together as one, and its weight."""

    urls: tuple[str, ...]
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A data config's URLs, parsed once: the train datasets with their weights, the
    validation URLs (none: part of the train data is held out) and the format that reads them.
    The pipelines take this value rather than parsing the config's strings again."""

    train: tuple[Source, ...] = ()
    validation: tuple[str, ...] = ()
    format: str = "auto"

    @classmethod
    def parse(cls, train_urls: str, validation_urls: str = "", format: str = "auto"
              ) -> Mixture:
        """`train_urls` as a mixture (parse_mixture: every entry weighted, or none)."""
        train = tuple(Source(tuple(urls), weight) for urls, weight in parse_mixture(train_urls))
        return cls(train, tuple(split_top_level(validation_urls)), format)

    @classmethod
    def unweighted(cls, train_urls: str, validation_urls: str = "", format: str = "auto"
                   ) -> Mixture:
        """`train_urls` as one dataset whose entries are all URLs (no weights to parse)."""
        urls = tuple(split_top_level(train_urls))
        return cls((Source(urls),) if urls else (), tuple(split_top_level(validation_urls)),
                   format)

    @property
    def weights(self) -> tuple[float, ...]:
        """One per train dataset; (1.0,) where there is none (the embedded corpus)."""
        return tuple(source.weight for source in self.train) or (1.0,)

    @property
    def train_urls(self) -> tuple[str, ...]:
        """The URLs of every train dataset, in order."""
        return tuple(url for source in self.train for url in source.urls)

    def files(self, urls: Iterable[str]) -> list[str]:
        """The files that `urls` name (expand_url in this format), each once, in order."""
        return list(dict.fromkeys(f for url in urls for f in expand_url(url, self.format)))


def detect_format(url: str) -> str:
    """The reader for one input, by its extension (compression suffixes aside) or layout."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        names = {Path(p).name for p in fs.ls(path, detail=False)}
        if names & {"state.json", "dataset_dict.json"}:
            return "hf"
        if {"dataset_info.json", "features.json"} <= names:
            return "tfds"
        raise ConfigError(f"{url}: a directory that is neither a Hugging Face `save_to_disk` "
                          "dataset nor a TFDS dataset version (dataset_info.json); name its files "
                          "(e.g. dir/*.jsonl)")
    name = Path(path).name
    for suffix in _COMPRESSIONS:
        name = name.removesuffix(suffix)
    for suffix, format in _EXTENSIONS.items():
        if name.endswith(suffix):
            return format
    raise ConfigError(f"{url}: cannot tell the format from the extension; set data.format "
                      f"(one of {', '.join(READERS)})")


_COMPRESSIONS = (".gz", ".zst", ".bz2", ".xz")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text",
               ".md": "text", ".parquet": "parquet"}


def file_stamp(url: str) -> str:
    """Size and modification stamp of an input, whatever the filesystem calls them."""
    if is_hub_id(url):
        return "hub"  # the datasets library caches and revisions hub data itself
    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        return ";".join(file_stamp(fs.unstrip_protocol(p) if "://" in url else p)
                        for p in sorted(fs.find(path)))
    info = fs.info(path)
    modified = next((info[key] for key in ("mtime", "updated", "LastModified", "ETag", "etag")
                     if key in info), "")
    return f"{info.get('size')}@{modified}"


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How files turn into documents (the data config's reader fields)."""

    format: str = "auto"
    text_key: str = "text"
    text_split: str = "file"  # plain text: "file" or "blank_line"
    on_error: str = "stop"  # or "skip"
    split_name: str = "train"  # the split of a `datasets` or TFDS dataset


class SkipCounter:
    """Counts skipped lines per file, keeping the first reason of each file."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, file: str, line: int, reason: str) -> None:
        self.counts[file] = self.counts.get(file, 0) + 1
        self.first.setdefault(file, f"{file}:{line}: {reason}")

    def as_dict(self) -> dict[str, dict]:
        return {f: {"lines": n, "first": self.first[f]} for f, n in self.counts.items()}


def read_documents(url: str, split: str, skipped: SkipCounter, options: ReadOptions
                   ) -> Iterator[str]:
    """The documents of one input of a split ("train" or "eval"). Bad records stop with
    `file:line: reason`, or are counted in `skipped` where options.on_error is "skip"."""
    format = detect_format(url) if options.format == "auto" else options.format
    options = dataclasses.replace(options, split_name=_SPLIT_NAMES[split])
    for line, text, reason in READERS[format](url, options):
        if reason is None:
            yield text
        elif options.on_error == "skip":
            skipped.add(url, line, reason)
        else:
            raise DataError(f"{url}:{line}: {reason}")


# What a `datasets` or TFDS dataset calls our splits.
_SPLIT_NAMES = {"train": "train", "eval": "validation"}

# A reader yields (line, text, None) per document or (line, None, reason) per bad record.
Record = tuple[int, "str | None", "str | None"]


@contextlib.contextmanager
def _open(url: str) -> Iterator[io.BufferedReader]:
    """The decompressed bytes of a file. Buffered: zstandard's reader cannot iterate lines."""
    with fsspec.open(url, "rb", compression="infer") as file:
        yield io.BufferedReader(file) if not isinstance(file, io.BufferedIOBase) else file


def _jsonl_records(url: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line, record, None) per JSON object of a JSONL file, or (line, None, reason).

    A file that is one JSON array of objects (Stanford Alpaca's alpaca_data.json) is read whole;
    the "line" of each of its records is its 1-based index."""
    with _open(url) as file:
        if file.peek(64).lstrip()[:1] == b"[":
            yield from _json_array_records(file.read())
            return
        for number, raw in enumerate(file, 1):
            if raw.strip():
                yield number, *_object_or_reason(lambda: json.loads(raw.decode("utf-8")))


def _json_array_records(data: bytes) -> Iterator[tuple[int, dict | None, str | None]]:
    try:
        records = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        yield data[:e.start].count(b"\n") + 1, None, f"not UTF-8 ({e.reason} at byte {e.start})"
        return
    except json.JSONDecodeError as e:
        yield e.lineno, None, f"not valid JSON ({e.msg}, column {e.colno})"
        return
    for number, record in enumerate(records, 1):
        yield number, *_object_or_reason(lambda: record)


def _object_or_reason(parse: Callable[[], Any]) -> tuple[dict | None, str | None]:
    """(the parsed record, None) when it is a JSON object, else (None, why not)."""
    try:
        value = parse()
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 ({e.reason} at byte {e.start})"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg}, column {e.colno})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, None


def _read_jsonl(url: str, options: ReadOptions) -> Iterator[Record]:
    key = options.text_key
    for number, record, reason in _jsonl_records(url):
        if reason is not None:
            yield number, None, reason
        elif key not in record:
            yield number, None, f"no {key!r} key (set data.text_key?)"
        elif not isinstance(record[key], str):
            yield number, None, f"{key!r} is {type(record[key]).__name__}, not a string"
        else:
            yield number, record[key], None


def read_records(url: str, split: str, options: ReadOptions
                 ) -> Iterator[tuple[int, dict | None, str | None]]:
    """Whole records of a JSONL, Parquet or `datasets` input, for data that needs more than one
    field (prompt/response pairs): (line, record, None), or (line, None, reason) for a bad one.
    The line of a Parquet or `datasets` record is its row number."""
    format = detect_format(url) if options.format == "auto" else options.format
    if format == "jsonl":
        yield from _jsonl_records(url)
    elif format == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(url, "rb") as file:
            rows = (row for batch in pq.ParquetFile(file).iter_batches()
                    for row in batch.to_pylist())
            yield from ((number, row, None) for number, row in enumerate(rows, 1))
    elif format in _DATASET_DIRS:
        dataset = _DATASET_DIRS[format](url, _SPLIT_NAMES[split])
        if isinstance(dataset, str):
            yield 1, None, dataset
        else:
            rows = dataset if format == "hf" else map(_decoded_text, dataset)
            yield from ((number, row, None) for number, row in enumerate(rows, 1))
    else:
        raise DataError(f"{url}: a {format} file holds documents, not records; use JSONL, "
                        "Parquet, a `datasets` directory or a TFDS dataset")


def _read_text(url: str, options: ReadOptions) -> Iterator[Record]:
    with _open(url) as file:
        data = file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        yield line, None, f"not UTF-8 ({e.reason} at byte {e.start})"
        return
    if options.text_split == "file":
        yield 1, text, None
        return
    line = 1  # blank_line: each block of lines between blank lines is one document
    for block, gap in itertools.zip_longest(*[iter(_BLANK_LINES.split(text))] * 2, fillvalue=""):
        if block.strip():
            yield line, block, None
        line += block.count("\n") + gap.count("\n")


_BLANK_LINES = re.compile(r"(\n[ \t]*\n+)")


def _text_or_reason(value, key: str) -> tuple[str | None, str | None]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, bytes):  # TFDS stores Text features as UTF-8 bytes
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError as e:
            return None, f"{key!r} is not UTF-8 ({e.reason} at byte {e.start})"
    return None, f"{key!r} is {type(value).__name__}, not a string"


def _read_columns(url: str, key: str, column_names: list[str], batches) -> Iterator[Record]:
    """Rows of a table-like input (Parquet, `datasets`): the line of a record is its row."""
    if key not in column_names:
        yield 1, None, f"no {key!r} column (set data.text_key?)"
        return
    row = 0
    for batch in batches:
        for value in batch:
            row += 1
            yield row, *_text_or_reason(value, key)


def _read_parquet(url: str, options: ReadOptions) -> Iterator[Record]:
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as file:
        parquet = pq.ParquetFile(file)
        key = options.text_key
        batches = (b.column(0).to_pylist()
                   for b in parquet.iter_batches(columns=[key]) if b.num_columns)
        yield from _read_columns(url, key, parquet.schema_arrow.names, batches)


def _hf_dataset(url: str, split: str):
    """A `datasets` Dataset (hub id or save_to_disk directory), or the reason there is none."""
    import datasets

    if is_hub_id(url):
        return datasets.load_dataset(url, split=split)
    dataset = datasets.load_from_disk(url)
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            return f"no {split!r} split (it has {', '.join(dataset)})"
        dataset = dataset[split]
    return dataset


def _tfds_dataset(url: str, split: str):
    """A TFDS dataset version directory's split, read without TensorFlow (array_record files
    only), as a sequence of feature dicts; or the reason there is none."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(url)
    if builder.info.file_format.value != "array_record":
        return (f"stored as {builder.info.file_format.value}; lmlib reads TFDS datasets stored "
                "as array_record (tfds build --file_format=array_record), without TensorFlow")
    if split not in builder.info.splits:
        return f"no {split!r} split (it has {', '.join(builder.info.splits)})"
    return _Rows(builder.as_data_source(split=split), list(builder.info.features.keys()))


class _Rows:
    """A random-access source (TFDS) read in order, a batch of records at a time."""

    def __init__(self, source, column_names: list[str]):
        self.source, self.column_names = source, column_names

    def batches(self, size: int = 1000) -> Iterator[list[dict]]:
        for start in range(0, len(self.source), size):
            yield self.source.__getitems__(list(range(start, min(start + size, len(self.source)))))

    def __iter__(self) -> Iterator[dict]:
        return itertools.chain.from_iterable(self.batches())


def _decoded_text(row: dict) -> dict:
    """TFDS Text features are UTF-8 bytes: as str, they read as any other format's fields."""
    decoded = dict(row)
    for key, value in row.items():
        if isinstance(value, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                decoded[key] = value.decode("utf-8")
    return decoded


_DATASET_DIRS = {"hf": _hf_dataset, "tfds": _tfds_dataset}


def _read_dataset_dir(url: str, options: ReadOptions, format: str) -> Iterator[Record]:
    dataset = _DATASET_DIRS[format](url, options.split_name)
    if isinstance(dataset, str):
        yield 1, None, dataset
        return
    key = options.text_key
    if key not in dataset.column_names:
        batches = ()
    elif format == "hf":
        batches = (b[key] for b in dataset.select_columns([key]).iter(1000))
    else:
        batches = ([row[key] for row in rows] for rows in dataset.batches())
    yield from _read_columns(url, key, dataset.column_names, batches)


READERS = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet,
           "hf": functools.partial(_read_dataset_dir, format="hf"),
           "tfds": functools.partial(_read_dataset_dir, format="tfds")}
