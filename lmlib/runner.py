"""What each --mode does, given a resolved config: the thin layer between main and the Trainer."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
from etils import epath

from lmlib import experiment
from lmlib.config import ExperimentConfig
from lmlib.errors import ConfigError
from lmlib.hooks.eval_loss import EvalLoss
from lmlib.hooks.multiple_choice import MultipleChoice
from lmlib.models import num_params
from lmlib.train import checkpoint as ckpt
from lmlib.train.loop import Trainer
from lmlib.train.metrics import StagedDirectory, TensorBoardWriter
from lmlib.train.params import eval_checkpoint, eval_params
from lmlib.train.run import Run


def list_experiments() -> str:
    experiments = experiment.registry()
    width = max(map(len, experiments))
    return "\n".join(f"{name:<{width}}  {experiment.description(cls)}"
                     for name, cls in experiments.items())


def show(config: ExperimentConfig) -> str:
    """The resolved tree and the numbers derived from it, computed from shapes alone."""
    lines = [f"{key}: {value}" for key, value in experiment.flatten(config).items()]
    t, m = config.trainer, config.model
    microbatch = t.microbatch_size or t.batch_size
    flops_per_token = m.flops_per_token()
    max_seq_len = getattr(m, "max_seq_len", 0)
    lines += [
        "",
        f"model: {type(m).__name__}"
        + (f"; weights from {config.init_from}, read when training starts"
           if config.init_from else ""),
        f"parameters: {num_params(m):,}",
        f"tokens per step: {t.batch_size * m.seq_len:,} ({t.batch_size} x {m.seq_len})",
        f"microbatches: {t.num_microbatches} of {microbatch} sequences "
        f"(accumulation steps: {t.num_microbatches})",
        f"FLOPs per token: {flops_per_token:,} (6N + 12LHT, training)",
        f"FLOPs per step: {flops_per_token * t.batch_size * m.seq_len:.3e}",
        f"total tokens: {t.num_train_steps * t.batch_size * m.seq_len:,}",
        *([f"training rows: {m.seq_len:,} tokens (the model supports {max_seq_len:,}: "
           "--set model.seq_len=N trains on longer rows)"] if max_seq_len > m.seq_len else []),
        "eval: " + (f"the first {t.eval_batches} batches of the eval split" if t.eval_batches
                    else "the whole eval split") + f", every {t.eval_every} steps and at the end",
        f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, mesh "
        + " x ".join(f"{k}={v}" for k, v in t.mesh.resolve(jax.device_count()).items()),
    ]
    return "\n".join(lines)


def _save_config(config: ExperimentConfig, workdir: str | None) -> None:
    if workdir and jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / "config.json").write_text(
            json.dumps(dataclasses.asdict(config), indent=1, default=str))


def train(config: ExperimentConfig, workdir: str | None) -> None:
    run = Run(experiment.with_tokenizer(config), workdir)
    _save_config(run.config, workdir)
    print(f"{config.name}: {num_params(config.model):,} parameters on "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)
    Trainer(run).train()


def trained_model(config: ExperimentConfig, workdir: str | None) -> ExperimentConfig:
    """The config with the model the evaluated checkpoint was trained as (its compute options
    kept from `config`): a run trained with --set model.num_layers=8 is evaluated without
    repeating the flag."""
    source = eval_checkpoint(config, workdir)
    if not source:
        return config
    saved = ckpt.model_config(ckpt.read_meta(source))
    if type(saved) is not type(config.model):
        raise ConfigError(f"{source} holds a {type(saved).__name__}, not the experiment's "
                          f"{type(config.model).__name__}")
    compute = {key.split(".", 1)[1] for key in ckpt.MODEL_COMPUTE_OPTIONS}
    model = dataclasses.replace(saved, **{k: getattr(config.model, k) for k in compute})
    changed = [f"model.{f.name}={getattr(model, f.name)!r}" for f in dataclasses.fields(model)
               if getattr(model, f.name) != getattr(config.model, f.name)]
    if changed:
        print(f"evaluating {source} as it was trained: {', '.join(changed)}", flush=True)
    return dataclasses.replace(config, model=model)


def evaluate(config: ExperimentConfig, workdir: str | None) -> dict[str, float]:
    """Scores the run's parameters; the results go to WORKDIR/eval/step_NNNNNN.json and their
    own TensorBoard run (WORKDIR/eval/tensorboard), never into the training run's records."""
    run = Run(experiment.with_tokenizer(trained_model(config, workdir)), workdir)
    choices = MultipleChoice(run)  # reads the task files before anything compiles
    params, step = eval_params(run)
    metrics = {**EvalLoss(run).evaluate(params), **choices.score(params)}
    print(f"eval loss {metrics['eval/loss']:.4f} | perplexity {metrics['eval/perplexity']:.2f} "
          f"| bits per byte {metrics['eval/bits_per_byte']:.4f} | "
          f"{metrics['eval/tokens']:,.0f} tokens", flush=True)
    for name, value in metrics.items():
        if name.startswith("mc/"):
            print(f"{name} {value:.4f}", flush=True)
    if workdir and jax.process_index() == 0:
        out = StagedDirectory(epath.Path(workdir) / "eval")
        (out.local / f"step_{step:06d}.json").write_text(json.dumps(
            {"step": step, "config": ckpt.config_json(run.config), "metrics": metrics},
            indent=1))
        writer = TensorBoardWriter(out.local / "tensorboard")
        writer.scalars(step, metrics)
        writer.close()
        out.close()
        print(f"wrote {out.remote}/step_{step:06d}.json", flush=True)
    return metrics


def dry_run(config: ExperimentConfig) -> None:
    """Compiles one step from shapes alone (no data read, no weights loaded); reports memory
    per device."""
    run = Run(experiment.with_tokenizer(config, download=False))
    start = time.monotonic()
    compiled = run.compile()
    seconds = time.monotonic() - start
    memory = compiled.memory_analysis()
    gib = 2 ** 30
    arguments = memory.argument_size_in_bytes / gib
    temporaries = memory.temp_size_in_bytes / gib
    outputs = (memory.output_size_in_bytes - memory.alias_size_in_bytes) / gib
    total = arguments + temporaries + outputs
    print(f"dry run: compiled one step of {config.name} in {seconds:.1f}s; memory per device: "
          f"state+batch {arguments:.3f} GiB, temporaries {temporaries:.3f} GiB, "
          f"outputs {outputs:.3f} GiB, total {total:.3f} GiB", flush=True)
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if limit:  # accelerators report their memory; a CPU host does not
        verdict = "fits" if total * gib <= limit else "does NOT fit"
        print(f"dry run: {verdict} in the {limit / gib:.1f} GiB of each device", flush=True)
