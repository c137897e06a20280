"""The parameters as a Hugging Face directory (`transformers` loads it) every
trainer.hf_export.every_steps steps and at the end: PATH/step_000100/..."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import TYPE_CHECKING

import jax
from etils import epath
from jax.experimental import multihost_utils

from lmlib import hf
from lmlib.errors import ConfigError, one_line
from lmlib.train.metrics import StagedDirectory

if TYPE_CHECKING:
    from lmlib.train.run import Run


@dataclasses.dataclass(frozen=True)
class HFExportConfig:
    every_steps: int = 0  # write a Hugging Face directory every N steps and at the end; 0 = never
    path: str = ""  # where: PATH/step_000100/...; "" = workdir/hf
    dtype: str = "bfloat16"  # float32 | bfloat16


class HFExport:
    def __init__(self, run: Run, root: epath.Path):
        self.run, self.root = run, root
        self.config = run.config.trainer.hf_export
        self.every_steps = self.config.every_steps

    def __call__(self, step: int, state, logger) -> None:
        # Every process takes part in gathering the sharded parameters (one tensor at a time,
        # so a device holds at most one whole tensor more); process 0 alone writes them.
        params = jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True),
                              state.params)
        if jax.process_index() != 0:
            return
        tokenizer = self.run.data.tokenizer
        out = StagedDirectory(self.root / f"step_{step:06d}")  # hf writes local files only
        try:  # a failed export is reported; it never stops a run whose checkpoints are fine
            hf.save_hf(out.local, self.run.config.model, params, dtype=self.config.dtype,
                       bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
            hf.save_tokenizer(out.local, tokenizer)
        except OSError as e:
            print(f"could not export step {step} to {out.remote} ({one_line(e)}); the next "
                  "export tries again", flush=True)
            return
        if out.close():
            print(f"exported a Hugging Face model to {out.remote}", flush=True)


def check(run: Run) -> None:
    """What an export needs, checked from the config alone."""
    config = run.config.trainer.hf_export
    if not config.every_steps:
        return
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError("trainer.hf_export writes tokenizer files with transformers: "
                          "pip install 'lmlib[hf]'")
    if not (config.path or run.workdir):
        raise ConfigError("trainer.hf_export needs trainer.hf_export.path or --workdir")


def make(run: Run) -> HFExport | None:
    config = run.config.trainer.hf_export
    if not config.every_steps:
        return None
    check(run)
    return HFExport(run, epath.Path(config.path or epath.Path(run.workdir) / "hf"))
