"""Building a run from a resolved config: the mesh, the data and its tokenizer, the optimizer,
the state layout and the jitted steps (as Levanter's train_lm builds the pieces its Trainer
loops over). Nothing here trains; building reads no weights and prepares no data until `data`
is first asked for."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lmlib.config import ExperimentConfig
from lmlib.data.pretrain import PreparedData, PretrainData, prepare_data
from lmlib.data.supervised import SupervisedExamples, prepare_supervised
from lmlib.errors import ConfigError
from lmlib.mesh import batch_sharding, make_mesh
from lmlib.train import checkpoint as ckpt
from lmlib.train import run_record
from lmlib.train.metrics import peak_flops_per_device
from lmlib.train.state import abstract_state, state_layout
from lmlib.train.step import StepConfig, make_eval_step, make_train_step


class Run:
    """One run's pieces. `config` is resolved and bound to its tokenizer
    (experiment.with_tokenizer); `workdir` is where the run lives, if anywhere."""

    def __init__(self, config: ExperimentConfig, workdir: str | Path | None = None):
        self.config, self.workdir = config, workdir
        trainer, model = config.trainer, config.model
        trainer.check_fits(model)
        self.mesh = make_mesh(trainer.mesh)
        # A workdir that a run started in holds that run's tokenizer, which it keeps.
        self.record = run_record.read(workdir)
        self.optimizer = config.optimizer.make(trainer.num_train_steps)
        self.layout = state_layout(model, self.optimizer, self.mesh, trainer.seed)
        step_config = StepConfig(compute_dtype=trainer.dtypes[1],
                                 num_microbatches=trainer.num_microbatches,
                                 loss_chunk_len=trainer.loss_chunk_len)
        self.batch_sharding = batch_sharding(self.mesh)
        with jax.set_mesh(self.mesh):
            self.train_step = jax.jit(
                make_train_step(self.layout.graphdef, self.optimizer,
                                config.optimizer.schedule(trainer.num_train_steps), step_config),
                in_shardings=(self.layout.shardings, self.batch_sharding),
                out_shardings=(self.layout.shardings, None), donate_argnums=0)
            self.eval_step = jax.jit(
                make_eval_step(self.layout.graphdef, step_config),
                in_shardings=(self.layout.shardings.params, self.batch_sharding))
        self.tokens_per_step = trainer.batch_size * model.seq_len
        self.flops_per_step = model.flops_per_token() * self.tokens_per_step
        peak = trainer.peak_flops_per_device or peak_flops_per_device()
        self.peak_flops = peak * jax.device_count()

    @property
    def checkpoint_dir(self) -> epath.Path:
        return checkpoint_dir(self.workdir)

    @functools.cached_property
    def data(self) -> PreparedData | SupervisedExamples:
        """The prepared data (tokenized on first use), with the run's own tokenizer when the
        workdir has one and the config would otherwise train one."""
        config, record = self.config, self.record
        tokenizer_path = (run_record.tokenizer_path(self.workdir, record)
                          if record and not config.data.tokenizer.path else None)
        data = (prepare_data(config.data, tokenizer_path) if isinstance(config.data, PretrainData)
                else prepare_supervised(config.data, config.model.seq_len, tokenizer_path))
        if record and data.tokenizer.fingerprint != record.tokenizer_fingerprint:
            raise ConfigError(
                f"{self.workdir} was trained with another tokenizer "
                f"({record.tokenizer_fingerprint} in {run_record.RECORD}; data.tokenizer.path="
                f"{config.data.tokenizer.path} is {data.tokenizer.fingerprint}); a run never "
                "swaps its tokenizer. To train these weights on with it, start a new --workdir "
                f"with --set trainer.checkpoint.load_from={self.workdir}")
        if record and data.fingerprint != record.data_fingerprint:
            print(f"data: the inputs changed since this run started ({record.data_fingerprint} "
                  f"-> {data.fingerprint}); continuing with the run's own tokenizer on the "
                  "current inputs (the data order from here on differs from an uninterrupted "
                  "run)", flush=True)
        if data.tokenizer.vocab_size > config.model.vocab_size:
            raise ConfigError(f"the tokenizer has {data.tokenizer.vocab_size} tokens but "
                              f"model.vocab_size={config.model.vocab_size}")
        return data

    def record_identity(self) -> None:
        """Stores the run's identity (tokenizer, data fingerprint) in a new workdir."""
        if self.workdir and not self.record:
            self.record = run_record.write(self.workdir, self.data.tokenizer,
                                           self.data.fingerprint)

    def compile(self):
        """AOT-compiles the train step from shapes alone (nothing allocated); returns it."""
        shape = (self.config.trainer.batch_size, self.config.model.seq_len)
        dtypes = {"tokens": jnp.int32, "targets": jnp.int32, "positions": jnp.int32,
                  "segment_ids": jnp.int32, "weights": jnp.float32}
        batch = {k: jax.ShapeDtypeStruct(shape, d, sharding=self.batch_sharding)
                 for k, d in dtypes.items()}
        with jax.set_mesh(self.mesh):
            return self.train_step.lower(abstract_state(self.layout), batch).compile()

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


def checkpoint_dir(workdir: str | Path) -> epath.Path:
    return ckpt.absolute(workdir) / "checkpoints"
