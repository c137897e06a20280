"""How long a checkpoint save blocks the training loop, async against synchronous, and its size.

    python benchmarks/benchmark_checkpoint.py --model=demo
    python benchmarks/benchmark_checkpoint.py --model=llama_1b --params_only

"blocked" is the time `Checkpointer.save` keeps the loop from its next step; "total" runs until
the checkpoint is committed on disk.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import jax

from benchmarks.presets import PRESETS
from lmlib.mesh import MeshConfig, make_mesh
from lmlib.train.checkpoint import CheckpointConfig, Checkpointer
from lmlib.train.optimizer import AdamW
from lmlib.train.state import init_state, state_layout


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def time_saves(state, async_save: bool, repeats: int) -> tuple[float, float, int]:
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    checkpointer = Checkpointer(root, CheckpointConfig(save_interval="", async_save=async_save))
    blocked, total = [], []
    try:
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            checkpointer.save(step, state, {}, {}, "LlamaConfig")
            blocked.append(time.perf_counter() - start)
            checkpointer.check(block=True)
            total.append(time.perf_counter() - start)
        size = directory_bytes(root / str(repeats))
    finally:
        checkpointer.close()
        shutil.rmtree(root)
    return min(blocked), min(total), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--params_only", action="store_true",
                        help="save the parameters without the optimizer state (less memory)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = PRESETS[args.model]()
    optimizer = AdamW().make(100)
    layout = state_layout(config, optimizer, make_mesh(MeshConfig()), seed=0)
    state = init_state(layout)
    if args.params_only:
        state = {"params": state.params}
    jax.block_until_ready(state)
    for async_save in (True, False):
        blocked, total, size = time_saves(state, async_save, args.repeats)
        print(f"{args.model} {'async' if async_save else 'sync '}: blocked {blocked:.3f}s, "
              f"total {total:.3f}s, size {size / 2**20:,.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
