"""Hugging Face <-> lmlib checkpoints; the logic lives in lmlib/hf.py.

    python tools/convert_hf.py import HF_DIR OUT [--allow_pickle]
    python tools/convert_hf.py export CKPT OUT [--dtype bf16] [--tokenizer tokenizer.model]
                                               [--max_shard_gb 5]
"""

from __future__ import annotations

import argparse
import sys
import time

from lmlib import hf
from lmlib.data.tokenizer import load_tokenizer
from lmlib.errors import user_errors_exit_2
from lmlib.train import checkpoint


def import_hf(args: argparse.Namespace) -> None:
    config, params = hf.load_hf(args.hf_dir, allow_pickle=args.allow_pickle, progress=True)
    checkpoint.save_params(args.out, params, config)


def export_hf(args: argparse.Namespace) -> None:
    config, params = checkpoint.load_params(args.ckpt)
    hf.save_hf(args.out, config, params, dtype=args.dtype,
               max_shard_bytes=int(args.max_shard_gb * 2**30), progress=True)
    if args.tokenizer:
        hf.save_tokenizer(args.out, load_tokenizer(args.tokenizer))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_lmlib = commands.add_parser("import", help="HF directory -> lmlib checkpoint")
    to_lmlib.add_argument("hf_dir")
    to_lmlib.add_argument("out")
    to_lmlib.add_argument("--allow_pickle", action="store_true",
                          help="read pytorch_model.bin (a pickle: only from sources you trust)")
    to_lmlib.set_defaults(run=import_hf)
    to_hf = commands.add_parser("export", help="lmlib checkpoint -> HF directory")
    to_hf.add_argument("ckpt")
    to_hf.add_argument("out")
    to_hf.add_argument("--dtype", default="float32", choices=sorted(hf.DTYPES))
    to_hf.add_argument("--max_shard_gb", type=float, default=5.0)
    to_hf.add_argument("--tokenizer", help="tokenizer.model or tokenizer.json to export alongside")
    to_hf.set_defaults(run=export_hf)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with user_errors_exit_2():
        args.run(args)
    print(f"{args.command}: wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
