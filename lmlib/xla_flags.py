"""XLA flags that lmlib sets by default, and only where the user's XLA_FLAGS does not name them.

They must be in the environment before JAX starts its backend: lmlib.main and the benchmark
tools call `set_defaults()` first. Each flag is here because a measurement showed it helps
(BENCHMARKS.md, "GPU"); flags of another platform are ignored by XLA.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # Schedules collectives (FSDP all-gathers, gradient reduce-scatters) to overlap with
    # compute on several GPUs; the NVIDIA JAX containers set it too.
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
