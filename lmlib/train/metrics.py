"""Where training numbers go: one console line per log interval, metrics.jsonl, TensorBoard.

Also the performance arithmetic the console line needs: tokens/s, MFU against the device's
peak, ETA. The workdir may be local or gs://bucket/... (see StagedDirectory).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
from etils import epath
from tensorboard.compat.proto import (event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2,
                                      types_pb2)
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from lmlib.train.checkpoint import is_remote

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {
    "h100": 989e12, "h200": 989e12, "h800": 989e12, "gh200": 989e12, "b200": 2250e12,
    "a100": 312e12, "a10g": 125e12, "l4": 121e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
    "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}
# A CPU has no data-sheet number: assume 32 float32 FLOPs per cycle per core (two 256-bit FMA
# pipes, as on AVX2 and Zen 4's AVX-512), twice that where the CPU has bfloat16 dot-product
# instructions (avx512_bf16), at the clock /proc/cpuinfo reports. MFU on a CPU is therefore an
# estimate; set trainer.peak_flops_per_device to correct it.
CPU_FLOPS_PER_CYCLE = 32


def _cpuinfo(field: str) -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(field):
                return line.split(":", 1)[1]
    except OSError:
        pass
    return ""


def cpu_peak_flops() -> float:
    hz = float(_cpuinfo("cpu MHz") or 2000) * 1e6
    per_cycle = CPU_FLOPS_PER_CYCLE * (2 if "avx512_bf16" in _cpuinfo("flags").split() else 1)
    return per_cycle * hz * (os.cpu_count() or 1)


def peak_flops_per_device(device: jax.Device | None = None) -> float:
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops() / jax.local_device_count()
    kind = device.device_kind.lower()
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return flops
    return math.nan


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

    def push(self) -> None:
        """Copies the files changed since the last push (whole: objects are written whole)."""
        if not self.is_remote:
            return
        for file in filter(Path.is_file, self.local.rglob("*")):
            stat = file.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._pushed.get(file) != stamp:
                # An object store has no directories: writing the object makes its "parents".
                (self.remote / file.relative_to(self.local).as_posix()).write_bytes(
                    file.read_bytes())
                self._pushed[file] = stamp

    def close(self) -> None:
        self.push()
        if self.is_remote:
            shutil.rmtree(self.local)


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

    def __init__(self, workdir: str | Path | None, num_train_steps: int,
                 resume_step: int | None = 0):
        """`resume_step`: the step the run continues from; anything logged after it by the
        interrupted run is dropped, so the logs hold each step once. None appends (eval)."""
        self.num_train_steps = num_train_steps
        self.active = jax.process_index() == 0
        self._jsonl = self._tensorboard = self._samples = self._files = None
        if workdir and self.active:
            self._files = StagedDirectory(workdir, pull=("metrics.jsonl", "samples.jsonl"))
            workdir = self._files.local
            path = workdir / "metrics.jsonl"
            if path.exists() and resume_step is not None:
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= resume_step]
                path.write_text("".join(line + "\n" for line in kept))
            self._jsonl = open(path, "a")
            self._samples = open(workdir / "samples.jsonl", "a")
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
            self._samples.close()
        if self._tensorboard:
            self._tensorboard.close()
            self._files.close()
