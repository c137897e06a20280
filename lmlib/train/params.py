"""Where a run's parameters come from: its own newest checkpoint (resume, data position
included), another run's or an imported checkpoint (trainer.checkpoint.load_from), Hugging Face
weights (init_from), or a fresh initialisation. Each source is checked against the model before
anything compiles."""

from __future__ import annotations

from pathlib import Path

import jax

from lmlib import hf
from lmlib.config import ExperimentConfig
from lmlib.data.rows import restore_iterator_state
from lmlib.errors import ConfigError
from lmlib.train import checkpoint as ckpt
from lmlib.train.checkpoint import Checkpointer
from lmlib.train.run import Run, checkpoint_dir
from lmlib.train.state import TrainState, abstract_state, init_state


def check_params(run: Run, path: str | Path) -> None:
    """Refuses a checkpoint (a run's, or an imported one) whose model differs."""
    saved = ckpt.read_meta(path)["config"]
    current = ckpt.config_json(run.config)
    ckpt.check_resumable({"model": saved["model"]}, {"model": current["model"]},
                         allowed=ckpt.MODEL_COMPUTE_OPTIONS, what="model")


def load_params(run: Run, path: str | Path):
    """Parameters of any checkpoint (a run's, or an imported one), placed on the run's mesh."""
    check_params(run, path)
    print(f"loading parameters from {path}", flush=True)
    return ckpt.restore_params(path, abstract_state(run.layout).params)


def load_hf_params(run: Run, path: str):
    """A Hugging Face checkpoint's weights, converted tensor by tensor and placed sharded."""
    print(f"loading Hugging Face weights from {path}", flush=True)
    saved, params = hf.load_hf(hf.resolve_hf_dir(path), progress=True)
    model = run.config.model
    if model.vocab_size > saved.vocab_size:
        print(f"resizing the vocabulary from {saved.vocab_size} to {model.vocab_size} (new "
              "rows: the mean embedding)", flush=True)
        params = hf.resize_vocab(params, model.vocab_size)
    expected = abstract_state(run.layout).params
    mismatched = [
        f"{'.'.join(str(k.key) for k in key)} {p.shape} vs {e.shape}"
        for (key, p), e in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree.leaves(expected)) if p.shape != e.shape]
    if mismatched:
        raise ConfigError(f"init_from={path}: the checkpoint's shapes differ from the model "
                          f"config's: {', '.join(mismatched)}")
    return jax.device_put(params, run.layout.shardings.params)


def resume_meta(run: Run) -> dict | None:
    """The meta of the workdir's newest checkpoint, checked against the run's config (before
    anything compiles), or None where there is none to resume."""
    if not run.workdir or not Checkpointer.exists(run.checkpoint_dir):
        return None
    meta = ckpt.read_meta(run.checkpoint_dir)
    try:
        ckpt.check_resumable(meta["config"], ckpt.config_json(run.config))
    except ConfigError as e:
        try:
            check_params(run, run.checkpoint_dir)
            hint = (" with --set trainer.checkpoint.load_from="
                    f"{run.checkpoint_dir} to train on from its weights")
        except ConfigError:
            hint = " (its weights do not fit this model)"
        raise ConfigError(f"{e}. This config needs a new --workdir{hint}") from None
    return meta


def initial_state(run: Run, resume: dict | None, checkpointer: Checkpointer | None,
                  batches) -> TrainState:
    """Resumes the checkpoint whose meta is `resume` (data iterator included), else starts
    from trainer.checkpoint.load_from's parameters, else init_from's, else from scratch."""
    if resume is not None:
        print(f"resuming from {checkpointer.directory}/{resume['step']}", flush=True)
        restore_iterator_state(batches, ckpt.process_data_state(resume))
        return checkpointer.restore(resume["step"], abstract_state(run.layout))
    load_from = run.config.trainer.checkpoint.load_from
    if load_from:
        return init_state(run.layout, load_params(run, load_from))
    if run.config.init_from:
        return init_state(run.layout, load_hf_params(run, run.config.init_from))
    return init_state(run.layout)


def eval_checkpoint(config: ExperimentConfig, workdir: str | Path | None) -> str | None:
    """The checkpoint --mode=eval scores: trainer.checkpoint.load_from, else the workdir's
    newest, else None."""
    load_from = config.trainer.checkpoint.load_from
    if not load_from and workdir and Checkpointer.exists(checkpoint_dir(workdir)):
        load_from = str(checkpoint_dir(workdir))
    return load_from or None


def eval_params(run: Run) -> tuple[dict, int]:
    """(params, their training step) for --mode=eval: those of eval_checkpoint(), else
    init_from's Hugging Face weights, else a fresh initialisation (said so)."""
    load_from = eval_checkpoint(run.config, run.workdir)
    if load_from:
        return load_params(run, load_from), ckpt.read_meta(load_from)["step"]
    if run.config.init_from:
        return load_hf_params(run, run.config.init_from), 0
    print("no checkpoint to evaluate (no trainer.checkpoint.load_from, no checkpoints in the "
          "workdir, no init_from): evaluating the freshly initialised model", flush=True)
    return init_state(run.layout).params, 0
