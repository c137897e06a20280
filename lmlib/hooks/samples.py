"""Completions of a few prompts every trainer.samples.every_steps steps: to the console,
samples.jsonl and TensorBoard."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax

from lmlib.generate import Sampler, SamplingConfig

if TYPE_CHECKING:
    from lmlib.train.run import Run


@dataclasses.dataclass(frozen=True)
class SamplesConfig:
    every_steps: int = 0  # sample completions every N steps and at the end; 0 = never
    prompts: str = "def |class |import "  # prompts separated by '|' (one string, for --set)
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy

    @property
    def prompt_list(self) -> list[str]:
        return [p for p in self.prompts.split("|") if p]


class Samples:
    def __init__(self, run: Run):
        config = run.config.trainer.samples
        self.run, self.every_steps = run, config.every_steps
        self.tokenizer = tokenizer = run.data.tokenizer
        self.sampling = SamplingConfig(max_new_tokens=config.max_new_tokens,
                                       temperature=config.temperature, eos_id=tokenizer.eos_id)
        self.prompts = config.prompt_list
        self.encoded = [tokenizer.with_bos(tokenizer.encode(p)) for p in self.prompts]
        self.sampler = Sampler(run.config.model, params=None)

    def __call__(self, step: int, state, logger) -> None:
        self.sampler.params = state.params
        with jax.set_mesh(self.run.mesh):  # sample on the training mesh, params where they are
            completions = self.sampler.generate(self.encoded, self.sampling)
        logger.samples(step, [{"prompt": p, "completion": self.tokenizer.decode(c)}
                              for p, c in zip(self.prompts, completions)])


def make(run: Run) -> Samples | None:
    return Samples(run) if run.config.trainer.samples.every_steps else None
