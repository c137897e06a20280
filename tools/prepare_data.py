"""Tokenize an experiment's data into ArrayRecord shards ahead of training (training would
otherwise do it first). The logic lives in lmlib/data/prepare.py.

    python tools/prepare_data.py --exp=JsonlLlamaTiny \
        --set data.train_urls='gs://bucket/train.{000..127}.jsonl.zst' \
        --set data.prepared_dir=gs://bucket/prepared

Idempotent (a second run does nothing) and resumable (a killed run finishes the rest).
"""

from __future__ import annotations

import argparse
import sys

from lmlib import experiment
from lmlib.data.pretrain import prepare_data
from lmlib.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", required=True, help="a registered experiment")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="override a config field, e.g. data.on_error=skip")
    args = parser.parse_args(argv)
    try:
        data = prepare_data(experiment.resolve(args.exp, args.overrides).data)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"prepared: {data.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
