"""SIGTERM is a preemption notice: finish the step, save a checkpoint, exit 0.

Spot VMs and GKE give a grace period (often 30 s) between SIGTERM and SIGKILL. The first SIGTERM
sets `requested`; the loop saves at the next step boundary. A second SIGTERM, or a SIGINT after
the first, exits at once.

Several processes must save at the same step, or the first collective of the save would wait
forever for the ones that did not: there JAX's preemption service (started by jax.distributed)
catches SIGTERM in any process and agrees on the step with the others.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Preemption:
        if jax.process_count() > 1:  # our handler would replace the preemption service's
            return self
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

    def reached(self, step: int) -> bool:
        """Whether to save and exit after `step` (call it once per step, in every process)."""
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
            print(f"preemption notice: every process saves after step {step}", flush=True)
            self.requested = True
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        print("SIGTERM: saving a checkpoint after this step, then exiting "
              "(send it again to exit at once)", flush=True)
        self._previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, self._handle))

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
