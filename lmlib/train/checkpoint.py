"""Checkpoints: Orbax CheckpointManager, async and atomic, under `workdir/checkpoints/<step>`.

A checkpoint has two items:
    state   TrainState (params, optimizer state, step), every array saved and restored sharded,
            so no host holds the whole model and a checkpoint restores onto any mesh
    meta    JSON: step, the data iterator's state of every process (a list, in process order),
            the resolved config, the model config's type
Two policies at once (as Levanter): a temporary checkpoint every `save_interval` of wall time,
of which only the newest is kept, and a permanent one every `save_every_steps` steps.
Orbax writes into a temporary directory and renames it when complete (on GCS, where a rename is
a copy, it writes in place and adds commit_success.txt last), so a run killed mid-save never
leaves a checkpoint that looks finished.

Paths are etils.epath paths, so a workdir or checkpoint may be local or gs://bucket/...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from lmlib import distributed
from lmlib.errors import CheckpointFailed, ConfigError, one_line
from lmlib.models import ModelConfig
from lmlib.models.families import family_named
from lmlib.tree_util import flatten_dict

# Model fields that choose how the model computes, not what: parameters load across them.
MODEL_COMPUTE_OPTIONS = ("model.remat", "model.attention_impl", "model.unroll_layers")

# Fields that may change between a run and its resumption: they do not change the math.
RESUMABLE_CHANGES = (
    "trainer.num_train_steps", "trainer.log_every", "trainer.eval_every",
    "trainer.eval_batches", "trainer.checkpoint.", "trainer.peak_flops_per_device",
    "trainer.mesh.", "trainer.microbatch_size", *MODEL_COMPUTE_OPTIONS,
    "data.cache_dir", "data.num_shards", "name",
    # The tokenizer is checked by its content instead (run_record: a run never swaps it).
    "data.tokenizer.",
)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    save_interval: str = "15m"  # temporary checkpoints (newest kept): "30s", "15m", "1h"; "" = off
    save_every_steps: int = 0  # permanent checkpoints every N steps; 0 = none
    load_from: str = ""  # start from these params: a step directory, or a checkpoints/ directory
    async_save: bool = True  # write in the background while training continues
    save_retries: int = 3  # a failed save is retried this often (newest state), then the run stops
    retry_delay: str = "10s"  # before the first retry; doubled for each next one

    def validate(self) -> None:
        parse_duration(self.save_interval)
        parse_duration(self.retry_delay, "trainer.checkpoint.retry_delay")
        if self.save_every_steps < 0:
            raise ConfigError("trainer.checkpoint.save_every_steps must be >= 0")
        if self.save_retries < 0:
            raise ConfigError("trainer.checkpoint.save_retries must be >= 0")

    @property
    def retry_delay_seconds(self) -> int:
        return parse_duration(self.retry_delay) or 0

    @property
    def save_interval_seconds(self) -> int | None:
        return parse_duration(self.save_interval)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URI (gs://...) rather than a local path."""
    return "://" in str(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path, a local one made absolute (Orbax's array store refuses relative
    paths). A URI is absolute already: epath's absolute() would prepend the current directory."""
    path = epath.Path(path)
    return path if is_remote(path) else path.absolute()


def parse_duration(text: str, key: str = "trainer.checkpoint.save_interval") -> int | None:
    """'90s', '15m', '2h' -> seconds; '' -> None."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+)\s*([smh])", text.strip())
    if not match:
        raise ConfigError(f"{key}={text!r}: expected e.g. 30s, 15m, 1h")
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


def check_writable(directory: str | os.PathLike, nbytes: int) -> None:
    """Raises a ConfigError, before the first step, where a checkpoint of `nbytes` cannot be
    written to `directory`: it refuses a file, or a local disk has less room than that."""
    directory = absolute(directory)
    error = _unwritable(directory, nbytes) if jax.process_index() == 0 else ""
    error = distributed.allgather_json(error)[0]  # every process stops, not only process 0
    if error:
        raise ConfigError(error)


def _unwritable(directory: epath.Path, nbytes: int) -> str:
    """Why a checkpoint of `nbytes` cannot be written to `directory`, or ""."""
    probe = directory / ".lmlib-write-probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text("lmlib checks that checkpoints can be written here\n")
        probe.unlink()
    except Exception as e:
        return f"cannot write checkpoints to {directory}: {one_line(e)}"
    if not is_remote(directory):
        free = shutil.disk_usage(directory).free
        if free < nbytes:
            return (f"{directory}: {free / 2**30:.2f} GiB free, but a checkpoint of this run "
                    f"takes {nbytes / 2**30:.2f} GiB")
    return ""


MAX_RETRY_DELAY = 300  # seconds: the doubling backoff stops growing here
SAVE_NOW_DELAY = 5  # seconds between the tries of a save that must finish (end, preemption)


class Checkpointer:
    """Saves and restores a run's checkpoints in `directory` (local or gs://).

    A save counts once Orbax has committed it. One that fails, in Orbax's background thread or
    in the call, is found at the next check() (the loop calls it at every step boundary),
    reported in one line and retried with the newest state once `retry_delay` has passed
    (doubling); after `save_retries` failures in a row the run stops (CheckpointFailed) and
    names the last good checkpoint, which is what a restart resumes from."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig):
        self.directory = absolute(directory)
        self.config = config
        self._orbax_errors = ORBAX_ERRORS
        self.manager = self._open()
        self.last_good = self.manager.latest_step()
        self.pending: int | None = None  # the step of a save not yet confirmed
        self._started = 0.0  # when it started (time.monotonic)
        self._outcome: str | None = None  # "" committed, else why not; None: still saving
        self.failures = 0  # in a row
        self._retry_at = 0.0

    def _open(self) -> ocp.CheckpointManager:
        config = self.config
        save_policies: list = []
        if config.save_interval_seconds:
            save_policies.append(policies.ContinuousCheckpointingPolicy(
                minimum_interval_secs=config.save_interval_seconds))
        keep: list = [policies.LatestN(1)]
        if config.save_every_steps:
            save_policies.append(policies.FixedIntervalPolicy(config.save_every_steps))
            keep.append(policies.EveryNSteps(config.save_every_steps))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.AnySavePolicy(save_policies),
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=config.async_save,
            cleanup_tmp_directories=True)
        return ocp.CheckpointManager(self.directory, options=options,
                                     item_handlers=_item_handlers())

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        """Whether `directory` holds at least one finished checkpoint."""
        try:
            step_directory(directory)
            return True
        except (ConfigError, OSError):  # OSError: not a directory (check_writable says so)
            return False

    def should_save(self, step: int) -> bool:
        """Whether a policy asks for a save at `step`, or a failed save is due to be retried
        (none while a retry is still being written). Every process gets the same answer."""
        if not self.failures:
            return self.manager.should_save(step)  # Orbax agrees across processes itself
        due = self.pending is None and time.monotonic() >= self._retry_at
        if jax.process_count() > 1:  # each process's clock differs: process 0 decides
            due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
        return due

    def save(self, step: int, state, data_state: dict, config: dict, model_type: str) -> None:
        """Starts saving `step` (in the background when async); check() confirms it. Where the
        save before it turns out to have failed, this one waits for that retry's backoff.

        Every process calls it: each writes its shards of the arrays, and process 0 writes the
        meta item, with every process's `data_state` gathered into it."""
        failures = self.failures
        self.check(block=True)  # one save at a time: the previous one is confirmed first
        if self.failures > failures:
            return
        self._start(step, state, data_state, config, model_type)

    def _start(self, step: int, state, data_state: dict, config: dict, model_type: str) -> None:
        meta = {"step": step, "data": distributed.allgather_json(data_state), "config": config,
                "model_type": model_type}
        self.pending, self._started = step, time.monotonic()
        self._orbax_errors.clear()
        try:
            if jax.process_index() == 0 and (self.directory / str(step)).exists():
                (self.directory / str(step)).rmtree()  # an earlier try left it unfinished
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # a synchronous save fails here, an async one in its thread
            self._outcome = one_line(e)

    def save_now(self, step: int, state, data_state: dict, config: dict,
                 model_type: str) -> None:
        """Saves `step` and waits until it is committed, trying again with the same state after
        a failure, at most SAVE_NOW_DELAY apart (the end of the run, a preemption: its grace
        period is short); raises CheckpointFailed when every try fails."""
        self.check(block=True)
        while True:
            self._start(step, state, data_state, config, model_type)
            self.check(block=True)
            if not self.failures:
                return
            time.sleep(min(SAVE_NOW_DELAY, max(0.0, self._retry_at - time.monotonic())))

    def check(self, block: bool = False) -> None:
        """Confirms the pending save once it has finished (`block`: waits for it).

        Every process calls it at the same points: they agree on the outcome, so they retry, or
        stop, together."""
        if self.pending is None:
            return
        if self._outcome is None and (block or not self.manager.is_saving_in_progress()):
            self._outcome = self._finish(self.pending)
        outcomes = distributed.allgather_json(self._outcome)
        if any(outcome is None for outcome in outcomes):
            return  # still saving on some process
        step, reason = self.pending, next((o for o in outcomes if o), "")
        self.pending = self._outcome = None
        if not reason:
            self.last_good, self.failures = step, 0
            return
        self.failures += 1
        last_good = (f"{self.directory}/{self.last_good}" if self.last_good is not None
                     else "none: no checkpoint of this run was saved")
        stop = (f"The last good checkpoint is {last_good}; the same command resumes from it "
                "once the storage works")
        with contextlib.suppress(Exception):  # its error was the one just reported
            self.manager.close()
        try:
            self.manager = self._open()  # forgets the failed step, clears its temporary files
        except Exception as e:
            raise CheckpointFailed(f"saving step {step} failed ({reason}), and the checkpoint "
                                   f"directory cannot be opened again ({one_line(e)}); "
                                   f"stopping. {stop}") from None
        if self.failures > self.config.save_retries:
            raise CheckpointFailed(
                f"saving a checkpoint failed {self.failures} times in a row, last at step {step}"
                f" ({reason}); stopping. {stop}")
        delay = min(MAX_RETRY_DELAY,
                    self.config.retry_delay_seconds * 2 ** (self.failures - 1))
        self._retry_at = time.monotonic() + delay
        print(f"checkpoint: saving step {step} to {self.directory}/{step} failed ({reason}), "
              f"found {time.monotonic() - self._started:.1f}s after it started; retry "
              f"{self.failures} of {self.config.save_retries} in {delay:.0f}s (last good: "
              f"{last_good})", flush=True)

    def _finish(self, step: int) -> str:
        """Waits for the save of `step`: "" when it is committed, else why not."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            return one_line(e)
        # Orbax logs some failures (its finalisation) instead of raising them: what counts is
        # whether the step directory is committed. Process 0 commits it, after every process.
        if jax.process_index() != 0:
            return ""
        try:
            committed = ocp.step.is_path_finalized(self.directory / str(step))
        except Exception as e:  # the storage itself failing
            return one_line(e)
        if not committed:
            errors = self._orbax_errors
            return errors[-1] if errors else "the checkpoint was not committed"
        return ""

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, step: int, abstract_state) -> Any:
        """The state at `step`, placed in the shardings that `abstract_state` carries."""
        return self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)))).state

    def close(self) -> None:
        """Waits for a save in flight (a failure is reported, not raised: the run is ending on
        another error) and closes."""
        try:
            self.check(block=True)
        except CheckpointFailed as e:
            print(f"checkpoint: {e}", flush=True)
        with contextlib.suppress(Exception):
            self.manager.close()


class _OrbaxErrors(logging.Filter, list):
    """Keeps the errors Orbax logs with a traceback (a save failing in its background thread,
    and the asyncio tasks of that save whose exceptions nobody retrieves, logged when they are
    collected, even at exit) as one line each, off the console: lmlib reports each failed save in
    one line of its own. Installed on the loggers they come through, for the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error and ("orbax" in record.pathname or "orbax" in record.getMessage()):
            self.append(one_line(error))
            return False
        return True


ORBAX_ERRORS = _OrbaxErrors()
for _logger in ("absl", "asyncio"):
    logging.getLogger(_logger).addFilter(ORBAX_ERRORS)


def process_data_state(meta: dict) -> dict:
    """This process's data iterator state from a checkpoint's meta."""
    # A dict: written before the states of all processes were kept, by a one-process run.
    states = meta["data"] if isinstance(meta["data"], list) else [meta["data"]]
    if len(states) == jax.process_count():
        return states[jax.process_index()]
    # Processes that read one shared stream (lmlib.data.pretrain) hold the same state, which
    # resumes on any number of processes.
    if all(state == states[0] for state in states):
        return states[0]
    raise ConfigError(f"the checkpoint holds the data positions of {len(states)} processes that "
                      f"read different data; resume it on {len(states)} processes, not "
                      f"{jax.process_count()}")


def config_json(config) -> dict:
    """The resolved config tree as JSON-safe nested dicts (what a checkpoint stores)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def check_resumable(saved: dict[str, Any], current: dict[str, Any],
                    allowed: tuple[str, ...] = RESUMABLE_CHANGES, what: str = "run") -> None:
    """Refuses to continue from a checkpoint whose math `current` would change, naming the keys.

    Both are config_json() trees."""
    saved, current = flatten_dict(saved), flatten_dict(current)
    differing = sorted(
        key for key in saved  # a field added to lmlib since the save keeps its old meaning
        if saved[key] != current.get(key)
        and not any(key == p or key.startswith(p) for p in allowed))
    if differing:
        details = ", ".join(f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})"
                            for k in differing)
        raise ConfigError(f"the checkpoint comes from a different {what}: {details}")


def step_directory(path: str | os.PathLike) -> tuple[epath.Path, int]:
    """A step directory, a checkpoints/ directory (its newest step) or a run's workdir ->
    (checkpoints dir, step). Only finished checkpoints count, by Orbax's own test (on GCS an
    unfinished step directory has the final name, without commit_success.txt)."""
    path = absolute(path)
    if not path.exists():
        raise ConfigError(f"trainer.checkpoint.load_from: no such checkpoint: {path}")
    if path.name.isdigit() and ocp.step.is_path_finalized(path):
        return path.parent, int(path.name)
    steps = ocp.step.checkpoint_steps(path)
    if not steps and (path / "checkpoints").is_dir():  # a run's workdir
        return step_directory(path / "checkpoints")
    if not steps:
        raise ConfigError(f"trainer.checkpoint.load_from: {path} holds no checkpoint")
    return path, max(steps)


def _item_handlers() -> dict:
    # Uncompressed: compressing holds a second copy of the arrays while writing (a 2 GiB tree
    # peaks at 4.0 GiB compressed, 2.4 GiB not) for float weights that barely compress.
    return {"state": ocp.PyTreeCheckpointHandler(use_compression=False),
            "meta": ocp.JsonCheckpointHandler()}


def _read_only_manager(directory: epath.Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(create=False))


def read_meta(path: str | os.PathLike) -> dict:
    """The meta item (step, data state, config) of a checkpoint given as for restore_params."""
    directory, step = step_directory(path)
    manager = _read_only_manager(directory)
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    manager.close()
    return meta


def model_config(meta: dict) -> ModelConfig:
    """The model config a checkpoint was written with (its meta names the config class,
    "LlamaConfig", or the family, "llama")."""
    return family_named(meta["model_type"]).config_class(**meta["config"]["model"])


def restore_params(path: str | os.PathLike, abstract_params) -> Any:
    """Only the parameters of a checkpoint (params in the shardings of `abstract_params`)."""
    directory, step = step_directory(path)
    manager = _read_only_manager(directory)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            {"params": abstract_params},
            restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
            partial_restore=True)))
    manager.close()
    return restored.state["params"]


def save_params(directory: str | os.PathLike, params, config: ModelConfig) -> None:
    """Writes a parameters-only checkpoint (step 0) that load_from and load_params accept.

    Consumes `params` (a nested dict of numpy arrays): each leaf is moved to a host-device array
    in place, one at a time, so that memory stays near one copy of the model (Orbax would copy
    every numpy leaf at once: a 1.1B import peaked at 10.4 GiB, now 6.6 GiB)."""
    cpu = jax.local_devices(backend="cpu")[0]

    def to_device(tree: dict) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                to_device(value)
            else:
                # Waiting for each copy frees its numpy source before the next one starts.
                tree[key] = jax.block_until_ready(jax.device_put(value, cpu))
                del value
    to_device(params)
    manager = ocp.CheckpointManager(
        absolute(directory), options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        item_handlers=_item_handlers())
    meta = {"step": 0, "data": None, "model_type": type(config).__name__,
            "config": {"model": dataclasses.asdict(config)}}
    manager.save(0, args=ocp.args.Composite(state=ocp.args.PyTreeSave({"params": params}),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
    manager.close()


def load_params(path: str | os.PathLike) -> tuple[ModelConfig, Any]:
    """(model config, params as host numpy arrays) of any checkpoint, for tools and notebooks."""
    from flax import nnx

    config = model_config(read_meta(path))
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: config.make(nnx.Rngs(0)))))
    return config, restore_params(path, abstract)
