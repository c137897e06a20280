"""Tokenize documents once into ArrayRecord shards (one record per document) with a manifest.

Layout of a prepared directory:
    manifest.json                     tokenizer and source fingerprints, shards with counts
    train-00000.array_record (+ .json with that shard's counts), eval-00000.array_record, ...
A shard is written under a temporary name and renamed when complete, and its counts are written
after it, so a killed run resumes shard by shard and a half-written shard is never read.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from lmlib.data.tokenizer import load_tokenizer

MANIFEST = "manifest.json"

# A reader turns one input file into its documents (the embedded corpus: one file, one document).
Reader = Callable[[Path], Iterator[str]]


def encode_document(tokenizer, text: str) -> np.ndarray:
    """Token ids of one document, framed by BOS and EOS so packed documents stay apart."""
    return np.asarray([tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id], np.int32)


def _write_shard(files: Sequence[Path], reader: Reader, tokenizer_path: str, path: Path) -> dict:
    tokenizer = load_tokenizer(tokenizer_path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # unique: writers may race
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    documents = tokens = 0
    for file in files:
        for text in reader(file):
            ids = encode_document(tokenizer, text)
            writer.write(ids.tobytes())
            documents += 1
            tokens += len(ids)
    writer.close()
    tmp.replace(path)
    counts = {"path": path.name, "documents": documents, "tokens": tokens}
    path.with_name(path.name + ".json").write_text(json.dumps(counts))
    return counts


def prepare(out_dir: str | Path, splits: dict[str, Sequence[Path]], reader: Reader, *,
            tokenizer_path: str, fingerprints: dict[str, str], num_shards: int = 8,
            num_workers: int = 2) -> dict:
    """Tokenizes each split's files into at most `num_shards` shards; returns the manifest.

    Idempotent: a directory whose manifest matches `fingerprints` is returned as it is.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["fingerprints"] == fingerprints:
            print(f"prepare: {out_dir} is up to date ({_summary(manifest)})", flush=True)
            return manifest
    out_dir.mkdir(parents=True, exist_ok=True)

    jobs = {}  # shard path -> files
    for split, files in splits.items():
        count = max(1, min(num_shards, len(files)))
        for i in range(count):
            jobs[out_dir / f"{split}-{i:05d}.array_record"] = list(files[i::count])
    done = {p: json.loads(p.with_name(p.name + ".json").read_text()) for p in jobs
            if p.with_name(p.name + ".json").exists()}
    todo = [p for p in jobs if p not in done]
    if done:
        print(f"prepare: resuming, {len(done)} of {len(jobs)} shards already written", flush=True)

    start, tokens = time.monotonic(), 0
    # spawn, not fork: the caller may already have started JAX's threads.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        futures = {pool.submit(_write_shard, jobs[p], reader, tokenizer_path, p): p for p in todo}
        for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
            done[futures[future]] = counts = future.result()
            tokens += counts["tokens"]
            elapsed = time.monotonic() - start
            eta = elapsed / n * (len(todo) - n)
            print(f"prepare: {n}/{len(todo)} shards, {tokens:,} tokens, "
                  f"{tokens / elapsed:,.0f} tokens/s, ETA {eta:.0f}s", flush=True)

    manifest = {
        "fingerprints": fingerprints,
        "splits": {split: [done[p] for p in jobs if p.name.startswith(split + "-")]
                   for split in splits},
    }
    tmp = manifest_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(manifest_path)
    print(f"prepare: wrote {out_dir} ({_summary(manifest)})", flush=True)
    return manifest


def _summary(manifest: dict) -> str:
    return ", ".join(
        f"{split}: {sum(s['documents'] for s in shards):,} documents "
        f"{sum(s['tokens'] for s in shards):,} tokens"
        for split, shards in manifest["splits"].items())


def shard_paths(out_dir: str | Path, manifest: dict, split: str) -> list[str]:
    return [str(Path(out_dir) / s["path"]) for s in manifest["splits"][split]]
