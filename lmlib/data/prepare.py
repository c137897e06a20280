"""Tokenize documents once into ArrayRecord shards (one record per document) with a manifest.

Layout of a prepared directory (local or any fsspec URL, e.g. gs://bucket/prepared):
    manifest.json            fingerprints (tokenizer, sources, reader options), input files with
                             their sizes and modification stamps, shards with counts
    train-00-00003.array_record, eval-00-00000.array_record, ...   (split-dataset-job)
    job-train-00-00003.json  one job's shards with their counts, written after its shards
A job tokenizes some input files into one shard per split it feeds (two when documents are held
out for validation). Shards are written under a temporary name and moved into place when
complete, and the job's counts after them, so a killed run resumes job by job and a half-written
shard is never read. Jobs run in parallel processes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence

import fsspec
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from fsspec.implementations.local import LocalFileSystem

from lmlib.data.sources import SkipCounter
from lmlib.data.tokenizer import load_tokenizer

MANIFEST = "manifest.json"

# A reader turns one input file of a split into its documents, counting what it skips. It must
# pickle (a module-level function or a functools.partial of one): jobs run in other processes.
Reader = Callable[[str, str, SkipCounter], Iterator[str]]


@dataclasses.dataclass(frozen=True)
class Job:
    """Input files -> one shard per split they feed."""

    split: str  # where the files come from: "train" or "eval"
    dataset: int  # index in the mixture
    index: int
    files: tuple[str, ...]
    holdout: float = 0.0  # fraction of (train) documents that go to an eval shard instead

    @property
    def name(self) -> str:
        return f"{self.split}-{self.dataset:02d}-{self.index:05d}"

    def shard_name(self, split: str) -> str:
        return f"{split}-{self.dataset:02d}-{self.index:05d}.array_record"


def make_jobs(datasets: Sequence[dict[str, Sequence[str]]], num_shards: int,
              holdout: float = 0.0) -> list[Job]:
    """Each dataset's files per split -> at most `num_shards` jobs per dataset and split."""
    jobs = []
    for dataset, splits in enumerate(datasets):
        for split, files in splits.items():
            count = max(1, min(num_shards, len(files)))
            jobs += [Job(split, dataset, i, tuple(files[i::count]),
                         holdout if split == "train" else 0.0) for i in range(count)]
    return jobs


def encode_documents(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each document, framed by BOS (where the tokenizer has one) and EOS so
    packed documents stay apart."""
    return [np.asarray([*tokenizer.with_bos(ids), tokenizer.eos_id], np.int32)
            for ids in tokenizer.encode_batch(texts)]


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def is_held_out(text: str, fraction: float) -> bool:
    """A document's split from its content alone: the same text lands in the same split
    whatever file or format it came in, on every run."""
    return zlib.crc32(text.encode()) < fraction * 2**32


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def _write_text(url: str, text: str) -> None:
    """Atomic on a local disk (rename); an object store's upload is atomic by itself."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as file:
            file.write(text)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, text.encode())


def _read_json(url: str) -> dict | None:
    fs, path = fsspec.core.url_to_fs(url)
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def _run_job(job: Job, reader: Reader, tokenizer_path: str, out_dir: str, key: str) -> dict:
    tokenizer = load_tokenizer(tokenizer_path)
    fs, out_path = fsspec.core.url_to_fs(out_dir)
    local = isinstance(fs, LocalFileSystem)
    staging = out_path if local else tempfile.mkdtemp(prefix="lmlib-prepare-")
    splits = [job.split] + (["eval"] if job.holdout > 0 else [])
    # Unique temporary names: two runs on one directory may race; the last rename wins.
    tmp = {s: os.path.join(staging, f"{job.shard_name(s)}.tmp{os.getpid()}") for s in splits}
    writers = {s: ArrayRecordWriter(path, "group_size:1") for s, path in tmp.items()}
    counts = {s: {"path": job.shard_name(s), "dataset": job.dataset, "documents": 0,
                  "tokens": 0} for s in splits}
    skipped = SkipCounter()
    for file in job.files:
        for texts in _chunks(reader(file, job.split, skipped), 64):  # batch encodes are faster
            for text, ids in zip(texts, encode_documents(tokenizer, texts)):
                held_out = job.holdout > 0 and is_held_out(text, job.holdout)
                split = "eval" if held_out else job.split
                writers[split].write(ids.tobytes())
                counts[split]["documents"] += 1
                counts[split]["tokens"] += len(ids)
    for split, writer in writers.items():
        writer.close()
        destination = _join(out_path, job.shard_name(split))
        if local:
            os.replace(tmp[split], destination)
        else:
            fs.put_file(tmp[split], destination)
            os.remove(tmp[split])
    result = {"key": key, "shards": counts, "skipped": skipped.as_dict()}
    _write_text(_join(out_dir, f"job-{job.name}.json"), json.dumps(result))
    return result


def _one_thread_per_worker() -> None:
    """The workers are the parallelism: a tokenizer's own threads would only contend."""
    os.environ["RAYON_NUM_THREADS"] = "1"  # `tokenizers`' thread pool reads it when it starts


def prepare(out_dir: str, jobs: Sequence[Job], reader: Reader, *, tokenizer_path: str,
            fingerprints: dict[str, str], sources: dict[str, str] | None = None,
            num_workers: int = 0) -> dict:
    """Runs the jobs not done yet; returns the manifest.

    Idempotent: a directory whose manifest matches `fingerprints` is returned as it is. Where
    it does not (another tokenizer, changed inputs or options), every job runs again.
    """
    out_dir = str(out_dir)
    manifest = _read_json(_join(out_dir, MANIFEST))
    if manifest and manifest["fingerprints"] == fingerprints:
        print(f"prepare: {out_dir} is up to date, nothing to do ({_summary(manifest)})",
              flush=True)
        report_skipped(manifest["skipped"])
        return manifest
    if manifest:
        changed = sorted(k for k in fingerprints if manifest["fingerprints"].get(k) != fingerprints[k])
        print(f"prepare: {out_dir} was prepared with another {' and '.join(changed)}; "
              "preparing it again", flush=True)
    fs, path = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(path, exist_ok=True)

    key = json.dumps(fingerprints, sort_keys=True)  # a job's results count only for these
    done = {}
    for job in jobs:
        result = _read_json(_join(out_dir, f"job-{job.name}.json"))
        if result and result["key"] == key:
            done[job] = result
    todo = [job for job in jobs if job not in done]
    if done:
        print(f"prepare: resuming, {len(done)} of {len(jobs)} jobs already done", flush=True)

    start, tokens = time.monotonic(), 0
    # spawn, not fork: the caller may already have started JAX's threads.
    context = multiprocessing.get_context("spawn")
    workers = min(num_workers or os.cpu_count() or 1, max(1, len(todo)))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_one_thread_per_worker) as pool:
        futures = {pool.submit(_run_job, job, reader, tokenizer_path, out_dir, key): job
                   for job in todo}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            done[futures[future]] = result = future.result()
            tokens += sum(s["tokens"] for s in result["shards"].values())
            elapsed = time.monotonic() - start
            eta = elapsed / n * (len(todo) - n)
            print(f"prepare: {n}/{len(todo)} jobs, {tokens:,} tokens, "
                  f"{tokens / elapsed:,.0f} tokens/s, ETA {eta:.0f}s", flush=True)

    results = [done[job] for job in jobs]  # in job order: the manifest does not depend on timing
    manifest = {
        "fingerprints": fingerprints,
        "sources": sources or {},
        "splits": {split: [r["shards"][split] for r in results if split in r["shards"]]
                   for split in ("train", "eval")},
        "skipped": {f: s for r in results for f, s in r["skipped"].items()},
    }
    _write_text(_join(out_dir, MANIFEST), json.dumps(manifest, indent=1))
    print(f"prepare: wrote {out_dir} ({_summary(manifest)})", flush=True)
    report_skipped(manifest["skipped"])
    return manifest


def report_skipped(skipped: dict[str, dict]) -> None:
    if skipped:
        total = sum(s["lines"] for s in skipped.values())
        print(f"prepare: skipped {total:,} bad lines (data.on_error=skip):", flush=True)
        for file, s in sorted(skipped.items()):
            print(f"  {file}: {s['lines']:,} lines skipped, the first: {s['first']}", flush=True)


def _summary(manifest: dict) -> str:
    return ", ".join(
        f"{split}: {sum(s['documents'] for s in shards):,} documents "
        f"{sum(s['tokens'] for s in shards):,} tokens"
        for split, shards in manifest["splits"].items())


def shard_paths(out_dir: str, manifest: dict, split: str) -> list[str]:
    return [_join(str(out_dir), s["path"]) for s in manifest["splits"][split]]
