"""What each --mode does, given a resolved config: the thin layer between main and the Trainer."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import jax
from etils import epath
from jax.experimental import multihost_utils

from lmlib import experiment, hf, multiple_choice
from lmlib.errors import ConfigError, one_line
from lmlib.experiment import ExperimentConfig
from lmlib.generate import Sampler, SamplingConfig
from lmlib.models import num_params
from lmlib.train import checkpoint as ckpt
from lmlib.train.loop import Trainer, eval_checkpoint
from lmlib.train.metrics import StagedDirectory, TensorBoardWriter


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


def hf_export_hook(trainer: Trainer, root: epath.Path):
    """A hook that writes the current parameters as a Hugging Face directory per step."""
    export = trainer.config.trainer.hf_export
    tokenizer = trainer.data.tokenizer

    def write(step: int, state) -> None:
        # Every process takes part in gathering the sharded parameters (one tensor at a time,
        # so a device holds at most one whole tensor more); process 0 alone writes them.
        params = jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True),
                              state.params)
        if jax.process_index() != 0:
            return
        out = StagedDirectory(root / f"step_{step:06d}")  # hf writes local files only
        try:  # a failed export is reported; it never stops a run whose checkpoints are fine
            hf.save_hf(out.local, trainer.config.model, params,
                       dtype=export.dtype, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
            hf.save_tokenizer(out.local, tokenizer)
        except OSError as e:
            print(f"could not export step {step} to {out.remote} ({one_line(e)}); the next "
                  "export tries again", flush=True)
            return
        if out.close():
            print(f"exported a Hugging Face model to {out.remote}", flush=True)

    return write


def samples_hook(trainer: Trainer):
    """A hook that samples the configured prompts from the current parameters."""
    samples = trainer.config.trainer.samples
    tokenizer = trainer.data.tokenizer
    sampling = SamplingConfig(max_new_tokens=samples.max_new_tokens,
                              temperature=samples.temperature, eos_id=tokenizer.eos_id)
    prompts = samples.prompt_list
    encoded = [tokenizer.with_bos(tokenizer.encode(p)) for p in prompts]
    sampler = Sampler(trainer.config.model, params=None)

    def sample(step: int, state) -> None:
        sampler.params = state.params
        with jax.set_mesh(trainer.mesh):  # sample on the training mesh, params where they are
            completions = sampler.generate(encoded, sampling)
        trainer.logger.samples(step, [{"prompt": p, "completion": tokenizer.decode(c)}
                                      for p, c in zip(prompts, completions)])

    return sample


def read_tasks(config: ExperimentConfig) -> dict[str, list[multiple_choice.Question]]:
    """The multiple-choice tasks by name, read (and so checked) before anything compiles."""
    tasks = {}
    for path in config.trainer.multiple_choice.task_list:
        if not Path(path).is_file():
            raise ConfigError(f"trainer.multiple_choice.tasks: no such file: {path}")
        tasks[Path(path).stem] = multiple_choice.read_task(path)
    return tasks


def multiple_choice_metrics(trainer: Trainer, tasks: dict[str, list], params
                            ) -> dict[str, float]:
    """lm-eval-style accuracy on each task: {"mc/<task>/acc": ..., ...}."""
    loglik = multiple_choice.make_loglik_fn(trainer.layout.graphdef, params)
    metrics = {}
    for name, questions in tasks.items():
        result = multiple_choice.evaluate_task(questions, trainer.data.tokenizer, loglik)
        metrics.update({f"mc/{name}/{k}": v for k, v in result.items()})
    return metrics


def train(config: ExperimentConfig, workdir: str | None) -> None:
    config = experiment.with_tokenizer(config)
    tasks = read_tasks(config)
    export = config.trainer.hf_export
    if export.every_steps:
        if importlib.util.find_spec("transformers") is None:
            raise ConfigError("trainer.hf_export writes tokenizer files with transformers: "
                              "pip install 'lmlib[hf]'")
        if not (export.path or workdir):
            raise ConfigError("trainer.hf_export needs trainer.hf_export.path or --workdir")
    trainer = Trainer(config, workdir)
    _save_config(config, workdir)
    if export.every_steps:
        root = epath.Path(export.path or epath.Path(workdir) / "hf")
        trainer.add_hook(hf_export_hook(trainer, root), export.every_steps)
    if config.trainer.multiple_choice.every_steps:
        trainer.add_hook(lambda step, state: multiple_choice_metrics(trainer, tasks, state.params),
                         config.trainer.multiple_choice.every_steps)
    if config.trainer.samples.every_steps:
        trainer.add_hook(samples_hook(trainer), config.trainer.samples.every_steps)
    print(f"{config.name}: {num_params(config.model):,} parameters on "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)
    trainer.train()


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
    config = experiment.with_tokenizer(trained_model(config, workdir))
    tasks = read_tasks(config)
    trainer = Trainer(config, workdir)
    params, step = trainer.eval_params()
    metrics = {**trainer.evaluate(params), **multiple_choice_metrics(trainer, tasks, params)}
    print(f"eval loss {metrics['eval/loss']:.4f} | perplexity {metrics['eval/perplexity']:.2f} "
          f"| bits per byte {metrics['eval/bits_per_byte']:.4f} | "
          f"{metrics['eval/tokens']:,.0f} tokens", flush=True)
    for name, value in metrics.items():
        if name.startswith("mc/"):
            print(f"{name} {value:.4f}", flush=True)
    if workdir and jax.process_index() == 0:
        out = StagedDirectory(epath.Path(workdir) / "eval")
        (out.local / f"step_{step:06d}.json").write_text(json.dumps(
            {"step": step, "config": ckpt.config_json(config), "metrics": metrics}, indent=1))
        writer = TensorBoardWriter(out.local / "tensorboard")
        writer.scalars(step, metrics)
        writer.close()
        out.close()
        print(f"wrote {out.remote}/step_{step:06d}.json", flush=True)
    return metrics


def dry_run(config: ExperimentConfig) -> None:
    """Compiles one step from shapes alone (no data read, no weights loaded); reports memory
    per device."""
    trainer = Trainer(experiment.with_tokenizer(config, download=False))
    start = time.monotonic()
    compiled = trainer.compile()
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
