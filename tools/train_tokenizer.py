"""Train a Llama-2-style sentencepiece BPE tokenizer (byte fallback, `<unk> <s> </s> <pad>`) on
an experiment's train data, and write it as `tokenizer.model` and as a `tokenizer.json` that
`transformers.AutoTokenizer` loads and that encodes to the same ids.

    python tools/train_tokenizer.py --exp=JsonlLlamaTiny --set data.train_urls='data/*.jsonl' \
        --vocab_size=32000 --num_samples=1000000 --out=tokenizers/mine

Then train with --set data.tokenizer.path=tokenizers/mine/tokenizer.model.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lmlib import experiment, hf
from lmlib.data.pretrain import train_tokenizer
from lmlib.errors import user_errors_exit_2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    experiment.add_flags(parser)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--num_samples", type=int, default=200_000,
                        help="lines sampled from the data to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="directory for the tokenizer files")
    args = parser.parse_args(argv)
    with user_errors_exit_2():
        data = experiment.resolve(args.exp, args.overrides).data
        data = dataclasses.replace(data, tokenizer=dataclasses.replace(
            data.tokenizer, vocab_size=args.vocab_size, num_samples=args.num_samples,
            seed=args.seed))
        tokenizer = train_tokenizer(data, Path(args.out) / "tokenizer.model")
    written = "tokenizer.model, tokenizer.json"
    try:
        hf.save_hf_tokenizer(args.out, tokenizer.model_proto)
    except ModuleNotFoundError as e:  # the base install: no transformers to convert with
        if e.name != "transformers":
            raise
        written = ("tokenizer.model (the tokenizer.json that transformers loads needs "
                   "pip install 'lmlib[hf]')")
    print(f"wrote {args.out}: {written}; {tokenizer.vocab_size} pieces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
