"""Where documents come from. The spine ships one source: the embedded corpus.

The embedded corpus is the Python standard library's own source (code and docstrings) on this
machine, found through `sysconfig`: every machine with Python has it, so the demo and the tests
need no download. Files are split into train and eval by a hash of their path, so the split is
the same on every run and every machine with the same Python.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

# Test suites are mostly fixtures and data, and site-packages is not the standard library.
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(split: str, eval_percent: int = 2) -> list[Path]:
    """The standard library's .py files of one split ("train" or "eval"), in a stable order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    root = stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                relative = path.relative_to(root).as_posix()
                is_eval = zlib.crc32(relative.encode()) % 100 < eval_percent
                if is_eval == (split == "eval"):
                    files.append(path)
    return files


def read_text(path: Path) -> str:
    # A few stdlib files carry latin-1 test strings; replacing those bytes loses nothing we train on.
    return path.read_bytes().decode("utf-8", errors="replace")


def stdlib_documents(split: str) -> Iterator[str]:
    for path in stdlib_files(split):
        yield read_text(path)


def fingerprint_files(paths: list[Path]) -> str:
    """Changes when any file is added, removed, resized or touched."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def read_whole_file(path: Path) -> Iterator[str]:
    """Reader for the embedded corpus: each source file is one document."""
    yield read_text(path)
