"""python -m lmlib.main --exp=NAME [--set key=value ...] [--workdir=DIR] [--mode=...]

Modes: train (default), eval (loss and perplexity on the eval split), dry_run (build and compile
one step, report memory per device, train nothing), show (the resolved config and derived
numbers, nothing allocated), list (the registered experiments).

Several processes (hosts) join one run through jax.distributed: on GKE TPU slices, multi-slice
jobs and SLURM the environment says how; elsewhere pass --coordinator_address, --num_processes
and --process_id to every process.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from lmlib.errors import ConfigError, RunStopped

FLAGS = flags.DEFINE_string("exp", None, "Registered experiment name (--mode=list lists them).")
flags.DEFINE_multi_string("set", [], "Override a config field: --set trainer.batch_size=64.")
flags.DEFINE_string("workdir", None, "Run directory: metrics.jsonl, tensorboard/, config.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "dry_run", "show", "list"], "What to do.")
# Multi-process runs where the environment does not say (GKE TPU, multi-slice and SLURM do):
# every process gets the same address and count, and its own id.
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", None, "Processes in the run (jax.distributed).")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")


def run(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; options take the form --name=value")
    from lmlib import xla_flags
    xla_flags.set_defaults()  # before JAX starts its backend
    from lmlib import distributed, experiment, runner

    mode = flags.FLAGS.mode
    if mode == "list":
        print(runner.list_experiments())
        return
    distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                           flags.FLAGS.process_id)
    if not flags.FLAGS.exp:
        raise ConfigError("--exp is required (--mode=list lists the experiments)")
    config = experiment.resolve(flags.FLAGS.exp, flags.FLAGS.set)
    if mode == "show":
        print(runner.show(config))
    elif mode == "dry_run":
        runner.dry_run(config)
    elif mode == "eval":
        runner.evaluate(config, flags.FLAGS.workdir)
    else:
        runner.train(config, flags.FLAGS.workdir)


def main(argv: list[str]) -> None:
    # Libraries (JAX, Orbax) log routine events at INFO through absl; lmlib prints its own
    # progress, so only their warnings are shown.
    logging.set_verbosity(logging.WARNING)
    try:
        run(argv)
    except ConfigError as e:  # a user mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as e:  # diverged, or saves kept failing: the saved checkpoints are intact
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
