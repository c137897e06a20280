"""Training-step throughput of lmlib against the same model in transformers + torch.

    python tools/benchmark.py --model=demo --framework=both
    python tools/benchmark.py --model=llama_1b --batch_size=8 --framework=lmlib

Both sides train the same Llama (lmlib.hf maps the config) with AdamW on random tokens of the
same batch and sequence length, bf16 compute over float32 weights (torch: autocast; --precision
f32 for float32 compute on both sides), and
report tokens/s, step time, MFU (model FLOPs including attention, lmlib's formula for both)
and peak memory (device memory on an accelerator, process RSS on a CPU: run one framework at a
time for it). With --framework=both the two run in one process, their steps alternating, so a
noisy machine slows both alike. The data pipeline is left out on purpose: this measures the step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from collections.abc import Callable

import numpy as np

from lmlib import xla_flags
from lmlib.models import LlamaConfig
from lmlib.train.loop import TrainerConfig

PRESETS = {"demo": LlamaConfig.demo, "llama_1b": LlamaConfig.llama_1b}


def peak_host_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclasses.dataclass
class Runner:
    """One framework's training step, ready to run: `step()` runs one step to completion."""
    name: str
    step: Callable[[], None]
    peak_flops: float
    peak_memory_gib: Callable[[], float]
    host_memory: bool  # peak_memory_gib is the process's RSS (a CPU), not a device's


def lmlib_runner(config: LlamaConfig, batch_size: int, bf16: bool, total_steps: int,
                 loss_chunk_len: int) -> Runner:
    import jax
    import jax.numpy as jnp

    from lmlib.mesh import MeshConfig, batch_sharding, make_mesh
    from lmlib.train.metrics import peak_flops_per_device
    from lmlib.train.optimizer import AdamW
    from lmlib.train.state import init_state, state_layout
    from lmlib.train.step import StepConfig, make_train_step

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
    shape = (batch_size, config.seq_len)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, shape, dtype=np.int32)
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
             "positions": np.broadcast_to(np.arange(config.seq_len, dtype=np.int32), shape),
             "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}
    batch = jax.device_put(batch, batch_sharding(mesh))
    state = init_state(layout)

    def step() -> None:
        nonlocal state
        with jax.set_mesh(mesh):
            state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics)

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return Runner("lmlib", step, peak_flops_per_device() * jax.device_count(),
                      lambda: jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30, False)
    return Runner("lmlib", step, peak_flops_per_device() * jax.device_count(), peak_host_gib,
                  True)


def torch_runner(config: LlamaConfig, batch_size: int, bf16: bool) -> Runner:
    import torch
    import transformers

    from lmlib import hf
    from lmlib.train.metrics import PEAK_FLOPS, peak_flops_per_device

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
        name = torch.cuda.get_device_name().lower()
        peak = next((f for k, f in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0]))
                     if k in name), float("nan"))
        return Runner("torch", step, peak, lambda: torch.cuda.max_memory_allocated() / 2**30,
                      False)
    return Runner("torch", step, peak_flops_per_device(), peak_host_gib, True)


def time_steps(runners: list[Runner], steps: int, warmup: int) -> dict[str, list[float]]:
    """Each runner's step times. With several runners the steps alternate (A B A B ...), so a
    machine whose speed drifts slows both alike and their ratio holds."""
    for runner in runners:
        for _ in range(warmup):
            runner.step()
    times: dict[str, list[float]] = {runner.name: [] for runner in runners}
    for _ in range(steps):
        for runner in runners:
            start = time.perf_counter()
            runner.step()
            times[runner.name].append(time.perf_counter() - start)
    return times


def report(runner: Runner, config: LlamaConfig, batch_size: int, step_seconds: list[float],
           shared_process: bool) -> dict:
    seconds = float(np.median(step_seconds))
    tokens = batch_size * config.seq_len
    # Host RSS is the whole process's: with two frameworks in it, neither's alone.
    memory = None if shared_process else runner.peak_memory_gib()
    result = {"framework": runner.name, "step_seconds": seconds,
              "step_seconds_range": [min(step_seconds), max(step_seconds)],
              "tokens_per_sec": tokens / seconds,
              "mfu": config.flops_per_token() * tokens / seconds / runner.peak_flops,
              "peak_memory_gib": memory}
    print(f"{runner.name:>6}: {result['tokens_per_sec']:,.0f} tokens/s | step "
          f"{1000 * seconds:.1f} ms (median of {len(step_seconds)}, "
          f"{1000 * min(step_seconds):.0f}-{1000 * max(step_seconds):.0f}) | MFU "
          f"{100 * result['mfu']:.1f}% | peak memory "
          f"{'(one process for both)' if memory is None else f'{memory:.2f} GiB'}", flush=True)
    return result


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
    args = parser.parse_args()
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
    if args.framework == "both":  # JAX would take 75% of a GPU's memory up front
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    runners = []
    if args.framework in ("lmlib", "both"):
        runners.append(lmlib_runner(config, args.batch_size, bf16, args.steps + args.warmup,
                                    args.loss_chunk_len))
    if args.framework in ("torch", "both"):
        runners.append(torch_runner(config, args.batch_size, bf16))
    times = time_steps(runners, args.steps, args.warmup)
    shared = len(runners) > 1 and any(r.host_memory for r in runners)
    results = [report(r, config, args.batch_size, times[r.name], shared) for r in runners]
    if len(results) == 2:
        ratios = [a / b for a, b in zip(times["torch"], times["lmlib"])]
        ratio = results[0]["tokens_per_sec"] / results[1]["tokens_per_sec"]
        print(f"lmlib/torch tokens/s: {ratio:.2f}x (step pairs: median {np.median(ratios):.2f}x, "
              f"{min(ratios):.2f}-{max(ratios):.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "xla_flags": os.environ["XLA_FLAGS"],
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
