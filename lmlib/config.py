"""The config tree a run is made from: ExperimentConfig and the trainer's part of it.

Each part's dataclass lives beside the code it configures (models/, data/, train/optimizer.py,
train/checkpoint.py, mesh.py, hooks/); this module assembles them. Every class has a validate()
that experiment.validate calls once on the whole tree, after every --set is applied.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lmlib.data.pretrain import PretrainData
from lmlib.data.supervised import SupervisedData
from lmlib.errors import ConfigError
from lmlib.hooks.hf_export import HFExportConfig
from lmlib.hooks.multiple_choice import MultipleChoiceConfig
from lmlib.hooks.samples import SamplesConfig
from lmlib.mesh import MeshConfig
from lmlib.models import ModelConfig
from lmlib.train.checkpoint import CheckpointConfig
from lmlib.train.optimizer import AdamW

DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


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
        if (self.loss_chunk_len and model.seq_len % self.loss_chunk_len
                and self.loss_chunk_len < model.seq_len):
            raise ConfigError(f"model.seq_len={model.seq_len} is not a multiple of "
                              f"trainer.loss_chunk_len={self.loss_chunk_len}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    model: ModelConfig
    data: PretrainData | SupervisedData
    optimizer: AdamW
    trainer: TrainerConfig
    init_from: str = ""  # a Hugging Face directory or hub id whose weights the run starts from
