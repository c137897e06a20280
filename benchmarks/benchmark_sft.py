"""Packed against padded finetuning rows: how much of each step is real tokens, and how fast.

    python benchmarks/benchmark_sft.py --exp=StdlibSFT --steps=20

Runs the experiment's train step on its own data in both layouts, one after the other in one
process, and reports per layout: examples per row, the fraction of row tokens that are not
padding and that are response (loss) tokens, step time, and tokens/s counted three ways (all
row tokens, non-padding tokens, response tokens).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from lmlib.experiment import resolve
from lmlib.train.params import initial_state
from lmlib.train.run import Run


def measure(exp: str, layout: str, steps: int, overrides: list[str]) -> dict:
    config = resolve(exp, [*overrides, f"data.layout={layout}"])
    run = Run(config)
    train_step = run.compile()
    batches = run.train_iterator()
    state = initial_state(run, None, None, batches)
    seconds, rows, examples, real, response = [], 0, 0, 0, 0
    for step in range(steps + 2):  # the first two steps warm up
        batch = next(batches)
        rows += len(batch["tokens"])
        examples += sum(len(set(row) - {0}) for row in batch["segment_ids"])
        real += int((batch["segment_ids"] != 0).sum())
        response += int(batch["weights"].sum())
        start = time.perf_counter()
        state, metrics = train_step(state, run.global_batch(batch))
        jax.block_until_ready(metrics)
        if step >= 2:
            seconds.append(time.perf_counter() - start)
    step_seconds = float(np.median(seconds))
    tokens = rows * config.model.seq_len
    result = {"layout": layout, "examples_per_row": examples / rows,
              "non_padding": real / tokens, "response": response / tokens,
              "step_seconds": step_seconds,
              "tokens_per_sec": run.tokens_per_step / step_seconds}
    result["non_padding_tokens_per_sec"] = result["tokens_per_sec"] * result["non_padding"]
    result["response_tokens_per_sec"] = result["tokens_per_sec"] * result["response"]
    print(f"{layout:>6}: {result['examples_per_row']:.2f} examples/row | non-padding "
          f"{result['non_padding']:.1%} | response {result['response']:.1%} | step "
          f"{1000 * step_seconds:.0f} ms (median of {steps}) | {result['tokens_per_sec']:,.0f} "
          f"tok/s, {result['non_padding_tokens_per_sec']:,.0f} non-padding tok/s, "
          f"{result['response_tokens_per_sec']:,.0f} response tok/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exp", default="StdlibSFT")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    packed, padded = (measure(args.exp, layout, args.steps, args.overrides)
                      for layout in ("packed", "padded"))
    ratio = packed["response_tokens_per_sec"] / padded["response_tokens_per_sec"]
    print(f"packed / padded: {ratio:.2f}x response tokens per second", flush=True)


if __name__ == "__main__":
    main()
