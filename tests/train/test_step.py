"""The train step gives the same numbers however the work is split: over devices (data, fsdp,
tensor parallelism), over microbatches, over loss chunks."""

import numpy as np
import pytest

from conftest import TINY_RUN, run_cli, train_losses

STEPS = ["--set=trainer.num_train_steps=5"]


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    run_cli(*TINY_RUN, *STEPS, f"--workdir={workdir}")
    losses = train_losses(workdir)
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert losses[5] < losses[1]
    return losses


def assert_same_losses(losses, reference, rtol):
    assert sorted(losses) == sorted(reference)
    np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                               [reference[s] for s in sorted(reference)], rtol=rtol, atol=0)


def test_data_fsdp_tensor_parallel_on_8_devices_matches_one_device(reference_losses, tmp_path):
    run_cli(*TINY_RUN, *STEPS, "--set=trainer.mesh.data=2", "--set=trainer.mesh.fsdp=2",
            "--set=trainer.mesh.tensor=2", f"--workdir={tmp_path}", devices=8)
    assert_same_losses(train_losses(tmp_path), reference_losses, rtol=1e-4)


def test_four_accumulation_steps_match_one(reference_losses, tmp_path):
    out = run_cli(*TINY_RUN, *STEPS, "--set=trainer.microbatch_size=4", f"--workdir={tmp_path}",
                  "--mode=show").stdout
    assert "accumulation steps: 4" in out
    run_cli(*TINY_RUN, *STEPS, "--set=trainer.microbatch_size=4", f"--workdir={tmp_path}")
    assert_same_losses(train_losses(tmp_path), reference_losses, rtol=1e-5)


def test_chunked_loss_matches_one_chunk(reference_losses, tmp_path):
    run_cli(*TINY_RUN, *STEPS, "--set=trainer.loss_chunk_len=16", f"--workdir={tmp_path}")
    assert_same_losses(train_losses(tmp_path), reference_losses, rtol=1e-5)
