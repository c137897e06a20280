"""launch.xpk --dry_run prints the workload command a user would run."""

import shlex
import subprocess
import sys

from conftest import REPO


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.xpk", *args], cwd=REPO,
                          capture_output=True, text=True)


COMMON = ["--exp=Llama2_7B", "--cluster=pod", "--workdir=gs://bucket/runs/7b",
          "--image=gcr.io/proj/lmlib:tpu", "--set", "trainer.batch_size=1024", "--dry_run"]


def test_tpu_and_gpu_commands_name_image_topology_workdir_and_the_exact_main_line():
    tpu = launch(*COMMON, "--tpu-type=v5p-256", "--num-slices=2", "--set=trainer.mesh.data=2")
    assert tpu.returncode == 0, tpu.stderr
    words = shlex.split(tpu.stdout)
    assert words[:3] == ["xpk", "workload", "create"]
    assert {"--tpu-type=v5p-256", "--num-slices=2", "--docker-image=gcr.io/proj/lmlib:tpu",
            "--max-restarts=10"} <= set(words)
    command = next(w for w in words if w.startswith("--command="))
    assert shlex.split(command.removeprefix("--command=")) == [
        "python", "-m", "lmlib.main", "--exp=Llama2_7B", "--workdir=gs://bucket/runs/7b",
        "--set=trainer.batch_size=1024", "--set=trainer.mesh.data=2"]

    gpu = launch(*COMMON, "--device-type=h100-80gb-8", "--num-nodes=4")
    assert gpu.returncode == 0, gpu.stderr
    words = shlex.split(gpu.stdout)
    assert {"--device-type=h100-80gb-8", "--num-nodes=4"} <= set(words)
    command = next(w for w in words if w.startswith("--command="))
    # Each GPU node's shell fills in the coordinator, the node count and its rank.
    assert shlex.split(command.removeprefix("--command=")) == [
        "python", "-m", "lmlib.main", "--exp=Llama2_7B", "--workdir=gs://bucket/runs/7b",
        "--set=trainer.batch_size=1024",
        "--coordinator_address=${JAX_COORDINATOR_ADDRESS}:${JAX_COORDINATOR_PORT}",
        "--num_processes=${NNODES}", "--process_id=${NODE_RANK}"]


def test_bad_topologies_are_clear_errors():
    for bad, message in [("--tpu-type=v5p-100", "power of two"),
                         ("--tpu-type=v9-8", "expected GENERATION-SIZE"),
                         ("--device-type=h100", "choose one of")]:
        result = launch(*COMMON, bad)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    local = launch(*[a if not a.startswith("--workdir") else "--workdir=/tmp/x" for a in COMMON],
                   "--tpu-type=v5p-8")
    assert local.returncode == 2 and "needs a gs:// workdir" in local.stderr


def test_the_experiment_is_resolved_for_the_pod_before_anything_is_printed():
    """A mistake that every host would hit is refused here, not in a crash loop of restarts."""
    for args, message in [(["--exp=Llama2_7BB"], "did you mean Llama2_7B"),
                          (["--set=trainer.mesh.dta=2"], "did you mean trainer.mesh.data"),
                          (["--num-slices=2"], "needs trainer.mesh.data to be a multiple of it"),
                          (["--set=trainer.microbatch_size=100", "--set=trainer.batch_size=1000"],
                           "does not split over")]:
        result = launch(*COMMON, "--tpu-type=v5p-256", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not result.stdout and "Traceback" not in result.stderr
