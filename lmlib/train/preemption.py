"""SIGTERM is a preemption notice: finish the step, save a checkpoint, exit 0.

Spot VMs and GKE give a grace period (often 30 s) between SIGTERM and SIGKILL. The first SIGTERM
sets `requested`; the loop saves at the next step boundary. A second SIGTERM, or a SIGINT after
the first, exits at once.
"""

from __future__ import annotations

import os
import signal
import threading


class Preemption:
    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

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
