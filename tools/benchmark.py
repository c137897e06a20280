"""Training-step throughput of lmlib against the same model in transformers + torch.

    python tools/benchmark.py --model=demo --framework=both
    python tools/benchmark.py --model=llama_1b --batch_size=8 --framework=lmlib

Both sides train the same Llama (lmlib.hf maps the config) with AdamW on random tokens of the
same batch and sequence length, bf16 compute over float32 weights (torch: autocast; --precision
f32 for float32 compute on both sides), and
report tokens/s, step time, MFU (model FLOPs including attention, lmlib's formula for both)
and peak memory (device memory on an accelerator, process RSS on a CPU). The data pipeline is
left out on purpose: this measures the step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from lmlib import xla_flags
from lmlib.models import LlamaConfig

PRESETS = {"demo": LlamaConfig.demo, "llama_1b": LlamaConfig.llama_1b}


def peak_host_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def report(framework: str, config: LlamaConfig, batch_size: int, step_seconds: list[float],
           peak_flops: float, peak_memory_gib: float) -> dict:
    seconds = float(np.median(step_seconds))
    tokens = batch_size * config.seq_len
    result = {"framework": framework, "step_seconds": seconds, "tokens_per_sec": tokens / seconds,
              "mfu": config.flops_per_token() * tokens / seconds / peak_flops,
              "peak_memory_gib": peak_memory_gib}
    print(f"{framework:>6}: {result['tokens_per_sec']:,.0f} tokens/s | step "
          f"{1000 * seconds:.1f} ms (median of {len(step_seconds)}) | MFU "
          f"{100 * result['mfu']:.1f}% | peak memory {peak_memory_gib:.2f} GiB", flush=True)
    return result


def bench_lmlib(config: LlamaConfig, batch_size: int, steps: int, warmup: int,
                bf16: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from lmlib.mesh import MeshConfig, batch_sharding, make_mesh
    from lmlib.train.metrics import peak_flops_per_device
    from lmlib.train.optimizer import AdamW
    from lmlib.train.state import init_state, state_layout
    from lmlib.train.step import StepConfig, make_train_step

    mesh = make_mesh(MeshConfig())
    adamw = AdamW()
    optimizer = adamw.make(steps + warmup)
    layout = state_layout(config, optimizer, mesh, seed=0)
    step_fn = jax.jit(
        make_train_step(layout.graphdef, optimizer, adamw.schedule(steps + warmup),
                        StepConfig(jnp.bfloat16 if bf16 else jnp.float32, num_microbatches=1,
                                   loss_chunk_len=512)),
        in_shardings=(layout.shardings, batch_sharding(mesh)),
        out_shardings=(layout.shardings, None), donate_argnums=0)
    shape = (batch_size, config.seq_len)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, shape, dtype=np.int32)
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
             "positions": np.broadcast_to(np.arange(config.seq_len, dtype=np.int32), shape),
             "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}
    batch = jax.device_put(batch, batch_sharding(mesh))
    state = init_state(layout)
    times = []
    with jax.set_mesh(mesh):
        for i in range(warmup + steps):
            start = time.perf_counter()
            state, metrics = step_fn(state, batch)
            jax.block_until_ready(metrics)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    memory = stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats \
        else peak_host_gib()
    return report("lmlib", config, batch_size, times,
                  peak_flops_per_device() * jax.device_count(), memory)


def bench_torch(config: LlamaConfig, batch_size: int, steps: int, warmup: int,
                bf16: bool) -> dict:
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
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if cuda:
        name = torch.cuda.get_device_name().lower()
        peak = next((f for k, f in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0]))
                     if k in name), float("nan"))
        memory = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak, memory = peak_flops_per_device(), peak_host_gib()
    return report("torch", config, batch_size, times, peak, memory)


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
    runs = {"lmlib": bench_lmlib, "torch": bench_torch}
    names = list(runs) if args.framework == "both" else [args.framework]
    results = [runs[n](config, args.batch_size, args.steps, args.warmup, args.precision == "bf16")
               for n in names]
    if len(results) == 2:
        ratio = results[0]["tokens_per_sec"] / results[1]["tokens_per_sec"]
        print(f"lmlib/torch tokens/s: {ratio:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "xla_flags": os.environ["XLA_FLAGS"],
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
