"""Where training numbers go: one console line per log interval, metrics.jsonl, TensorBoard.

Also the performance arithmetic the console line needs: tokens/s, MFU against the device's
peak, ETA. The workdir may be local or gs://bucket/... (see StagedDirectory).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from etils import epath
from tensorboard.compat.proto import (event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2,
                                      types_pb2)
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from lmlib.errors import one_line
from lmlib.train.checkpoint import is_remote

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {
    "h100": 989e12, "h200": 989e12, "h800": 989e12, "gh200": 989e12, "b200": 2250e12,
    "a100": 312e12, "a10g": 125e12, "l4": 121e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
    "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}


@functools.cache
def cpu_peak_flops() -> float:
    """The host's bfloat16 matmul rate, measured (best of 5 products of 2048 x 2048 matrices,
    bf16 in, float32 out, as the models' matmuls run on a CPU; ~0.2 s once per process).

    A CPU has no data-sheet peak, and its cores, clocks and vector units vary too much to
    compute one: on the 2-core development VM, 32 float32 FLOPs a cycle per core at the clock
    /proc/cpuinfo lists gave 332 GFLOP/s, and this product runs at 860. MFU on a CPU is
    therefore against the best rate its matmuls reach; trainer.peak_flops_per_device overrides.
    """
    size = 2048
    device = jax.devices("cpu")[0]
    a, b = (jax.device_put(jax.random.normal(jax.random.key(i), (size, size), jnp.bfloat16),
                           device) for i in range(2))
    product = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    product(a, b).block_until_ready()
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def datasheet_peak_flops(device_kind: str) -> float:
    """PEAK_FLOPS of the longest name that `device_kind` ("NVIDIA H100 80GB HBM3") contains."""
    kind = device_kind.lower()
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return flops
    return math.nan


def peak_flops_per_device(device: jax.Device | None = None) -> float:
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops() / jax.local_device_count()
    return datasheet_peak_flops(device.device_kind)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class StagedDirectory:
    """Files written locally, then copied to `remote` by push(), for writers that need a local
    directory: object stores cannot append (gcsfs turns mode "a" into an overwrite, so
    TensorBoard's own gs:// writer would keep only the last flush), and some writers only know
    local files. For a local `remote`, `local` is `remote` itself and push() does nothing."""

    def __init__(self, remote: str | os.PathLike, pull: tuple[str, ...] = ()):
        """`pull`: files to fetch first from `remote`, where they exist, to append to them."""
        self.remote = epath.Path(remote)
        self.is_remote = is_remote(remote)
        self.local = Path(tempfile.mkdtemp(prefix="lmlib-") if self.is_remote else remote)
        self.local.mkdir(parents=True, exist_ok=True)
        self._pushed: dict[Path, tuple[int, int]] = {}  # file -> (size, mtime) when pushed
        for name in pull if self.is_remote else ():
            if (self.remote / name).exists():
                (self.local / name).write_bytes((self.remote / name).read_bytes())

    def push(self) -> bool:
        """Copies the files changed since the last push (whole: objects are written whole);
        returns whether all are copied. A copy that fails is reported in one line and tried
        again at the next push: logs and exports never stop a run."""
        if not self.is_remote:
            return True
        copied = True
        for file in filter(Path.is_file, self.local.rglob("*")):
            stat = file.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._pushed.get(file) != stamp:
                name = file.relative_to(self.local).as_posix()
                try:  # an object store has no directories: writing the object makes "parents"
                    (self.remote / name).write_bytes(file.read_bytes())
                except Exception as e:
                    print(f"could not copy {name} to {self.remote} ({one_line(e)}); trying "
                          "again at the next write", flush=True)
                    copied = False
                    continue
                self._pushed[file] = stamp
        return copied

    def close(self, tries: int = 3) -> bool:
        """Pushes what is left, up to `tries` times 1, 2, 4... s apart, and returns whether all
        is copied; where not, the local copy is kept, and named."""
        for attempt in range(tries):
            if attempt:
                time.sleep(2 ** (attempt - 1))
            if self.push():
                if self.is_remote:
                    shutil.rmtree(self.local)
                return True
        print(f"kept what could not be copied to {self.remote} in {self.local}", flush=True)
        return False


class TensorBoardWriter:
    """Scalars and text into TensorBoard event files, without TensorFlow."""

    def __init__(self, logdir: str | Path):
        self._writer = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def text(self, step: int, tag: str, text: str) -> None:
        """A string shown under TensorBoard's Text tab."""
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[text.encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto())
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def restart(self, step: int) -> None:
        """TensorBoard drops the events at and after `step` written by an interrupted run."""
        self._writer.add_event(event_pb2.Event(
            wall_time=time.time(), step=step,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsLogger:
    """Writes each logged step to the console, `workdir/metrics.jsonl` and TensorBoard.

    Only process 0 writes, so a multi-host run logs once.
    """

    def __init__(self, workdir: str | Path | None, num_train_steps: int, resume_step: int = 0):
        """`resume_step`: the step the run continues from; anything logged after it by the
        interrupted run is dropped, so the logs hold each step once."""
        self.num_train_steps = num_train_steps
        self.active = jax.process_index() == 0
        self._jsonl = self._tensorboard = self._samples = self._files = None
        if workdir and self.active:
            self._files = StagedDirectory(workdir, pull=("metrics.jsonl", "samples.jsonl"))
            workdir = self._files.local
            path = workdir / "metrics.jsonl"
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= resume_step]
                path.write_text("".join(line + "\n" for line in kept))
            self._jsonl = open(path, "a")
            self._tensorboard = TensorBoardWriter(workdir / "tensorboard")
            if resume_step:
                self._tensorboard.restart(resume_step + 1)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        if self._jsonl:
            self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self._jsonl.flush()
        if self._tensorboard:
            self._tensorboard.scalars(step, metrics)
            self._tensorboard.flush()
            self._files.push()
        print(self.console_line(step, metrics), flush=True)

    def samples(self, step: int, samples: list[dict[str, str]]) -> None:
        """Prompt/completion pairs to the console, workdir/samples.jsonl and TensorBoard."""
        if not self.active:
            return
        for i, sample in enumerate(samples):
            print(f"sample {i} at step {step}: {sample['prompt'] + sample['completion']!r}",
                  flush=True)  # repr: one line per sample however many newlines it holds
            if self._files and not self._samples:  # created by the first samples only
                self._samples = open(self._files.local / "samples.jsonl", "a")
            if self._samples:
                self._samples.write(json.dumps({"step": step, **sample}) + "\n")
            if self._tensorboard:
                self._tensorboard.text(step, f"samples/{i}",
                                       f"{sample['prompt']}{sample['completion']}")
        if self._samples:
            self._samples.flush()
            self._tensorboard.flush()
            self._files.push()

    def console_line(self, step: int, m: dict[str, float]) -> str:
        parts = [f"step {step:>{len(str(self.num_train_steps))}}/{self.num_train_steps}"]
        if "train/loss" in m:
            parts.append(f"loss {m['train/loss']:.4f}")
        if "eval/loss" in m:
            parts.append(f"eval {m['eval/loss']:.4f}")
        if "perf/tokens_per_sec" in m:
            parts.append(f"{m['perf/tokens_per_sec']:,.0f} tok/s")
        if "perf/mfu" in m and not math.isnan(m["perf/mfu"]):
            parts.append(f"MFU {100 * m['perf/mfu']:.1f}%")
        if "perf/eta_sec" in m:
            parts.append(f"ETA {format_duration(m['perf/eta_sec'])}")
        return " | ".join(parts)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._samples:
            self._samples.close()
        if self._tensorboard:
            self._tensorboard.close()
            self._files.close()
