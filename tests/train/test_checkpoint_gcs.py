"""A run's workdir on gs:// through the real CLI, against a local GCS emulator over HTTP."""

import numpy as np
from etils import epath
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import lmlib
from conftest import GCS_BUCKET, read_metrics, run_cli, train_losses
from test_checkpoint import CHECKPOINTED, checkpoint_steps

SAVE_EVERY_2 = [*CHECKPOINTED, "--set=trainer.checkpoint.save_every_steps=2"]


def tensorboard_steps(workdir: epath.Path) -> list[int]:
    """The steps of the train/loss scalars in the run's TensorBoard event files."""
    return sorted(event.step for path in (workdir / "tensorboard").iterdir()
                  for event in EventFileLoader(str(path)).Load()
                  if any(v.tag == "train/loss" for v in event.summary.value))


def test_a_run_on_gcs_saves_resumes_and_loads(gcs_emulator):
    workdir = epath.Path(f"gs://{GCS_BUCKET}/run")
    run_cli(*SAVE_EVERY_2, "--set=trainer.num_train_steps=3", f"--workdir={workdir}",
            env=gcs_emulator)
    assert checkpoint_steps(workdir) == [2, 3]  # every 2 steps, and the last
    assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3]
    assert tensorboard_steps(workdir) == [1, 2, 3]
    assert (workdir / "config.json").exists() and (workdir / "tokenizer.model").exists()

    restarted = run_cli(*SAVE_EVERY_2, "--set=trainer.num_train_steps=5", f"--workdir={workdir}",
                        env=gcs_emulator).stdout
    assert f"resuming from {workdir}/checkpoints/3" in restarted
    losses = train_losses(workdir)
    assert sorted(losses) == [1, 2, 3, 4, 5]  # the log continues, each step once
    assert losses[5] < losses[4] < losses[3]  # from the trained parameters, not a fresh start
    assert tensorboard_steps(workdir) == [1, 2, 3, 4, 5]
    assert checkpoint_steps(workdir) == [2, 4, 5]

    model = lmlib.load_model(str(workdir))
    logits = model.logits(np.arange(12, dtype=np.int32).reshape(2, 6))
    assert logits.shape == (2, 6, model.config.vocab_size) and np.isfinite(logits).all()
