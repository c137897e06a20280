"""Multi-process runs: jax.distributed start-up, and the few things processes must agree on.

Past one host, every process (one per TPU VM, GPU node, or test process) runs the same
`python -m lmlib.main` line, and JAX's multi-controller runtime joins them into one set of
devices. `initialize` must run before anything touches a device: the device list is fixed at the
first touch.
"""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
from jax.experimental import multihost_utils

from lmlib.errors import ConfigError


def multi_process_environment() -> bool:
    """Whether the environment says this run has several processes, by the variables that
    GKE (TPU_WORKER_HOSTNAMES per multi-host slice), multi-slice TPU jobs (MEGASCALE_NUM_SLICES)
    and SLURM (SLURM_NTASKS) set. jax.distributed.initialize() then finds its peers itself."""
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return (len(hosts) > 1 or int(os.environ.get("MEGASCALE_NUM_SLICES") or 1) > 1
            or int(os.environ.get("SLURM_NTASKS") or 1) > 1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Starts jax.distributed when the flags or the environment ask for several processes.

    The three flags go together (every process gets the same address and count, and its own
    id); without them, the cluster environment decides. One process: nothing to start.
    """
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) < len(given):
        if missing:
            raise ConfigError(f"{', '.join(missing)} missing: a multi-process run needs "
                              "--coordinator_address, --num_processes and --process_id")
        if not re.fullmatch(r"\S+:\d+", coordinator_address):
            raise ConfigError(f"--coordinator_address={coordinator_address!r}: expected "
                              "HOST:PORT, the address of process 0")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process_id={process_id} --num_processes={num_processes}: "
                              "expected 0 <= process_id < num_processes")
        if num_processes > 1:
            jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif multi_process_environment():
        jax.distributed.initialize()


def allgather_json(value) -> list:
    """Every process's JSON-serialisable `value`, in process order (a collective: all
    processes must call it together)."""
    if jax.process_count() == 1:
        return [value]
    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(len(encoded)))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(encoded)] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(row[:n].tobytes()) for row, n in zip(gathered, lengths)]
