"""Training-step throughput of lmlib against the same model in transformers + torch.

    python benchmarks/benchmark.py --model=demo --framework=both
    python benchmarks/benchmark.py --model=llama_1b --batch_size=8 --framework=lmlib

Both sides train the same Llama (lmlib.hf maps the config) with AdamW on random tokens of the
same batch and sequence length, bf16 compute over float32 weights (torch: autocast; --precision
f32 for float32 compute on both sides), and
report tokens/s, step time, MFU (model FLOPs including attention, lmlib's formula for both)
and peak memory (device memory on an accelerator, process RSS on a CPU). With
--framework=both each framework runs in its own process, alternating (lmlib, torch, lmlib, ...)
for --pairs pairs, and the ratio is taken pair by pair: a noisy machine's drift then moves both
sides of a pair alike. (Steps of both alternating inside one process were tried and are biased
on a CPU: one framework's idle threads and deferred work land in the other's timings.) The data
pipeline is left out on purpose: this measures the step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from benchmarks.presets import PRESETS
from lmlib import xla_flags
from lmlib.models import LlamaConfig
from lmlib.config import TrainerConfig


def peak_host_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclasses.dataclass
class Runner:
    """One framework's training step, ready to run: `step()` runs one step to completion."""
    name: str
    step: Callable[[], None]
    # Asked for after the timed steps: on a CPU the peak is measured with an XLA matmul, whose
    # thread pool should not be running while torch's steps are timed.
    peak_flops: Callable[[], float]
    peak_memory_gib: Callable[[], float]


def lmlib_runner(config: LlamaConfig, batch_size: int, bf16: bool, total_steps: int,
                 loss_chunk_len: int) -> Runner:
    import jax
    import jax.numpy as jnp

    from lmlib.mesh import MeshConfig, batch_sharding, make_mesh
    from lmlib.train.metrics import peak_flops_per_device
    from lmlib.train.optimizer import AdamW
    from lmlib.train.state import init_state, state_layout
    from lmlib.train.step import StepConfig, make_train_step, random_batch

    mesh = make_mesh(MeshConfig())
    adamw = AdamW()
    optimizer = adamw.make(total_steps)
    layout = state_layout(config, optimizer, mesh, seed=0)
    step_fn = jax.jit(
        make_train_step(layout.graphdef, optimizer, adamw.schedule(total_steps),
                        StepConfig(jnp.bfloat16 if bf16 else jnp.float32, num_microbatches=1,
                                   loss_chunk_len=loss_chunk_len)),
        in_shardings=(layout.shardings, batch_sharding(mesh)),
        out_shardings=(layout.shardings, None), donate_argnums=0)
    batch = random_batch(config.vocab_size, batch_size, config.seq_len)
    batch = jax.device_put(batch, batch_sharding(mesh))
    state = init_state(layout)

    def step() -> None:
        nonlocal state
        with jax.set_mesh(mesh):
            state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)

    def peak_memory_gib() -> float:
        stats = jax.devices()[0].memory_stats() or {}  # none on a CPU
        if "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**30
        return peak_host_gib()

    return Runner("lmlib", step, lambda: peak_flops_per_device() * jax.device_count(),
                  peak_memory_gib)


def torch_runner(config: LlamaConfig, batch_size: int, bf16: bool) -> Runner:
    import torch
    import transformers

    from lmlib import hf
    from lmlib.train.metrics import datasheet_peak_flops, peak_flops_per_device

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    hf_config = transformers.LlamaConfig(**hf.hf_config_from_model(config, dtype="float32"))
    model = transformers.LlamaForCausalLM._from_config(
        hf_config, attn_implementation="sdpa", dtype=torch.float32).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1,
                                  betas=(0.9, 0.95), fused=cuda)
    tokens = torch.randint(0, config.vocab_size, (batch_size, config.seq_len), device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        loss.item()

    if cuda:
        return Runner("torch", step, lambda: datasheet_peak_flops(torch.cuda.get_device_name()),
                      lambda: torch.cuda.max_memory_allocated() / 2**30)
    return Runner("torch", step, peak_flops_per_device, peak_host_gib)


def time_steps(runner: Runner, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        runner.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        runner.step()
        times.append(time.perf_counter() - start)
    return times


def report(runner: Runner, config: LlamaConfig, batch_size: int,
           step_seconds: list[float]) -> dict:
    seconds = float(np.median(step_seconds))
    tokens = batch_size * config.seq_len
    memory = runner.peak_memory_gib()  # before measuring a CPU's peak adds XLA's buffers
    result = {"framework": runner.name, "step_seconds": seconds,
              "step_seconds_range": [min(step_seconds), max(step_seconds)],
              "tokens_per_sec": tokens / seconds,
              "mfu": config.flops_per_token() * tokens / seconds / runner.peak_flops(),
              "peak_memory_gib": memory}
    print(f"{runner.name:>6}: {result['tokens_per_sec']:,.0f} tokens/s | step "
          f"{1000 * seconds:.1f} ms (median of {len(step_seconds)}, "
          f"{1000 * min(step_seconds):.0f}-{1000 * max(step_seconds):.0f}) | MFU "
          f"{100 * result['mfu']:.1f}% | peak memory {result['peak_memory_gib']:.2f} GiB",
          flush=True)
    return result


def run_pairs(argv: list[str], pairs: int) -> list[dict]:
    """Runs this script once per framework per pair, each in its own process, alternating."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(pairs):
            for framework in ("lmlib", "torch"):
                out = os.path.join(tmp, f"{pair}-{framework}.json")
                subprocess.run([sys.executable, __file__, *argv, f"--framework={framework}",
                                f"--json={out}"], check=True)
                with open(out) as f:
                    results.extend(json.load(f)["results"])
    ratios = [a["tokens_per_sec"] / b["tokens_per_sec"]
              for a, b in zip(results[::2], results[1::2])]
    print(f"lmlib/torch tokens/s, pair by pair: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {np.median(ratios):.2f}x", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=0, help="0 = the preset's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--framework", choices=["lmlib", "torch", "both"], default="both")
    parser.add_argument("--remat", default="", help="lmlib remat policy (none|minimal|full)")
    parser.add_argument("--attention", default="", help="lmlib attention (auto|xla|cudnn)")
    parser.add_argument("--unroll", action="store_true", help="lmlib: no layer loop")
    parser.add_argument("--loss_chunk_len", type=int, default=TrainerConfig.loss_chunk_len,
                        help="lmlib: positions per cross-entropy chunk (the demo trains with 32)")
    parser.add_argument("--precision", choices=["bf16", "f32"], default="bf16",
                        help="compute dtype on both sides (weights stay float32)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--pairs", type=int, default=3, help="with --framework=both")
    args = parser.parse_args()
    if args.framework == "both":
        passed = [a for a in sys.argv[1:]
                  if not a.startswith(("--framework", "--json", "--pairs"))]
        results = run_pairs(passed, args.pairs)
    else:
        results = [run_one(args)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                       "results": results}, f, indent=1)


def run_one(args: argparse.Namespace) -> dict:
    xla_flags.set_defaults()  # lmlib's, as lmlib.main sets them
    config = PRESETS[args.model]()
    overrides = {"seq_len": args.seq_len} if args.seq_len else {}
    if args.remat:
        overrides["remat"] = args.remat
    if args.attention:
        overrides["attention_impl"] = args.attention
    if args.unroll:
        overrides["unroll_layers"] = True
    config = LlamaConfig(**{**config.__dict__, **overrides})
    bf16 = args.precision == "bf16"
    if args.framework == "lmlib":
        runner = lmlib_runner(config, args.batch_size, bf16, args.steps + args.warmup,
                              args.loss_chunk_len)
    else:
        runner = torch_runner(config, args.batch_size, bf16)
    return report(runner, config, args.batch_size, time_steps(runner, args.steps, args.warmup))

if __name__ == "__main__":
    main()
