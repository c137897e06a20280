"""The embedded corpus: the Python standard library's own source, as documents and as records.

It is found through `sysconfig` on this machine: every machine with Python has it, so the demo
and the tests need no download. Files are split into train and eval by a hash of their path, so
the split is the same on every run and every machine with the same Python. Pretraining reads
each file as one document; the supervised demo turns each documented public function into an
instruction (write the docstring, given the signature).
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

from lmlib.data.sources import SkipCounter

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


def fingerprint_files(paths: list[Path]) -> str:
    """Changes when any file is added, removed, resized or touched."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def read_stdlib_file(path: str, split: str, skipped: SkipCounter) -> Iterator[str]:
    """Reader for the embedded corpus: each source file is one document."""
    yield read_text(Path(path))


def stdlib_docstring_records(split: str) -> Iterator[tuple[str, int, dict]]:
    """The demo's instructions from the embedded corpus: write the docstring of a standard-library
    function, given its signature. (file, line, Alpaca-style record) per documented function."""
    for path in stdlib_files(split):
        try:
            tree = ast.parse(read_text(path))
        except SyntaxError:  # a few stdlib files are deliberately invalid (lib2to3 fixtures)
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring and not node.name.startswith("_"):
                    signature = f"def {node.name}({ast.unparse(node.args)}):"
                    yield str(path), node.lineno, {
                        "instruction": "Write the docstring of this Python function.",
                        "input": signature, "output": docstring}
