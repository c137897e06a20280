"""Checkpoints through the real CLI: a killed run restarted with the same command is the same run."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import lmlib
from conftest import REPO, TINY_RUN, read_metrics, run_cli, train_losses

CHECKPOINTED = [*TINY_RUN, "--set=trainer.checkpoint.save_every_steps=10",
                "--set=trainer.checkpoint.save_interval="]


def start_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "lmlib.main", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until_step(process: subprocess.Popen, step: int) -> None:
    """Reads the run's output until its log line of `step` ("step  25/40 | loss ...")."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        words = line.split()
        if words[:1] == ["step"] and words[1].startswith(f"{step}/"):
            return
    raise AssertionError(f"the run ended before logging step {step}:\n{''.join(lines)}")


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_sigkill_then_restart_is_the_same_run_bit_for_bit(tmp_path):
    steps = "--set=trainer.num_train_steps=40"
    run_cli(*CHECKPOINTED, steps, f"--workdir={tmp_path / 'whole'}")

    killed = tmp_path / "killed"
    process = start_cli(*CHECKPOINTED, steps, f"--workdir={killed}")
    read_until_step(process, 25)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert max(checkpoint_steps(killed)) in (10, 20)  # 20 may have been mid-write: never picked

    restarted = run_cli(*CHECKPOINTED, steps, f"--workdir={killed}").stdout
    assert "resuming from" in restarted
    whole, resumed = train_losses(tmp_path / "whole"), train_losses(killed)
    for step in range(31, 41):
        assert resumed[step] == whole[step], step  # float32, bit-identical
    # The log continues: every step exactly once, in order.
    assert [m["step"] for m in read_metrics(killed)] == list(range(1, 41))


def test_sigterm_saves_at_the_step_reached_exits_0_and_restart_continues(tmp_path):
    process = start_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=1000",
                        f"--workdir={tmp_path}")
    read_until_step(process, 3)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    reached = int(output.split("saved a checkpoint at step ")[1].split(";")[0])
    listing = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoint_steps(tmp_path)[-1:] == [reached], (listing, output)

    restarted = run_cli(*CHECKPOINTED, f"--set=trainer.num_train_steps={reached + 2}",
                        f"--workdir={tmp_path}").stdout
    assert f"resuming from {tmp_path / 'checkpoints'}/{reached}" in restarted
    assert sorted(train_losses(tmp_path))[-2:] == [reached + 1, reached + 2]


def test_checkpoint_from_8_devices_restores_on_1_with_the_same_eval_loss(tmp_path):
    run_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=3", "--set=trainer.mesh.data=2",
            "--set=trainer.mesh.fsdp=2", "--set=trainer.mesh.tensor=2", f"--workdir={tmp_path}",
            devices=8)
    logged = read_metrics(tmp_path)[-1]["eval/loss"]
    evaluated = run_cli(*CHECKPOINTED, f"--workdir={tmp_path}", "--mode=eval").stdout
    loss = float(evaluated.split("eval loss ")[1].split()[0])
    assert loss == pytest.approx(logged, rel=1e-5)
    evaluation = read_metrics(tmp_path)[-1]  # --mode=eval logs at the checkpoint's step
    assert evaluation["step"] == 3 and evaluation["eval/loss"] == pytest.approx(loss, rel=1e-4)

    model = lmlib.load_model(tmp_path)
    assert model.config.num_layers == 2
    logits = model.logits(np.arange(12, dtype=np.int32).reshape(2, 6))
    assert logits.shape == (2, 6, model.config.vocab_size) and np.isfinite(logits).all()


def test_resuming_with_a_config_that_changes_the_math_names_the_keys(tmp_path):
    run_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=2", f"--workdir={tmp_path}")
    # Fields that do not change the math may change...
    run_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=3", "--set=trainer.log_every=2",
            f"--workdir={tmp_path}")
    # ...those that do are refused, each named.
    result = run_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=4", "--set=trainer.seed=1",
                     "--set=trainer.batch_size=8", f"--workdir={tmp_path}", check=False)
    assert result.returncode == 2
    assert "trainer.seed (saved 0, now 1)" in result.stderr
    assert "trainer.batch_size (saved 16, now 8)" in result.stderr


def test_load_from_starts_from_another_runs_parameters(tmp_path):
    run_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=3", f"--workdir={tmp_path / 'a'}")
    out = run_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=1",
                  f"--set=trainer.checkpoint.load_from={tmp_path / 'a' / 'checkpoints' / '3'}",
                  f"--workdir={tmp_path / 'b'}").stdout
    assert "loading parameters from" in out
    first_a, first_b = train_losses(tmp_path / "a")[1], train_losses(tmp_path / "b")[1]
    assert first_b < first_a  # trained parameters, not a fresh initialisation
    missing = run_cli(*CHECKPOINTED, "--set=trainer.checkpoint.load_from=/nonexistent",
                      f"--workdir={tmp_path / 'c'}", check=False)
    assert missing.returncode == 2 and "no such checkpoint: /nonexistent" in missing.stderr
