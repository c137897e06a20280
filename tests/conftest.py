"""Shared fixtures: one prepared copy of the embedded corpus per session, and a CLI runner."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

import fsspec
import pytest
from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def lmlib_cache(tmp_path_factory) -> Path:
    """Tokenizer and prepared shards are made once and shared by every test of the session."""
    cache = Path(os.environ.get("LMLIB_TEST_CACHE") or tmp_path_factory.mktemp("lmlib-cache"))
    os.environ["LMLIB_CACHE"] = str(cache)
    return cache


def run_cli(*args: str, devices: int = 1, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m lmlib.main ARGS` with `devices` simulated CPU devices (and `env` added)."""
    env = {**os.environ, **(env or {})}
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


GCS_BUCKET = "lmlib-test"


def byte_level_bpe(directory, bos_token, vocab_size=700):
    """A Llama-3-style tokenizer.json (byte-level BPE) with its tokenizer_config.json, as a hub
    checkpoint without a sentencepiece model carries them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lmlib.data import stdlib

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tokenizer.train_from_iterator(
        (stdlib.read_text(p) for p in stdlib.stdlib_files("eval")[:20]),
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos_token,
                            eos_token="<|end_of_text|>").save_pretrained(directory)
    return directory / "tokenizer.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sending_generation(download):
    """gcp-storage-emulator's object download, also sending the object's generation headers.

    GCS sends x-goog-generation with an object's bytes; the emulator (2026.7.19) does not.
    Tensorstore takes each read's generation from that header and fails with "Malformed
    StorageGeneration" without it, and Orbax's arrays (OCDBT) read their manifest that way."""

    def handler(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
        except NotFound:
            pass  # download answers 404
        return download(request, response, storage, *args, **kwargs)

    return handler


@pytest.fixture
def gcs_emulator(monkeypatch) -> Iterator[dict[str, str]]:
    """A GCS emulator (gcp-storage-emulator's HTTP server, in memory, on loopback, served by a
    thread of this process) holding GCS_BUCKET.

    Yields the environment that points every GCS client at it, also set in this process (for
    lmlib.load_model), for run_cli(env=...)."""
    # What GET /storage/v1/b/BUCKET/o/OBJECT?alt=media (tensorstore's reads) calls.
    monkeypatch.setattr(objects, "download", _sending_generation(objects.download))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (epath's gs:// backend), google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore, which writes Orbax's arrays
        # A fixed bearer token (the emulator checks none), so tensorstore looks for no credentials.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "NO_GCE_CHECK": "true",  # gcsfs and google-auth: no probe of a GCE metadata server
        # gcsfs's default filesystem asks the Storage Control gRPC API for each bucket's
        # layout, which the emulator does not serve; the plain JSON-API filesystem does not.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The test lists from this process what the CLI writes from its own: no stale listings.
    monkeypatch.setitem(fsspec.config.conf, "gs", {"use_listings_cache": False})
    with emulator_server.create_server("127.0.0.1", port, in_memory=True,
                                       default_bucket=GCS_BUCKET):
        yield env


@pytest.fixture
def gcs_write_faults(gcs_emulator, monkeypatch) -> list[str]:
    """Regexes, empty at first: while one matches an upload to the emulator (its URL and the
    start of its body, where gcsfs names the object), the upload is answered 403 Forbidden, as by
    a bucket that refuses writes. The test may change the list while a CLI runs."""
    patterns: list[str] = []
    handle = emulator_server.Router.handle

    def handle_or_refuse(router, method):
        request = router._request_handler
        if method in ("POST", "PUT") and patterns:
            body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
            target = unquote(request.path) + body[:4096].decode("latin-1")
            if any(re.search(pattern, target) for pattern in patterns):
                response = emulator_server.Response(request)
                response.status = HTTPStatus.FORBIDDEN
                response.json({"error": {"code": 403, "message": "injected fault"}})
                response.close()
                return
            request.rfile = io.BytesIO(body)
        handle(router, method)

    monkeypatch.setattr(emulator_server.Router, "handle", handle_or_refuse)
    return patterns
