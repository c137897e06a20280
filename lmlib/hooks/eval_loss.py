"""The loss on the eval split, every trainer.eval_every steps and in --mode=eval: by default
over the whole split, so the number is the same at any batch size and process count."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import numpy as np

from lmlib import distributed
from lmlib.data.pretrain import EMPTY_SPLIT
from lmlib.errors import ConfigError

if TYPE_CHECKING:
    from lmlib.train.run import Run


class EvalLoss:
    def __init__(self, run: Run):
        self.run = run
        self.every_steps = run.config.trainer.eval_every
        self._num_bytes: int | None = None  # of the split's text, counted once

    def __call__(self, step: int, state, logger) -> dict[str, float]:
        return self.evaluate(state.params)

    def evaluate(self, params) -> dict[str, float]:
        """Token-weighted mean loss, perplexity and bits per byte of the eval batches."""
        run = self.run
        loss_sum = weight_sum = 0.0
        count_bytes, num_bytes = self._num_bytes is None, 0
        with jax.set_mesh(run.mesh):
            for batch in run.eval_batches():
                loss, weight = run.eval_step(params, run.global_batch(batch))
                loss_sum, weight_sum = loss_sum + float(loss), weight_sum + float(weight)
                num_bytes += self._target_bytes(batch) if count_bytes else 0
        if count_bytes:  # each process decoded its own rows
            self._num_bytes = sum(distributed.allgather_json(num_bytes))
        if not weight_sum:
            raise ConfigError("the eval split has no tokens to score")
        loss = loss_sum / weight_sum
        return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 700.0)),
                # Comparable across tokenizers: total nats over the UTF-8 bytes they encode.
                "eval/bits_per_byte": loss_sum / (self._num_bytes * math.log(2)),
                "eval/tokens": weight_sum}

    def _target_bytes(self, batch: dict[str, np.ndarray]) -> int:
        """UTF-8 bytes of the text the weighted targets spell, document by document."""
        total = 0
        for targets, weights, segments in zip(batch["targets"], batch["weights"],
                                              batch["segment_ids"]):
            for segment in np.unique(segments[weights > 0]):
                ids = targets[(segments == segment) & (weights > 0)]
                total += len(self.run.data.tokenizer.decode(ids).encode())
        return total


def make(run: Run) -> EvalLoss:
    """Always on (trainer.eval_every > 0); refuses an eval split without a batch."""
    if next(iter(run.eval_batches()), None) is None:
        raise ConfigError(EMPTY_SPLIT["eval"])
    return EvalLoss(run)
