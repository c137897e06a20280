"""XLA flags that lmlib sets by default, and only where the user's XLA_FLAGS does not name them.

They must be in the environment before JAX starts its backend: lmlib.main and the benchmark
tools call `set_defaults()` first. Flags of another platform are ignored by XLA. The flag below
acts on collectives, which a one-GPU run has none of; it is set for several GPUs, as the NVIDIA
JAX containers set it, and lmlib has not measured it there yet (BENCHMARKS.md, "GPU").
"""

from __future__ import annotations

import os

DEFAULTS = {
    # Schedules collectives (FSDP all-gathers, gradient reduce-scatters) to overlap with
    # compute on several GPUs.
    "xla_gpu_enable_latency_hiding_scheduler": "true",
}


def set_defaults(environ: dict | None = None) -> str:
    """Adds DEFAULTS to XLA_FLAGS, keeping every flag the user set; returns the result."""
    environ = os.environ if environ is None else environ
    user = environ.get("XLA_FLAGS", "")
    named = {word.lstrip("-").split("=")[0] for word in user.split()}
    added = [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in named]
    environ["XLA_FLAGS"] = " ".join([user, *added]).strip()
    return environ["XLA_FLAGS"]
