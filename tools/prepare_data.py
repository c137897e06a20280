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
from lmlib.errors import user_errors_exit_2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    experiment.add_flags(parser)
    args = parser.parse_args(argv)
    with user_errors_exit_2():
        data = prepare_data(experiment.resolve(args.exp, args.overrides).data)
    print(f"prepared: {data.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
