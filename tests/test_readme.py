"""README.md and BUILD.md are tests: every shell and Python block runs as written, in order, in
one scratch directory, on files this test makes, so a documented command that stops working
fails CI.

What is changed, all of it here: lmlib.main commands that would train long get SHORT appended
(a later --set wins), PLACEHOLDERS point at what the test made (a tiny Hugging Face Llama, a GCS
emulator's bucket, a scratch /tmp), and SHRINK makes a few arguments small. A block preceded by
`<!--pytest.mark.skip: reason-->` is not run; the reason stands in the document itself.
`make test` is this suite and is not run from within it.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import GCS_BUCKET, REPO

BLOCK = re.compile(r"(?:<!--\s*pytest\.mark\.skip:?(?P<skip>[^>]*)-->\s*\n)?"
                   r"```(?P<lang>sh|python)\n(?P<body>.*?)```", re.S)

SHORT = ("--set trainer.num_train_steps=4 --set trainer.batch_size=8 "
         "--set trainer.eval_every=2 --set trainer.eval_batches=2 --set trainer.log_every=2")
SHRINK = {"--vocab_size=32000": "--vocab_size=1000"}


def blocks(doc: str) -> list[tuple[int, str, str, str | None]]:
    """(line, language, body, skip reason) of each fenced sh/python block of `doc`."""
    text = (REPO / doc).read_text()
    return [(text.count("\n", 0, m.start("body")) + 1, m["lang"], m["body"],
             m["skip"].strip() if m["skip"] is not None else None)
            for m in BLOCK.finditer(text)]


def shortened(command: str) -> str:
    command = command.replace("\\\n", " ")
    # SHORT goes at the end of each lmlib.main command line: before `&`, `;`, `|` or a comment.
    command = re.sub(r"(python -m lmlib\.main\b(?![^&;|#\n]*--mode=(?:list|show|dry_run))"
                     r"[^&;|#\n]*?)(\s*(?:[&;|#]|$))", rf"\1 {SHORT}\2", command, flags=re.M)
    # -o: make never reinstalls the shared .venv from the scratch directory.
    command = re.sub(r"^make demo\b", f'make -o .venv/.installed demo ARGS="{SHORT}"',
                     command, flags=re.M)
    command = re.sub(r"^make test\b.*$", "", command, flags=re.M)
    for old, new in SHRINK.items():
        command = command.replace(old, new)
    return command


def with_placeholders(text: str, scratch: Path) -> str:
    hf_dir = str(scratch / "hf-llama")
    values = {"HF_DIR_OR_HUB_ID": hf_dir, "HF_DIR": hf_dir, "/models/llama-7b-hf": hf_dir,
              "gs://bucket/": f"gs://{GCS_BUCKET}/", "gs://BUCKET/": f"gs://{GCS_BUCKET}/",
              "/tmp/": f"{scratch}/tmp/"}
    pattern = "|".join(re.escape(key) for key in values)  # one pass: no value is rewritten
    return re.sub(pattern, lambda m: values[m[0]], text)


def make_inputs(scratch: Path) -> None:
    """What the documents' commands read: their own data, a Hugging Face model, task files."""
    import torch
    import transformers

    from lmlib import hf
    from lmlib.data import stdlib
    from lmlib.data.pretrain import PretrainData, prepare_data

    texts = [stdlib.read_text(p) for p in stdlib.stdlib_files("train")[:160]]
    bucket = fsspec.filesystem("gs")
    for i in range(128):  # web.{000..127}.jsonl.zst, one document each
        line = json.dumps({"text": texts[i]}) + "\n"
        bucket.pipe(f"{GCS_BUCKET}/web.{i:03d}.jsonl.zst",
                    zstandard.ZstdCompressor().compress(line.encode()))
    validation = "".join(json.dumps({"text": t}) + "\n" for t in texts[128:136])
    bucket.pipe(f"{GCS_BUCKET}/val.jsonl.zst",
                zstandard.ZstdCompressor().compress(validation.encode()))
    (scratch / "code").mkdir()
    pq.write_table(pa.table({"text": texts[136:160]}), scratch / "code" / "part0.parquet")

    (scratch / "sft").mkdir()
    (scratch / "sft" / "a.jsonl").write_text("".join(
        json.dumps({"prompt": f"def f{i}(x):\n", "response": f"    return x + {i}\n"}) + "\n"
        for i in range(64)))
    (scratch / "arc_easy.jsonl").write_text("".join(json.dumps(
        {"question": f"{i} + 1 =", "choices": {"text": [str(i + 1), str(i)], "label": ["A", "B"]},
         "answerKey": "A"}) + "\n" for i in range(4)))
    (scratch / "hellaswag.jsonl").write_text("".join(json.dumps(
        {"ctx": "import os\nos.path.", "endings": ["join('a')", "banana"], "label": "0"}) + "\n"
        for _ in range(4)))

    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )).save_pretrained(scratch / "hf-llama")
    hf.save_hf_tokenizer(scratch / "hf-llama", prepare_data(PretrainData()).tokenizer.model_proto)


def run_block(language: str, body: str, scratch: Path, env: dict[str, str]) -> None:
    body = with_placeholders(body, scratch)
    if language == "sh":
        argv = ["bash", "-euo", "pipefail", "-c", shortened(body)]
    else:
        argv = [sys.executable, "-c", body]
    result = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (f"exit {result.returncode}:\n{argv[-1]}\n"
                                    f"stdout:\n{result.stdout[-4000:]}\n"
                                    f"stderr:\n{result.stderr[-4000:]}")


@pytest.mark.parametrize("doc", ["README.md", "BUILD.md"])
def test_every_documented_command_runs(doc, tmp_path, gcs_emulator):
    scratch = tmp_path
    (scratch / "tmp").mkdir()
    for name in ["Makefile", "pyproject.toml", ".venv", "tools"]:  # what `make` and tools/ need
        (scratch / name).symlink_to(REPO / name)
    make_inputs(scratch)
    env = {**os.environ, **gcs_emulator, "JAX_PLATFORMS": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = 0
    for line, language, body, skip in blocks(doc):
        if skip is not None:
            assert skip, f"{doc}:{line}: a skipped block says why"
            continue
        try:
            run_block(language, body, scratch, env)
        except AssertionError as e:
            raise AssertionError(f"{doc}:{line}: {e}") from None
        ran += 1
    assert ran >= 1
