"""lm-eval-style multiple-choice accuracy (lmlib.multiple_choice) on JSONL task files, in
--mode=eval and every trainer.multiple_choice.every_steps steps of training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from lmlib import multiple_choice
from lmlib.errors import ConfigError

if TYPE_CHECKING:
    from lmlib.train.run import Run


@dataclasses.dataclass(frozen=True)
class MultipleChoiceConfig:
    tasks: str = ""  # comma-separated JSONL task files (lmlib.multiple_choice), scored in eval
    every_steps: int = 0  # also during training, every N steps and at the end; 0 = never

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


def read_tasks(config: MultipleChoiceConfig) -> dict[str, list[multiple_choice.Question]]:
    """The tasks by name, read (and so checked) before anything compiles."""
    tasks = {}
    for path in config.task_list:
        if not Path(path).is_file():
            raise ConfigError(f"trainer.multiple_choice.tasks: no such file: {path}")
        tasks[Path(path).stem] = multiple_choice.read_task(path)
    return tasks


class MultipleChoice:
    def __init__(self, run: Run):
        self.run = run
        self.every_steps = run.config.trainer.multiple_choice.every_steps
        self.tasks = read_tasks(run.config.trainer.multiple_choice)

    def __call__(self, step: int, state, logger) -> dict[str, float]:
        return self.score(state.params)

    def score(self, params) -> dict[str, float]:
        """{"mc/<task>/acc": ..., "mc/<task>/acc_norm": ...} for each task."""
        loglik = multiple_choice.make_loglik_fn(self.run.layout.graphdef, params)
        metrics = {}
        for name, questions in self.tasks.items():
            result = multiple_choice.evaluate_task(questions, self.run.data.tokenizer, loglik)
            metrics.update({f"mc/{name}/{k}": v for k, v in result.items()})
        return metrics


def check(run: Run) -> None:
    """The task files exist and parse, checked from the config alone."""
    read_tasks(run.config.trainer.multiple_choice)


def make(run: Run) -> MultipleChoice | None:
    return MultipleChoice(run) if run.config.trainer.multiple_choice.every_steps else None
