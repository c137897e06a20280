"""Build (and run) the `xpk workload create` command for an lmlib experiment on GKE.

    python -m launch.xpk --exp=Llama2_7B --cluster=my-cluster --tpu-type=v5p-256 \
        --num-slices=2 --workdir=gs://bucket/runs/llama7b --image=gcr.io/proj/lmlib:tpu \
        --set trainer.batch_size=1024 --dry_run

Every host of every slice runs the same `python -m lmlib.main` line; JAX finds its peers from
the GKE/TPU environment, GPU nodes from the flags xpk's variables give (lmlib.distributed starts
jax.distributed). A preempted or failed workload is
restarted up to --max-restarts times and resumes from its newest checkpoint in --workdir.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

# TPU generations xpk knows, and how many chips one VM (host) of each holds.
TPU_CHIPS_PER_HOST = {"v4": 4, "v5p": 4, "v5litepod": 4, "v6e": 4}
# GPU machine types (xpk --device-type): one host = 8 GPUs.
GPU_DEVICE_TYPES = ("h100-80gb-8", "h100-mega-80gb-8", "h200-141gb-8", "b200-8", "a100-40gb-8")


class LaunchError(ValueError):
    pass


def check_tpu_type(tpu_type: str) -> None:
    match = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", tpu_type)
    if not match:
        raise LaunchError(f"--tpu-type={tpu_type!r}: expected GENERATION-SIZE with generation "
                          f"one of {sorted(TPU_CHIPS_PER_HOST)}, e.g. v5p-256 or v6e-16")
    size = int(match[2])
    if size & (size - 1):
        raise LaunchError(f"--tpu-type={tpu_type!r}: the slice size must be a power of two")


# xpk's GPU workloads name the coordinator, the node count and each node's rank in these
# variables; lmlib.main takes them as flags (TPU slices need none: JAX reads the TPU environment).
GPU_PROCESS_FLAGS = ("--coordinator_address=${JAX_COORDINATOR_ADDRESS}:${JAX_COORDINATOR_PORT} "
                     "--num_processes=${NNODES} --process_id=${NODE_RANK}")


def train_command(exp: str, workdir: str, overrides: list[str], gpu: bool = False) -> str:
    """The line every host runs (GPU: with its process flags, expanded by the host's shell)."""
    args = ["python", "-m", "lmlib.main", f"--exp={exp}", f"--workdir={workdir}"]
    args += [f"--set={o}" for o in overrides]
    return shlex.join(args) + (f" {GPU_PROCESS_FLAGS}" if gpu else "")


def topology(args: argparse.Namespace) -> tuple[int, int]:
    """(devices, hosts) of the whole workload."""
    if args.tpu_type:
        check_tpu_type(args.tpu_type)
        generation, size = args.tpu_type.rsplit("-", 1)
        # v4 and v5p names count TensorCores, two per chip; v5e and v6e names count chips.
        chips = int(size) // (2 if generation in ("v4", "v5p") else 1) * args.num_slices
        return chips, max(chips // TPU_CHIPS_PER_HOST[generation], 1)
    return 8 * args.num_nodes, args.num_nodes


def check_experiment(args: argparse.Namespace) -> None:
    """Resolves the experiment as every host's lmlib.main will, for the workload's devices and
    hosts: a mistake is found here, not in a crash loop of --max-restarts pods."""
    from lmlib import experiment
    from lmlib.errors import ConfigError

    devices, hosts = topology(args)
    try:
        config = experiment.resolve(args.exp, args.set, num_devices=devices,
                                    num_processes=hosts)
    except ConfigError as e:
        raise LaunchError(f"{e} (resolved for {devices} devices on {hosts} hosts)") from None
    data_ways = config.trainer.mesh.resolve(devices)["data"]
    if args.tpu_type and data_ways % args.num_slices:
        raise LaunchError(f"--num-slices={args.num_slices} needs trainer.mesh.data to be a "
                          f"multiple of it (the data axis spans the slices; it is {data_ways}): "
                          f"--set trainer.mesh.data={args.num_slices}")


def xpk_command(args: argparse.Namespace) -> list[str]:
    if not args.workdir.startswith("gs://"):
        raise LaunchError(f"--workdir={args.workdir!r}: a GKE workload needs a gs:// workdir "
                          "(checkpoints must outlive the pods)")
    if bool(args.tpu_type) == bool(args.device_type):
        raise LaunchError("give exactly one of --tpu-type (TPU) and --device-type (GPU)")
    main_line = train_command(args.exp, args.workdir, args.set, gpu=not args.tpu_type)
    command = ["xpk", "workload", "create", f"--cluster={args.cluster}",
               f"--workload={args.workload or default_workload_name(args.exp)}",
               f"--docker-image={args.image}", f"--max-restarts={args.max_restarts}",
               f"--command={main_line}"]
    if args.tpu_type:
        check_tpu_type(args.tpu_type)
        command += [f"--tpu-type={args.tpu_type}", f"--num-slices={args.num_slices}"]
    else:
        if args.device_type not in GPU_DEVICE_TYPES:
            raise LaunchError(f"--device-type={args.device_type!r}: choose one of "
                              f"{list(GPU_DEVICE_TYPES)}")
        command += [f"--device-type={args.device_type}", f"--num-nodes={args.num_nodes}"]
    command += [f"--{flag}={value}" for flag, value in
                (("project", args.project), ("zone", args.zone)) if value]
    return command


def default_workload_name(exp: str) -> str:
    # Kubernetes names: lowercase letters, digits and '-', at most 40 characters for xpk.
    return re.sub(r"[^a-z0-9-]", "-", exp.lower())[:40].strip("-")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", required=True, help="registered lmlib experiment")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--workdir", required=True, help="gs:// run directory")
    parser.add_argument("--image", required=True, help="container built from launch/Dockerfile")
    parser.add_argument("--tpu-type", dest="tpu_type", default="", help="e.g. v5p-256")
    parser.add_argument("--num-slices", dest="num_slices", type=int, default=1)
    parser.add_argument("--device-type", dest="device_type", default="",
                        help=f"GPU hosts instead of TPUs: one of {', '.join(GPU_DEVICE_TYPES)}")
    parser.add_argument("--num-nodes", dest="num_nodes", type=int, default=1)
    parser.add_argument("--workload", default="", help="default: the experiment name")
    parser.add_argument("--max-restarts", dest="max_restarts", type=int, default=10)
    parser.add_argument("--project", default="")
    parser.add_argument("--zone", default="")
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument("--dry_run", action="store_true", help="print the command, run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        command = xpk_command(args)
        check_experiment(args)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(shlex.join(command), flush=True)
    return 0 if args.dry_run else subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
