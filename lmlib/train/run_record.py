"""A run's identity, kept in its workdir: the tokenizer it trains with and the data it started on.

`WORKDIR/run.json` is written when a run starts, beside the tokenizer's own files. A run that
resumes (or is evaluated) reads its tokenizer from there: it never retrains or swaps it, even
when its inputs changed, so token ids mean the same thing in every step of one run.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import jax
from etils import epath

from lmlib.data.tokenizer import Tokenizer
from lmlib.train.checkpoint import absolute, is_remote

RECORD = "run.json"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    tokenizer_files: tuple[str, ...]  # beside run.json; the first is the one to load
    tokenizer_fingerprint: str
    data_fingerprint: str  # of the inputs the run started on (files, sizes, dates, options)


def read(workdir: str | None) -> RunRecord | None:
    """The workdir's record, or None for a new workdir (or no workdir)."""
    if not workdir or not (absolute(workdir) / RECORD).exists():
        return None
    saved = json.loads((absolute(workdir) / RECORD).read_text())
    return RunRecord(tuple(saved["tokenizer_files"]), saved["tokenizer_fingerprint"],
                     saved["data_fingerprint"])


def write(workdir: str | None, tokenizer: Tokenizer, data_fingerprint: str) -> RunRecord:
    """Writes the tokenizer's files and run.json into the workdir (process 0)."""
    files = tokenizer.files()
    record = RunRecord(tuple(files), tokenizer.fingerprint, data_fingerprint)
    if workdir and jax.process_index() == 0:
        root = absolute(workdir)
        root.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (root / name).write_bytes(content)
        (root / RECORD).write_text(json.dumps(dataclasses.asdict(record), indent=1))
    return record


def tokenizer_path(workdir: str, record: RunRecord) -> Path:
    """A local path to the run's tokenizer file (remote workdirs: a copy of its files)."""
    root = absolute(workdir)
    if not is_remote(workdir):
        return Path(root / record.tokenizer_files[0])
    local = Path(tempfile.mkdtemp(prefix="lmlib-tokenizer-"))
    for name in record.tokenizer_files:
        (local / name).write_bytes((epath.Path(root) / name).read_bytes())
    return local / record.tokenizer_files[0]
