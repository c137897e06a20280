"""Two processes on this machine (a localhost coordinator, 4 simulated CPU devices each) train
like one process with 8 devices: same losses, each process feeding its own half of every batch,
and checkpoints that resume on either process count."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_RUN, _free_port, read_metrics, run_cli, train_losses

# A constant learning rate, so that a run stopped at step 2 (num_train_steps=2) and resumed
# computes what an uninterrupted run of 6 steps does.
RUN = [*TINY_RUN, "--set=trainer.mesh.data=2", "--set=trainer.mesh.fsdp=4",
       "--set=optimizer.warmup=0", "--set=optimizer.min_lr_ratio=1"]


def run_two_processes(*args: str) -> str:
    """`python -m lmlib.main ARGS` as processes 0 and 1 of one run; process 0's output."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    address = f"127.0.0.1:{_free_port()}"
    processes = [subprocess.Popen(
        [sys.executable, "-m", "lmlib.main", *args, f"--coordinator_address={address}",
         "--num_processes=2", f"--process_id={i}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for i, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i} exited {process.returncode}:\n{output}"
    return outputs[0]


def assert_close(losses: dict[int, float], reference: dict[int, float]) -> None:
    assert losses, "no losses logged"
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-4), (step, losses, reference)


def test_two_processes_train_and_resume_like_one(tmp_path):
    steps = lambda n: f"--set=trainer.num_train_steps={n}"  # noqa: E731
    reference = tmp_path / "one"
    run_cli(*RUN, steps(6), f"--workdir={reference}", devices=8)
    expected = train_losses(reference)

    # 2 processes for steps 1-2, then 1 process (8 devices) for 3-4, then 2 processes again.
    run = tmp_path / "mixed"
    output = run_two_processes(*RUN, steps(2), f"--workdir={run}")
    assert "on 8 cpu device(s)" in output
    run_cli(*RUN, steps(4), f"--workdir={run}", devices=8)
    output = run_two_processes(*RUN, steps(6), f"--workdir={run}")
    assert "resuming from" in output
    assert_close(train_losses(run), expected)
    # Only process 0 logs: each step once.
    assert [m["step"] for m in read_metrics(run) if "train/loss" in m] == list(range(1, 7))


def test_each_process_reads_its_own_half_of_every_batch():
    """The iterators the two processes build, against the one of a single process."""
    from lmlib.data.pretrain import PretrainData, packed_dataset, prepare_data

    config = PretrainData()
    data = prepare_data(config)
    options = dict(seq_len=64, seed=0, shuffle=True, repeat=True,
                   row_shuffle_window=config.row_shuffle_window)
    whole = iter(packed_dataset(data.shards("train"), batch_size=16, **options))
    halves = [iter(packed_dataset(data.shards("train"), batch_size=8, process_index=i,
                                  process_count=2, **options)) for i in range(2)]
    for _ in range(3):
        batch, first, second = next(whole), next(halves[0]), next(halves[1])
        rows = lambda b: {r.tobytes() for r in b["tokens"]}  # noqa: E731
        assert not rows(first) & rows(second)
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])


def test_process_flags_are_checked():
    result = run_cli("--exp=StdlibLlama", "--mode=show", "--num_processes=2", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --coordinator_address, --process_id missing: a "
                                     "multi-process run needs --coordinator_address, "
                                     "--num_processes and --process_id")
    result = run_cli("--exp=StdlibLlama", "--mode=show", "--coordinator_address=localhost:1",
                     "--num_processes=2", "--process_id=2", check=False)
    assert result.returncode == 2 and "expected 0 <= process_id < num_processes" in result.stderr
