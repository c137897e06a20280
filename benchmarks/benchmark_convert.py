"""Hugging Face conversion time and peak memory against transformers loading and saving.

    python benchmarks/benchmark_convert.py --model=llama_1b --dir=/tmp/convert

Makes a random Hugging Face Llama of the preset's shape once (bf16 safetensors, 2 GB shards,
as hub checkpoints are), then times, each in its own process: `tools/convert_hf.py import`
(HF -> Orbax checkpoint), `tools/convert_hf.py export` (back to bf16 safetensors), and the peer,
`AutoModelForCausalLM.from_pretrained` + `save_pretrained` of the same directory. Peak memory is
each process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.presets import PRESETS

REPO = Path(__file__).resolve().parent.parent

PEER = """
import sys, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="auto")
model.save_pretrained(sys.argv[2], max_shard_size="2GB")
"""


def make_hf_checkpoint(directory: Path, preset: str) -> None:
    import torch
    import transformers

    from lmlib import hf

    config = PRESETS[preset]()
    hf_config = transformers.LlamaConfig(**hf.hf_config_from_model(config, dtype="bfloat16"))
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = transformers.LlamaForCausalLM(hf_config).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="2GB")


def measured(name: str, command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GiB) of one command in its own process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        raise SystemExit(f"{name} failed: {command}")
    gib = usage.ru_maxrss / 2**20  # KiB on Linux
    print(f"{name:>34}: {seconds:6.1f} s, peak RSS {gib:5.2f} GiB", flush=True)
    return seconds, gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="llama_1b")
    parser.add_argument("--dir", default="/tmp/lmlib-convert")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = Path(args.dir)
    source = root / f"hf-{args.model}"
    if not (source / "config.json").exists():
        print(f"making a random {args.model} in {source}", flush=True)
        make_hf_checkpoint(source, args.model)
    size = sum(f.stat().st_size for f in source.glob("*.safetensors")) / 2**30
    print(f"source: {source} ({size:.2f} GiB of safetensors)", flush=True)
    tool = [sys.executable, "tools/convert_hf.py"]
    for _ in range(args.repeats):
        for path in (root / "ckpt", root / "exported", root / "peer"):
            shutil.rmtree(path, ignore_errors=True)
        measured("lmlib import (HF -> Orbax f32)", [*tool, "import", str(source), str(root / "ckpt")])
        measured("lmlib export (Orbax -> HF bf16)",
                 [*tool, "export", str(root / "ckpt"), str(root / "exported"), "--dtype=bfloat16"])
        measured("transformers load + save_pretrained",
                 [sys.executable, "-c", PEER, str(source), str(root / "peer")])


if __name__ == "__main__":
    main()
