"""What runs beside the training loop every N steps and at the end (big_vision's config.evals):
the eval loss, multiple-choice accuracy, samples, a Hugging Face export. Each module holds its
config and its code, and a `make(run)` that returns its hook, or None where it is off; making
it checks what it reads (task files, an eval split) before anything compiles.

Inputs a hook can check from the config alone (task files, an export's needs) are checked by
`check_hooks` before any data is prepared. A hook is called as `hook(step, state, logger)` and returns metrics to log, or None. A new one
is a module here, a field of TrainerConfig for its config and an entry in HOOKS; the loop is
not touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from lmlib.hooks import eval_loss, hf_export, multiple_choice, samples

if TYPE_CHECKING:
    from lmlib.train.metrics import MetricsLogger
    from lmlib.train.run import Run
    from lmlib.train.state import TrainState


class Hook(Protocol):
    every_steps: int

    def __call__(self, step: int, state: TrainState, logger: MetricsLogger
                 ) -> dict[str, float] | None: ...


HOOKS = {"eval_loss": eval_loss.make, "multiple_choice": multiple_choice.make,
         "samples": samples.make, "hf_export": hf_export.make}


# The inputs a hook can check from the config alone: checked before any data is prepared.
CHECKS = [multiple_choice.check, hf_export.check]


def check_hooks(run: Run) -> None:
    for check in CHECKS:
        check(run)


def make_hooks(run: Run) -> list[Hook]:
    """The run's hooks that are on, each checked against its inputs."""
    return [hook for make in HOOKS.values() if (hook := make(run)) is not None]
