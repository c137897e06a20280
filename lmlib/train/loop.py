"""The Trainer: builds a run from its config tree, then loops over train steps with hooks."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lmlib import hf
from lmlib import distributed
from lmlib.data.pretrain import (EMPTY_SPLIT, PreparedData, PretrainData, prepare_data,
                                 restore_iterator_state)
from lmlib.data.supervised import SupervisedExamples, prepare_supervised
from lmlib.errors import ConfigError, TrainingDiverged
from lmlib.mesh import MeshConfig, batch_sharding, make_mesh
from lmlib.train import checkpoint as ckpt
from lmlib.train.checkpoint import CheckpointConfig, Checkpointer
from lmlib.train.metrics import MetricsLogger, peak_flops_per_device
from lmlib.train import run_record
from lmlib.train.preemption import Preemption
from lmlib.train.state import (TrainState, abstract_state, init_state, state_bytes,
                               state_layout)
from lmlib.train.step import StepConfig, make_eval_step, make_train_step

if TYPE_CHECKING:
    from lmlib.experiment import ExperimentConfig
    from lmlib.models import ModelConfig

DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class HFExportConfig:
    every_steps: int = 0  # write a Hugging Face directory every N steps and at the end; 0 = never
    path: str = ""  # where: PATH/step_000100/...; "" = workdir/hf
    dtype: str = "bfloat16"  # float32 | bfloat16


@dataclasses.dataclass(frozen=True)
class SamplesConfig:
    every_steps: int = 0  # sample completions every N steps and at the end; 0 = never
    prompts: str = "def |class |import "  # prompts separated by '|' (one string, for --set)
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy

    @property
    def prompt_list(self) -> list[str]:
        return [p for p in self.prompts.split("|") if p]


@dataclasses.dataclass(frozen=True)
class MultipleChoiceConfig:
    tasks: str = ""  # comma-separated JSONL task files (lmlib.multiple_choice), scored in eval
    every_steps: int = 0  # also during training, every N steps and at the end; 0 = never

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    num_train_steps: int = 1000
    batch_size: int = 32  # global, in sequences of model.seq_len tokens
    microbatch_size: int = 0  # sequences per gradient-accumulation step; 0 = batch_size
    log_every: int = 10
    eval_every: int = 200  # also at the last step
    # 0: the whole eval split, the same loss at any batch size; N: its first N batches (a
    # quick look, which depends on batch_size).
    eval_batches: int = 0
    precision: str = "p=f32,c=bf16"  # parameter and compute dtypes
    seed: int = 0  # parameters and data order
    loss_chunk_len: int = 128  # positions per cross-entropy chunk: bounds the logits' memory
    peak_flops_per_device: float = 0.0  # for MFU; 0 = the data sheet (GPU/TPU), measured (CPU)
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    hf_export: HFExportConfig = HFExportConfig()
    samples: SamplesConfig = SamplesConfig()
    multiple_choice: MultipleChoiceConfig = MultipleChoiceConfig()

    def validate(self) -> None:
        for name in ("num_train_steps", "batch_size", "log_every", "eval_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"trainer.{name} must be positive, got {getattr(self, name)}")
        if self.microbatch_size < 0 or self.eval_batches < 0:
            raise ConfigError("trainer.microbatch_size and trainer.eval_batches must be >= 0")
        self.dtypes  # validates precision

    @property
    def dtypes(self) -> tuple[jnp.dtype, jnp.dtype]:
        """(parameter dtype, compute dtype) from `precision`."""
        parts = dict(p.split("=", 1) for p in self.precision.split(",") if "=" in p)
        if set(parts) != {"p", "c"} or parts["c"] not in DTYPES or parts["p"] != "f32":
            raise ConfigError(f"trainer.precision={self.precision!r}: expected p=f32,c=bf16 or "
                              "p=f32,c=f32 (parameters are kept in float32)")
        return DTYPES[parts["p"]], DTYPES[parts["c"]]

    @property
    def num_microbatches(self) -> int:
        return self.batch_size // (self.microbatch_size or self.batch_size)

    def check_fits(self, model: ModelConfig, num_devices: int | None = None,
                   num_processes: int | None = None) -> None:
        """Raises a ConfigError when the batch does not split over the mesh and microbatches
        (of this machine's devices and processes, or of those given)."""
        num_devices = num_devices or jax.device_count()
        num_processes = num_processes or jax.process_count()
        sizes = self.mesh.resolve(num_devices)
        batch_ways = sizes["data"] * sizes["fsdp"]
        microbatch = self.microbatch_size or self.batch_size
        if self.batch_size % microbatch:
            raise ConfigError(f"trainer.batch_size={self.batch_size} is not a multiple of "
                              f"trainer.microbatch_size={microbatch}")
        if microbatch % batch_ways:
            raise ConfigError(
                f"trainer.microbatch_size={microbatch} (or batch_size) does not split over "
                f"data x fsdp = {sizes['data']} x {sizes['fsdp']} = {batch_ways} devices")
        if self.batch_size % num_processes:
            raise ConfigError(f"trainer.batch_size={self.batch_size} does not split over "
                              f"{num_processes} processes")
        if self.loss_chunk_len and model.seq_len % self.loss_chunk_len and \
                self.loss_chunk_len < model.seq_len:
            raise ConfigError(f"model.seq_len={model.seq_len} is not a multiple of "
                              f"trainer.loss_chunk_len={self.loss_chunk_len}")


@dataclasses.dataclass
class Hook:
    """fn(step, state) -> metrics to log (or None), called every `every` steps and at the end."""

    fn: Callable[[int, TrainState], dict | None]
    every: int


def checkpoint_dir(workdir: str | Path) -> epath.Path:
    return ckpt.absolute(workdir) / "checkpoints"


def eval_checkpoint(config: ExperimentConfig, workdir: str | Path | None) -> str | None:
    """The checkpoint --mode=eval scores: trainer.checkpoint.load_from, else the workdir's
    newest, else None."""
    load_from = config.trainer.checkpoint.load_from
    if not load_from and workdir and Checkpointer.exists(checkpoint_dir(workdir)):
        load_from = str(checkpoint_dir(workdir))
    return load_from or None


class Trainer:
    """One run: mesh, data, compiled steps and state. `train()` is the loop."""

    def __init__(self, config: ExperimentConfig, workdir: str | Path | None = None):
        """`config` is resolved and bound to its tokenizer (experiment.with_tokenizer)."""
        self.config, self.workdir = config, workdir
        trainer, model = config.trainer, config.model
        trainer.check_fits(model)
        self.mesh = make_mesh(trainer.mesh)
        # A workdir that a run started in holds that run's tokenizer, which it keeps.
        self.run = run_record.read(workdir)
        self.optimizer = config.optimizer.make(trainer.num_train_steps)
        self.layout = state_layout(model, self.optimizer, self.mesh, trainer.seed)
        step_config = StepConfig(compute_dtype=trainer.dtypes[1],
                                 num_microbatches=trainer.num_microbatches,
                                 loss_chunk_len=trainer.loss_chunk_len)
        self.batch_sharding = batch_sharding(self.mesh)
        with jax.set_mesh(self.mesh):
            self._train_step = jax.jit(
                make_train_step(self.layout.graphdef, self.optimizer,
                                config.optimizer.schedule(trainer.num_train_steps), step_config),
                in_shardings=(self.layout.shardings, self.batch_sharding),
                out_shardings=(self.layout.shardings, None), donate_argnums=0)
            self._eval_step = jax.jit(
                make_eval_step(self.layout.graphdef, step_config),
                in_shardings=(self.layout.shardings.params, self.batch_sharding))
        self.tokens_per_step = trainer.batch_size * model.seq_len
        self.flops_per_step = model.flops_per_token() * self.tokens_per_step
        peak = trainer.peak_flops_per_device or peak_flops_per_device()
        self.peak_flops = peak * jax.device_count()
        self.hooks: list[Hook] = []
        self._eval_bytes: int | None = None

    @functools.cached_property
    def data(self) -> PreparedData | SupervisedExamples:
        """The prepared data (tokenized on first use), with the run's own tokenizer when the
        workdir has one and the config would otherwise train one."""
        config, run = self.config, self.run
        tokenizer_path = (run_record.tokenizer_path(self.workdir, run)
                          if run and not config.data.tokenizer.path else None)
        data = (prepare_data(config.data, tokenizer_path) if isinstance(config.data, PretrainData)
                else prepare_supervised(config.data, config.model.seq_len, tokenizer_path))
        if run and data.tokenizer.fingerprint != run.tokenizer_fingerprint:
            raise ConfigError(
                f"{self.workdir} was trained with another tokenizer ({run.tokenizer_fingerprint} "
                f"in {run_record.RECORD}; data.tokenizer.path={config.data.tokenizer.path} is "
                f"{data.tokenizer.fingerprint}); a run never swaps its tokenizer. To train these "
                "weights on with it, start a new --workdir with "
                f"--set trainer.checkpoint.load_from={self.workdir}")
        if run and data.fingerprint != run.data_fingerprint:
            print(f"data: the inputs changed since this run started ({run.data_fingerprint} -> "
                  f"{data.fingerprint}); continuing with the run's own tokenizer on the current "
                  "inputs (the data order from here on differs from an uninterrupted run)",
                  flush=True)
        if data.tokenizer.vocab_size > config.model.vocab_size:
            raise ConfigError(f"the tokenizer has {data.tokenizer.vocab_size} tokens but "
                              f"model.vocab_size={config.model.vocab_size}")
        return data

    def record_run(self) -> None:
        """Stores the run's identity (tokenizer, data fingerprint) in a new workdir."""
        if self.workdir and not self.run:
            self.run = run_record.write(self.workdir, self.data.tokenizer, self.data.fingerprint)

    # ------------------------------------------------------------------ building blocks

    def add_hook(self, fn: Callable[[int, TrainState], dict | None], every: int) -> None:
        self.hooks.append(Hook(fn, every))

    def _abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (self.config.trainer.batch_size, self.config.model.seq_len)
        dtypes = {"tokens": jnp.int32, "targets": jnp.int32, "positions": jnp.int32,
                  "segment_ids": jnp.int32, "weights": jnp.float32}
        return {k: jax.ShapeDtypeStruct(shape, d, sharding=self.batch_sharding)
                for k, d in dtypes.items()}

    def compile(self):
        """AOT-compiles the train step from shapes alone (nothing allocated); returns it."""
        with jax.set_mesh(self.mesh):
            return self._train_step.lower(abstract_state(self.layout),
                                          self._abstract_batch()).compile()

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> one global array per field, sharded over the batch axes."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                for k, v in local.items()}

    def _dataset(self, split: str, shuffle: bool, repeat: bool):
        trainer = self.config.trainer
        return self.data.dataset(
            split, seq_len=self.config.model.seq_len,
            batch_size=trainer.batch_size // jax.process_count(),
            seed=trainer.seed, shuffle=shuffle, repeat=repeat,
            process_index=jax.process_index(), process_count=jax.process_count())

    def train_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._dataset("train", shuffle=True, repeat=True))

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's block of each eval batch: the whole split (the last batch filled
        with rows that weigh nothing), or its first `trainer.eval_batches` batches."""
        batches = self._dataset("eval", shuffle=False, repeat=False)
        return itertools.islice(batches, self.config.trainer.eval_batches or None)

    def evaluate(self, params) -> dict[str, float]:
        """Token-weighted mean loss over the eval split: by default all of it, so the number
        is the same at any batch size and on any number of processes."""
        loss_sum = weight_sum = 0.0
        count_bytes, num_bytes = self._eval_bytes is None, 0
        with jax.set_mesh(self.mesh):
            for batch in self.eval_batches():
                loss, weight = self._eval_step(params, self.global_batch(batch))
                loss_sum, weight_sum = loss_sum + float(loss), weight_sum + float(weight)
                num_bytes += self._target_bytes(batch) if count_bytes else 0
        if count_bytes:  # each process decoded its own rows
            self._eval_bytes = sum(distributed.allgather_json(num_bytes))
        if not weight_sum:
            raise ConfigError("the eval split has no tokens to score")
        loss = loss_sum / weight_sum
        return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 700.0)),
                # Comparable across tokenizers: total nats over the UTF-8 bytes they encode.
                "eval/bits_per_byte": loss_sum / (self._eval_bytes * math.log(2)),
                "eval/tokens": weight_sum}

    def _target_bytes(self, batch: dict[str, np.ndarray]) -> int:
        """UTF-8 bytes of the text the weighted targets spell, document by document."""
        total = 0
        for targets, weights, segments in zip(batch["targets"], batch["weights"],
                                              batch["segment_ids"]):
            for segment in np.unique(segments[weights > 0]):
                ids = targets[(segments == segment) & (weights > 0)]
                total += len(self.data.tokenizer.decode(ids).encode())
        return total

    # ------------------------------------------------------------------ state

    def check_params(self, path: str | Path) -> None:
        """Refuses a checkpoint (a run's, or an imported one) whose model differs."""
        saved = ckpt.read_meta(path)["config"]
        current = ckpt.config_json(self.config)
        ckpt.check_resumable({"model": saved["model"]}, {"model": current["model"]},
                             allowed=ckpt.MODEL_COMPUTE_OPTIONS, what="model")

    def load_params(self, path: str | Path):
        """Parameters of any checkpoint (a run's, or an imported one), placed on this mesh."""
        self.check_params(path)
        print(f"loading parameters from {path}", flush=True)
        return ckpt.restore_params(path, abstract_state(self.layout).params)

    def resume_meta(self) -> dict | None:
        """The meta of the workdir's newest checkpoint, checked against this config (before
        anything compiles), or None where there is none to resume."""
        if not self.workdir or not Checkpointer.exists(self.checkpoint_dir):
            return None
        meta = ckpt.read_meta(self.checkpoint_dir)
        try:
            ckpt.check_resumable(meta["config"], ckpt.config_json(self.config))
        except ConfigError as e:
            try:
                self.check_params(self.checkpoint_dir)
                hint = (" with --set trainer.checkpoint.load_from="
                        f"{self.checkpoint_dir} to train on from its weights")
            except ConfigError:
                hint = " (its weights do not fit this model)"
            raise ConfigError(f"{e}. This config needs a new --workdir{hint}") from None
        return meta

    def initial_state(self, resume: dict | None, checkpointer: Checkpointer | None,
                      batches) -> TrainState:
        """Resumes the checkpoint whose meta is `resume` (data iterator included), else starts
        from trainer.checkpoint.load_from's parameters, else from scratch."""
        if resume is not None:
            print(f"resuming from {checkpointer.directory}/{resume['step']}", flush=True)
            restore_iterator_state(batches, ckpt.process_data_state(resume))
            return checkpointer.restore(resume["step"], abstract_state(self.layout))
        if self.config.trainer.checkpoint.load_from:
            return init_state(self.layout, self.load_params(self.config.trainer.checkpoint.load_from))
        if self.config.init_from:
            return init_state(self.layout, self.load_hf_params(self.config.init_from))
        return init_state(self.layout)

    def load_hf_params(self, path: str):
        """A Hugging Face checkpoint's weights, converted tensor by tensor and placed sharded."""
        print(f"loading Hugging Face weights from {path}", flush=True)
        saved, params = hf.load_hf(hf.resolve_hf_dir(path), progress=True)
        if self.config.model.vocab_size > saved.vocab_size:
            print(f"resizing the vocabulary from {saved.vocab_size} to "
                  f"{self.config.model.vocab_size} (new rows: the mean embedding)", flush=True)
            params = hf.resize_vocab(params, self.config.model.vocab_size)
        expected = abstract_state(self.layout).params
        mismatched = [
            f"{'.'.join(str(k.key) for k in key)} {p.shape} vs {e.shape}"
            for (key, p), e in zip(jax.tree_util.tree_leaves_with_path(params),
                                   jax.tree.leaves(expected)) if p.shape != e.shape]
        if mismatched:
            raise ConfigError(f"init_from={path}: the checkpoint's shapes differ from "
                              f"the model config's: {', '.join(mismatched)}")
        return jax.device_put(params, self.layout.shardings.params)

    def eval_params(self) -> tuple[dict, int]:
        """(params, their training step) for --mode=eval: those of eval_checkpoint(), else
        init_from's Hugging Face weights."""
        load_from = eval_checkpoint(self.config, self.workdir)
        if load_from:
            return self.load_params(load_from), ckpt.read_meta(load_from)["step"]
        if self.config.init_from:
            return self.load_hf_params(self.config.init_from), 0
        print("no checkpoint to evaluate (no trainer.checkpoint.load_from, no checkpoints in "
              "the workdir, no init_from): evaluating the freshly initialised model", flush=True)
        return init_state(self.layout).params, 0

    @property
    def checkpoint_dir(self) -> epath.Path:
        return checkpoint_dir(self.workdir)

    # ------------------------------------------------------------------ the loop

    def train(self) -> TrainState | None:
        """Trains to trainer.num_train_steps; None when the workdir's run is already there."""
        trainer = self.config.trainer
        total = trainer.num_train_steps
        # Everything that can be wrong is found before compiling: the workdir's config, the
        # checkpoint to load, the inputs, an empty eval split.
        resume = self.resume_meta()
        if resume is not None and resume["step"] >= total:
            print(f"{self.workdir} is already trained to step {resume['step']} "
                  f"(trainer.num_train_steps={total}): nothing to do; raise "
                  "trainer.num_train_steps to train on", flush=True)
            return None
        if trainer.checkpoint.load_from and resume is None:
            self.check_params(trainer.checkpoint.load_from)
        batches = self.train_iterator()
        if next(iter(self.eval_batches()), None) is None:
            raise ConfigError(EMPTY_SPLIT["eval"])
        if self.workdir:
            ckpt.check_writable(self.checkpoint_dir, state_bytes(self.layout))
        self.record_run()
        start = time.monotonic()
        train_step = self.compile()
        print(f"compiled the train step in {time.monotonic() - start:.1f}s", flush=True)
        checkpointer = (Checkpointer(self.checkpoint_dir, trainer.checkpoint)
                        if self.workdir else None)
        state = self.initial_state(resume, checkpointer, batches)
        first_step = int(state.step)
        saved_config = ckpt.config_json(self.config)
        model_type = type(self.config.model).__name__
        logger = self.logger = MetricsLogger(self.workdir, total, resume_step=first_step)
        last_log_time, last_log_step = time.monotonic(), first_step
        try:
            with Preemption() as preemption:
                for step in range(first_step + 1, total + 1):
                    state, metrics = train_step(state, self.global_batch(next(batches)))
                    due = lambda every: step % every == 0 or step == total  # noqa: E731
                    logged = {}
                    if due(trainer.log_every) or step == 1:  # step 1 shows the starting loss
                        logged.update({f"train/{k}": float(v) for k, v in metrics.items()})
                        if not math.isfinite(logged["train/loss"]):
                            raise TrainingDiverged(
                                f"step {step}: the loss is {logged['train/loss']}; stopping "
                                "(lower optimizer.learning_rate?)")
                        now = time.monotonic()
                        seconds_per_step = (now - last_log_time) / (step - last_log_step)
                        last_log_time, last_log_step = now, step
                        logged["perf/tokens_per_sec"] = self.tokens_per_step / seconds_per_step
                        logged["perf/mfu"] = (self.flops_per_step / seconds_per_step
                                              / self.peak_flops)
                        logged["perf/eta_sec"] = seconds_per_step * (total - step)
                    evaluate = due(trainer.eval_every)
                    hooks = [hook for hook in self.hooks if due(hook.every)]
                    # Read once: a SIGTERM landing later in this step must not skip the save.
                    preempted = preemption.reached(step)
                    save_now = step == total or preempted  # and confirm it before going on
                    save = checkpointer and (save_now or checkpointer.should_save(step))
                    if evaluate or hooks or save:  # their time is not step time
                        jax.block_until_ready(state)
                        pause_start = time.monotonic()
                        if evaluate:
                            logged.update(self.evaluate(state.params))
                        for hook in hooks:
                            logged.update(hook.fn(step, state) or {})
                        if save:
                            (checkpointer.save_now if save_now else checkpointer.save)(
                                step, state, batches.get_state(), saved_config, model_type)
                        last_log_time += time.monotonic() - pause_start
                    # A failed save is found here, at the latest the step after it failed (with
                    # several processes at log steps, where they agree on it together).
                    if checkpointer and (jax.process_count() == 1 or logged):
                        checkpointer.check()
                    if logged:
                        logger.write(step, logged)
                    if preempted:
                        saved = "saved a checkpoint" if checkpointer else "no workdir, nothing saved"
                        print(f"preempted: {saved} at step {step}; exiting", flush=True)
                        break
        finally:
            logger.close()
            if checkpointer:
                checkpointer.close()
        return state
