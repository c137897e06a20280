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

import dataclasses
import json
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from lmlib import distributed
from lmlib.errors import ConfigError
from lmlib.models import Gpt2Config, LlamaConfig, ModelConfig
from lmlib.tree_util import flatten_dict

MODEL_CONFIGS = {cls.__name__: cls for cls in (LlamaConfig, Gpt2Config)}

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

    def validate(self) -> None:
        parse_duration(self.save_interval)
        if self.save_every_steps < 0:
            raise ConfigError("trainer.checkpoint.save_every_steps must be >= 0")

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


def parse_duration(text: str) -> int | None:
    """'90s', '15m', '2h' -> seconds; '' -> None."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+)\s*([smh])", text.strip())
    if not match:
        raise ConfigError(f"trainer.checkpoint.save_interval={text!r}: expected e.g. 30s, 15m, 1h")
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


class Checkpointer:
    """Saves and restores a run's checkpoints in `directory` (local or gs://)."""

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig):
        self.directory = directory
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
        self.manager = ocp.CheckpointManager(directory, options=options,
                                             item_handlers=_item_handlers())

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        """Whether `directory` holds at least one finished checkpoint."""
        try:
            step_directory(directory)
            return True
        except ConfigError:
            return False

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, config: dict, model_type: str,
             force: bool = False) -> bool:
        """Saves if a policy says so (or `force`); returns whether a save started.

        Every process calls it: each writes its shards of the arrays, and process 0 writes the
        meta item, with every process's `data_state` gathered into it."""
        meta = {"step": step, "data": distributed.allgather_json(data_state), "config": config,
                "model_type": model_type}
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)), force=force)

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, step: int, abstract_state) -> Any:
        """The state at `step`, placed in the shardings that `abstract_state` carries."""
        return self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)))).state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


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
    """The model config a checkpoint was written with."""
    return MODEL_CONFIGS[meta["model_type"]](**meta["config"]["model"])


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
