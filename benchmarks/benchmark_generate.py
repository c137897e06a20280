"""Decode throughput: lmlib's KV-cache sampler against transformers `generate`, same model.

    python benchmarks/benchmark_generate.py --batch_sizes=1,32 --new_tokens=64

The demo Llama with random weights (speed does not depend on them) is written as a Hugging Face
directory and loaded by both; greedy decoding of `new_tokens` after a 16-token prompt, float32
on both sides, best of --repeats after a warm-up (lmlib compiles on the warm-up).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.presets import PRESETS
from lmlib import hf
from lmlib.generate import Sampler, SamplingConfig

PROMPT_LEN = 16


def best_seconds(run, repeats: int) -> float:
    run()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch
    import transformers

    config = PRESETS["demo"]()
    params = nnx.to_pure_dict(nnx.state(config.make(nnx.Rngs(0))))
    params = jax.tree.map(np.asarray, params)
    sampler = Sampler(config, params)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_hf(directory, config, params)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32).eval()
    sampling = SamplingConfig(max_new_tokens=args.new_tokens)
    for batch in map(int, args.batch_sizes.split(",")):
        prompts = np.random.default_rng(0).integers(3, config.vocab_size, (batch, PROMPT_LEN))
        ours = best_seconds(lambda: sampler.generate(prompts.tolist(), sampling), args.repeats)
        ids = torch.tensor(prompts)

        def hf_generate():
            with torch.no_grad():
                theirs.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                pad_token_id=0, eos_token_id=None)

        torch_seconds = best_seconds(hf_generate, args.repeats)
        tokens = batch * args.new_tokens
        print(f"batch {batch:>3}: lmlib {tokens / ours:,.0f} tokens/s, transformers "
              f"{tokens / torch_seconds:,.0f} tokens/s, ratio {torch_seconds / ours:.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
