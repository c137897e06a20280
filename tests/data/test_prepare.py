"""Prepare through tools/prepare_data.py and the CLI: formats, resuming, bad input, gs://."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zstandard
from array_record.python.array_record_data_source import ArrayRecordDataSource

from conftest import GCS_BUCKET, REPO, run_cli, train_losses
from lmlib.data import stdlib
from lmlib.data.tokenizer import train_sentencepiece

# The demo's model, two steps, on your files (a tokenizer trained on them, below).
OWN_RUN = ["--exp=JsonlLlamaTiny", "--set=trainer.log_every=1", "--set=trainer.eval_every=1000",
           "--set=trainer.eval_batches=1", "--set=trainer.precision=p=f32,c=f32",
           "--set=model.seq_len=64", "--set=model.num_layers=2", "--set=trainer.batch_size=4",
           "--set=trainer.num_train_steps=2"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """60 documents of a few hundred characters, one of them not ASCII."""
    text = "".join(stdlib.read_text(p) for p in stdlib.stdlib_files("eval")[:3])
    documents = [text[i:i + 400] for i in range(0, 60 * 400, 400)]
    documents[7] = "Grüße, café — naïve 日本語 text.\n" + documents[7]
    return documents


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    train_sentencepiece(corpus, path, vocab_size=400)
    return str(path)


def data_flags(tmp_path: Path, tokenizer: str, train_urls: str, *extra: str) -> list[str]:
    return [f"--set=data.train_urls={train_urls}", f"--set=data.tokenizer.path={tokenizer}",
            f"--set=data.cache_dir={tmp_path / 'cache'}", "--set=data.num_workers=1",
            "--set=data.validation_fraction=0.2", *extra]


def prepare_tool(*flags: str, check: bool = True, env: dict | None = None,
                 ) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "tools/prepare_data.py", "--exp=JsonlLlamaTiny",
                             *flags], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    if check and result.returncode:
        raise AssertionError(f"prepare_data exited {result.returncode}\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def records(directory: Path) -> dict[str, list[tuple[int, ...]]]:
    """Every split's documents (token ids), sorted: the content, not the shard layout."""
    manifest = json.loads((directory / "manifest.json").read_text())
    out = {}
    for split, shards in manifest["splits"].items():
        paths = [str(directory / s["path"]) for s in shards if s["documents"]]
        source = ArrayRecordDataSource(paths) if paths else []
        out[split] = sorted(tuple(np.frombuffer(source[i], np.int32)) for i in range(len(source)))
    return out


def write_jsonl(path: Path, documents: list[str]) -> None:
    data = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(documents))
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data.encode()))
    else:
        path.write_bytes(zstandard.ZstdCompressor().compress(data.encode()))


def write_tfds(directory: Path, documents: list[str]) -> Path:
    """A TFDS dataset stored as array_record (TFDS writes it without TensorFlow too)."""
    import tensorflow_datasets as tfds

    class StdlibSnippets(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield from ((i, {"text": text}) for i, text in enumerate(documents))

    builder = StdlibSnippets(data_dir=str(directory), file_format="array_record")
    builder.download_and_prepare()
    return Path(builder.data_dir)


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """A real HTTP server on localhost serving `directory`: its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_every_format_and_http_give_the_same_tokens(tmp_path, corpus, tokenizer):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "part.000.jsonl.gz", corpus[:30])
    write_jsonl(tmp_path / "part.001.jsonl.zst", corpus[30:])
    pq.write_table(pa.table({"text": corpus}), tmp_path / "all.parquet")
    datasets.Dataset.from_dict({"text": corpus}).save_to_disk(str(tmp_path / "hf"))
    tfds_dir = write_tfds(tmp_path / "tfds", corpus)

    prepared = {}
    with http_server(tmp_path) as base:
        for name, urls in {"jsonl": f"{tmp_path}/part.{{000..001}}.jsonl.*",
                           "http": f"{base}/part.{{000.jsonl.gz,001.jsonl.zst}}",
                           "parquet": f"{tmp_path}/all.parquet", "hf": f"{tmp_path}/hf",
                           "tfds": str(tfds_dir)}.items():
            out = tmp_path / f"prepared-{name}"
            stdout = prepare_tool(*data_flags(tmp_path, tokenizer, urls,
                                              f"--set=data.prepared_dir={out}")).stdout
            assert "holding out 20.00% of the train documents" in stdout
            prepared[name] = records(out)
    assert sum(len(docs) for docs in prepared["jsonl"].values()) == len(corpus)
    assert 0 < len(prepared["jsonl"]["eval"]) < len(corpus) / 2
    for name in ("http", "parquet", "hf", "tfds"):
        assert prepared[name] == prepared["jsonl"], name


def test_prepare_is_idempotent_and_resumes_after_a_kill(tmp_path, corpus, tokenizer):
    # Later files are longer, so that the kill lands while they are being tokenized.
    for i in range(4):
        write_jsonl(tmp_path / f"part.{i}.jsonl.gz", corpus * (1 + 40 * i))
    flags = data_flags(tmp_path, tokenizer, f"{tmp_path}/part.{{0..3}}.jsonl.gz")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    prepare_tool(*flags, f"--set=data.prepared_dir={whole}")
    again = prepare_tool(*flags, f"--set=data.prepared_dir={whole}").stdout
    assert "is up to date, nothing to do" in again

    process = subprocess.Popen(
        [sys.executable, "tools/prepare_data.py", "--exp=JsonlLlamaTiny", *flags,
         f"--set=data.prepared_dir={resumed}"], cwd=REPO, stdout=subprocess.PIPE, text=True,
        start_new_session=True)  # its own process group: the kill takes the workers too
    for line in process.stdout:
        if line.startswith("prepare: 1/4 jobs"):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait()
    assert not (resumed / "manifest.json").exists()
    rerun = prepare_tool(*flags, f"--set=data.prepared_dir={resumed}").stdout
    assert "prepare: resuming, " in rerun and " of 4 jobs already done" in rerun
    assert (resumed / "manifest.json").read_text() == (whole / "manifest.json").read_text()
    for shard in whole.glob("*.array_record"):
        assert (resumed / shard.name).read_bytes() == shard.read_bytes(), shard.name


def test_a_changed_source_or_tokenizer_invalidates_the_prepared_data(tmp_path, corpus, tokenizer):
    write_jsonl(tmp_path / "a.jsonl.gz", corpus)
    flags = data_flags(tmp_path, tokenizer, f"{tmp_path}/a.jsonl.gz",
                       f"--set=data.prepared_dir={tmp_path / 'out'}")
    prepare_tool(*flags)
    write_jsonl(tmp_path / "a.jsonl.gz", corpus[:10])
    stdout = prepare_tool(*flags).stdout
    assert "was prepared with another source; preparing it again" in stdout
    assert "train: " in stdout and sum(len(d) for d in records(tmp_path / "out").values()) == 10

    other = tmp_path / "other.model"
    train_sentencepiece(corpus, other, vocab_size=450)
    stdout = prepare_tool(*flags, f"--set=data.tokenizer.path={other}").stdout
    assert "was prepared with another tokenizer; preparing it again" in stdout


def test_bad_lines_stop_with_file_and_line_or_are_skipped_and_counted(tmp_path, corpus,
                                                                      tokenizer):
    good = "".join(json.dumps({"text": d}) + "\n" for d in corpus[:5])
    path = tmp_path / "bad.jsonl"
    path.write_text(good + '{"text": 1}\n{"txt": "a"}\n')
    flags = data_flags(tmp_path, tokenizer, str(path))
    failed = prepare_tool(*flags, check=False)
    assert failed.returncode == 2
    assert failed.stderr.strip() == f"error: {path}:6: 'text' is int, not a string"
    skipped = prepare_tool(*flags, "--set=data.on_error=skip").stdout
    assert "prepare: skipped 2 bad lines (data.on_error=skip):" in skipped
    assert f"{path}: 2 lines skipped, the first: {path}:6:" in skipped
    missing = prepare_tool(*data_flags(tmp_path, tokenizer, f"{tmp_path}/nope.*.jsonl"),
                           check=False)
    assert missing.stderr.strip() == f"error: no file matches '{tmp_path}/nope.*.jsonl'"


def test_prepare_a_mixture_to_gcs_and_train_from_it(tmp_path, corpus, tokenizer,
                                                    gcs_emulator):
    write_jsonl(tmp_path / "a.jsonl.gz", corpus[:40])
    write_jsonl(tmp_path / "b.jsonl.zst", corpus[40:])
    urls = f"{tmp_path}/a.jsonl.gz:0.75,{tmp_path}/b.jsonl.zst:0.25"
    bucket = f"gs://{GCS_BUCKET}/prepared"
    flags = [*data_flags(tmp_path, tokenizer, urls), f"--set=data.prepared_dir={bucket}"]
    prepare_tool(*flags, env=gcs_emulator)
    names = {Path(p).name for p in fsspec.filesystem("gs").ls(bucket, detail=False)}
    assert {"manifest.json", "train-00-00000.array_record", "eval-00-00000.array_record",
            "train-01-00000.array_record"} <= names
    out = run_cli(*OWN_RUN, *flags, f"--workdir={tmp_path / 'run'}", env=gcs_emulator).stdout
    assert f"prepare: {bucket} is up to date" in out
    assert f"data: reading {bucket} through the local copy" in out
    assert train_losses(tmp_path / "run").keys() == {1, 2}
