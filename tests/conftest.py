"""Shared fixtures: one prepared copy of the embedded corpus per session, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def lmlib_cache(tmp_path_factory) -> Path:
    """Tokenizer and prepared shards are made once and shared by every test of the session."""
    cache = Path(os.environ.get("LMLIB_TEST_CACHE") or tmp_path_factory.mktemp("lmlib-cache"))
    os.environ["LMLIB_CACHE"] = str(cache)
    return cache


def run_cli(*args: str, devices: int = 1, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m lmlib.main ARGS` with `devices` simulated CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run([sys.executable, "-m", "lmlib.main", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"lmlib.main {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def read_metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def train_losses(workdir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_metrics(workdir) if "train/loss" in m}


# A few steps of the demo model, small enough for the suite: every logged loss in float32.
TINY_RUN = ["--exp=StdlibLlama", "--set=trainer.log_every=1", "--set=trainer.eval_every=1000",
            "--set=trainer.eval_batches=1", "--set=trainer.precision=p=f32,c=f32",
            "--set=model.seq_len=64", "--set=model.num_layers=2"]
