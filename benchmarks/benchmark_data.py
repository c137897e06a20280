"""Data throughput: prepare against the `tokenizers` library, the loader against the train step.

    python benchmarks/benchmark_data.py --part=both

prepare: the embedded corpus's train documents written as JSONL files, tokenized by lmlib's
prepare (processes over files, ArrayRecord shards, manifest) with the demo's tokenizer exported
as a Hugging Face tokenizer.json, against the same files read line by line and encoded with
`tokenizers`' `encode_batch_fast` (Rust threads over all cores) in a plain loop. Both count the
documents' own tokens (prepare's BOS/EOS frames aside) and report tokens/s per core.

loader: batches/s of the Grain pipeline the Trainer reads (shuffle, pack, model inputs, batch)
against the batches/s the train step consumes: the demo's step measured here, and the ~1B
Llama's at 50% MFU on an H100 (the issue's target; a computed need, not a measurement).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from lmlib import xla_flags
from lmlib.data import prepare as prepare_lib
from lmlib.data import sources, stdlib
from lmlib.data.pretrain import PretrainData, prepare_data, stdlib_tokenizer


def write_jsonl_corpus(directory: Path, num_files: int, copies: int = 1) -> list[str]:
    """The embedded corpus's train documents, `copies` times over, as `num_files` JSONL files."""
    documents = [stdlib.read_text(p) for p in stdlib.stdlib_files("train")] * copies
    paths = [directory / f"stdlib.{i:03d}.jsonl" for i in range(num_files)]
    for i, path in enumerate(paths):
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[i::num_files]))
    return [str(p) for p in paths]


def time_prepare(files: list[str], tokenizer_json: str, workers: int, out: Path
                 ) -> tuple[int, float]:
    """(document tokens, seconds) of one cold prepare of `files`."""
    jobs = prepare_lib.make_jobs([{"train": files}], num_shards=len(files))
    reader = functools.partial(sources.read_documents, options=sources.ReadOptions())
    start = time.perf_counter()
    manifest = prepare_lib.prepare(str(out), jobs, reader, tokenizer_path=tokenizer_json,
                                   fingerprints={"run": str(out)}, num_workers=workers)
    seconds = time.perf_counter() - start
    shards = manifest["splits"]["train"]
    return sum(s["tokens"] - 2 * s["documents"] for s in shards), seconds


def time_tokenizers(files: list[str], tokenizer_json: str, chunk: int = 256) -> tuple[int, float]:
    """(tokens, seconds) of the peer: read JSONL lines, batch-encode them, count ids."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_json)
    tokenizer.encode_special_tokens = True  # as lmlib's HFTokenizer: text is text
    start, tokens = time.perf_counter(), 0
    for file in files:
        with open(file) as f:
            texts = [json.loads(line)["text"] for line in f]
        for i in range(0, len(texts), chunk):
            tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(
                texts[i:i + chunk], add_special_tokens=False))
    return tokens, time.perf_counter() - start


def bench_prepare(repeats: int, workers: int, num_files: int, copies: int) -> None:
    from lmlib import hf

    cores = os.cpu_count() or 1
    workers = workers or cores
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_jsonl_corpus(tmp, num_files, copies)
        hf.save_hf_tokenizer(tmp / "hf", stdlib_tokenizer(PretrainData()).read_bytes())
        tokenizer_json = str(tmp / "hf" / "tokenizer.json")
        lmlib_runs, peer_runs = [], []
        for r in range(repeats):  # alternated, so that machine noise hits both alike
            lmlib_runs.append(time_prepare(files, tokenizer_json, workers, tmp / f"out{r}"))
            peer_runs.append(time_tokenizers(files, tokenizer_json))
    if lmlib_runs[0][0] != peer_runs[0][0]:
        raise SystemExit(f"token counts differ: lmlib {lmlib_runs[0][0]:,} "
                         f"tokenizers {peer_runs[0][0]:,}")
    tokens = lmlib_runs[0][0]
    rates = {}
    for name, runs, used in (("lmlib prepare", lmlib_runs, workers),
                             ("tokenizers batch encode", peer_runs, cores)):
        per_core = [tokens / seconds / used for _, seconds in runs]
        rates[name] = statistics.median(per_core)
        print(f"{name:>24}: {rates[name]:,.0f} tokens/s per core (median of {repeats}, "
              f"{min(per_core):,.0f}-{max(per_core):,.0f}; {used} cores, {tokens:,} tokens, "
              f"{num_files} files)", flush=True)
    print(f"prepare / tokenizers per core: "
          f"{rates['lmlib prepare'] / rates['tokenizers batch encode']:.2f}x", flush=True)


def loader_batches_per_sec(seq_len: int, batch_size: int, windows: int) -> float:
    """Batches/s of the Trainer's pipeline over the prepared embedded corpus, timed over
    `windows` row-shuffle windows: rows come out of a full window in a burst, then the next
    window is packed, so only whole windows give the rate."""
    data = prepare_data(PretrainData())
    iterator = iter(data.dataset("train", seq_len=seq_len, batch_size=batch_size, seed=0,
                                 shuffle=True, repeat=True))
    next(iterator)  # opening the shards is start-up, not rate
    batches = windows * data.row_shuffle_window // batch_size
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


def step_seconds(experiment, steps: int = 10, warmup: int = 3) -> float:
    """Median seconds of a resolved experiment's train step as it trains (batch size, compute
    dtype, loss chunks) on random tokens: benchmark.py's lmlib side, the data left out."""
    import jax.numpy as jnp

    from benchmarks.benchmark import lmlib_runner, time_steps

    trainer = experiment.trainer
    runner = lmlib_runner(experiment.model, trainer.batch_size, trainer.dtypes[1] == jnp.bfloat16,
                          steps + warmup, trainer.loss_chunk_len)
    return statistics.median(time_steps(runner, steps, warmup))


def bench_loader(windows: int) -> None:
    import jax

    from benchmarks.presets import PRESETS
    from lmlib.experiment import resolve
    from lmlib.train.metrics import PEAK_FLOPS

    demo = resolve("StdlibLlama")
    seq, batch = demo.model.seq_len, demo.trainer.batch_size
    loader = loader_batches_per_sec(seq, batch, windows)
    needed = 1 / step_seconds(demo)
    print(f"demo ({batch}x{seq}): loader {loader:,.1f} batches/s, the step consumes "
          f"{needed:,.1f} batches/s on {jax.device_count()} {jax.devices()[0].platform} "
          f"device(s): {loader / needed:.1f}x headroom", flush=True)

    config, batch = PRESETS["llama_1b"](), 8
    loader = loader_batches_per_sec(config.seq_len, batch, windows)
    tokens_per_sec = 0.5 * PEAK_FLOPS["h100"] / config.flops_per_token()
    needed = tokens_per_sec / (batch * config.seq_len)
    print(f"~1B ({batch}x{config.seq_len} per device): loader {loader:,.2f} batches/s "
          f"({loader * batch * config.seq_len:,.0f} tokens/s, one process); one H100 at 50% "
          f"MFU consumes {needed:,.2f} batches/s ({tokens_per_sec:,.0f} tokens/s): "
          f"{loader / needed:.1f}x headroom per GPU", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["prepare", "loader", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="prepare processes; 0 = one per core")
    parser.add_argument("--files", type=int, default=8, help="JSONL files the corpus is split into")
    parser.add_argument("--copies", type=int, default=4,
                        help="times the corpus is repeated (start-up costs weigh less)")
    parser.add_argument("--windows", type=int, default=8,
                        help="row-shuffle windows (1,024 rows each) the loader is timed over")
    args = parser.parse_args()
    xla_flags.set_defaults()  # lmlib's, as lmlib.main sets them, before JAX starts
    if args.part in ("prepare", "both"):
        bench_prepare(args.repeats, args.workers, args.files, args.copies)
    if args.part in ("loader", "both"):
        bench_loader(args.windows)


if __name__ == "__main__":
    main()
