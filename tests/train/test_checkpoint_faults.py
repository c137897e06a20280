"""Checkpoint saves that fail, through the real CLI: a GCS emulator that refuses some uploads
(403, as a bucket without write permission) and a checkpoint directory that cannot exist.

A failed save is reported in one line and retried; saves that keep failing stop the run with
exit 1 naming the last good checkpoint, which is what the same command then resumes from; a
run exits 0 only when its last checkpoint is committed; failing log copies never stop a run."""

import os
import re
import signal
import subprocess
import sys

import orbax.checkpoint as ocp
from etils import epath

from conftest import GCS_BUCKET, REPO, run_cli
from test_checkpoint import CHECKPOINTED, read_until_step

FAST_RETRIES = ["--set=trainer.checkpoint.retry_delay=0s",
                "--set=trainer.checkpoint.save_retries=2"]


def committed_steps(workdir: epath.Path) -> list[int]:
    return sorted(ocp.step.checkpoint_steps(workdir / "checkpoints"))


def assert_no_traceback(output: str) -> None:
    """No traceback passes through lmlib's code. Tensorstore prints 'Event loop is closed' ones
    at exit after an upload failed in Orbax's background thread (its futures complete after
    Orbax closed their asyncio loop; from several threads at once, interleaved): that noise is
    neither ours nor stoppable from here, and comes after the run's last line."""
    assert not re.search(r'File "[^"]*/(lmlib|experiments)/', output), output


def failure_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("checkpoint: saving step")]


def test_a_failed_save_is_retried_and_failing_log_copies_do_not_stop_the_run(
        gcs_write_faults, gcs_emulator):
    workdir = epath.Path(f"gs://{GCS_BUCKET}/retried")
    gcs_write_faults[:] = ["retried/checkpoints/2/", "retried/metrics.jsonl"]
    result = run_cli(*CHECKPOINTED, *FAST_RETRIES, "--set=trainer.checkpoint.save_every_steps=2",
                     "--set=trainer.num_train_steps=6", f"--workdir={workdir}",
                     env=gcs_emulator)
    # Found at the step boundary after it failed, one line, retried with the next step's state.
    [failure] = failure_lines(result.stdout)
    assert f"saving step 2 to {workdir}/checkpoints/2 failed (" in failure, result.stdout
    assert "retry 1 of 2" in failure and "last good: none" in failure
    assert_no_traceback(result.stdout + result.stderr)
    assert committed_steps(workdir) == [4, 6]  # 3 (the retry) was kept until 4 replaced it
    assert "could not copy metrics.jsonl" in result.stdout
    assert not (workdir / "metrics.jsonl").exists()  # refused throughout, yet the run finished

    gcs_write_faults.clear()
    resumed = run_cli(*CHECKPOINTED, "--set=trainer.num_train_steps=7",
                      "--set=trainer.checkpoint.save_every_steps=2", f"--workdir={workdir}",
                      env=gcs_emulator).stdout
    assert f"resuming from {workdir}/checkpoints/6" in resumed


def test_saves_that_keep_failing_stop_the_run_and_name_the_last_good_checkpoint(
        gcs_write_faults, gcs_emulator):
    workdir = epath.Path(f"gs://{GCS_BUCKET}/failing")
    gcs_write_faults[:] = [r"failing/checkpoints/([3-9]|\d\d+)/"]
    result = run_cli(*CHECKPOINTED, *FAST_RETRIES, "--set=trainer.checkpoint.save_every_steps=2",
                     "--set=trainer.num_train_steps=20", f"--workdir={workdir}",
                     env=gcs_emulator, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    # Step 4 fails, then its two retries, each with the newest state: three in a row stop a
    # run with save_retries=2, long before its end.
    failed_steps = [int(line.split()[3]) for line in failure_lines(result.stdout)]
    assert len(failed_steps) == 2 and failed_steps[0] == 4, result.stdout
    assert "step 20/20" not in result.stdout
    assert ("saving a checkpoint failed 3 times in a row, last at step" in result.stderr
            and f"The last good checkpoint is {workdir}/checkpoints/2" in result.stderr)
    assert_no_traceback(result.stdout + result.stderr)
    assert committed_steps(workdir) == [2]

    gcs_write_faults.clear()
    resumed = run_cli(*CHECKPOINTED, "--set=trainer.checkpoint.save_every_steps=2",
                      "--set=trainer.num_train_steps=3", f"--workdir={workdir}",
                      env=gcs_emulator).stdout
    assert f"resuming from {workdir}/checkpoints/2" in resumed


def test_the_end_of_run_and_sigterm_saves_exit_0_only_when_committed(gcs_write_faults,
                                                                     gcs_emulator):
    gcs_write_faults[:] = [r"/checkpoints/\d"]  # every save of these runs (not the probe)
    workdir = epath.Path(f"gs://{GCS_BUCKET}/final")
    result = run_cli(*CHECKPOINTED, *FAST_RETRIES, "--set=trainer.num_train_steps=2",
                     f"--workdir={workdir}", env=gcs_emulator, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "saving a checkpoint failed 3 times in a row, last at step 2" in result.stderr
    assert "The last good checkpoint is none" in result.stderr

    env = {**os.environ, **gcs_emulator, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lmlib.main", *CHECKPOINTED, *FAST_RETRIES,
         "--set=trainer.num_train_steps=100000", "--set=trainer.checkpoint.save_every_steps=0",
         f"--workdir=gs://{GCS_BUCKET}/preempted"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    read_until_step(process, 3)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 1, output
    assert "SIGTERM: saving a checkpoint after this step" in output  # the preemption save,
    assert "saving a checkpoint failed 3 times in a row" in output  # the only one of the run
    assert "preempted: saved a checkpoint" not in output


def test_a_checkpoint_directory_that_cannot_be_written_is_refused_before_compiling(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the checkpoints would go")
    result = run_cli(*CHECKPOINTED, f"--workdir={tmp_path}", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot write checkpoints to {tmp_path}/checkpoints" in result.stderr
    assert "compiled" not in result.stdout and "Traceback" not in result.stderr
