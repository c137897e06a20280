"""Supervised finetuning data: prompt/response examples, with the loss on the response only.

    records (JSONL, Parquet, a `datasets` directory or hub id; or the embedded docstring demo)
      -> preprocess: any record -> {"prompt": str, "response": str}, registered per dataset name
         (LLM Foundry style) or given as module:function
      -> tokens [BOS] prompt response [EOS], loss mask 1 on the response and EOS
      -> truncated from the response end to seq_len + 1 tokens (counted and reported)
      -> Grain: shuffle -> rows, "packed" (several examples per row,
         first fit, never split) or "padded" (one per row) -> the model inputs pretraining also
         uses (lmlib.data.rows), whose loss weights are the targets' loss mask -> global
         batches -> this process's block of each
Examples are tokenized in memory when the run starts: SFT sets are small (Alpaca: 52k examples,
a few seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grain
import numpy as np

from lmlib.data import prepare as prepare_lib
from lmlib.data import sources, stdlib
from lmlib.data.pretrain import PretrainData, TokenizerConfig, stdlib_tokenizer
from lmlib.data.rows import model_inputs, process_batches, read_order
from lmlib.data.tokenizer import Tokenizer, load_tokenizer
from lmlib.errors import ConfigError, check_choices

Example = dict[str, str]  # {"prompt": ..., "response": ...}

# ----------------------------------------------------------------------------- templates

TEMPLATES: dict[str, Callable[[dict], str]] = {}
PREPROCESSORS: dict[str, Callable[[dict], Example]] = {}


def template(name: str):
    """Registers fn(record) -> prompt text under `name`."""
    def register(fn: Callable[[dict], str]) -> Callable[[dict], str]:
        TEMPLATES[name] = fn
        return fn
    return register


def preprocessor(name: str):
    """Registers fn(record) -> {"prompt", "response"} for the dataset `name` (data.preprocess)."""
    def register(fn: Callable[[dict], Example]) -> Callable[[dict], Example]:
        PREPROCESSORS[name] = fn
        return fn
    return register


# Stanford Alpaca's prompts (tatsu-lab/stanford_alpaca, train.py), character for character.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:")


@template("alpaca")
def alpaca_prompt(record: dict) -> str:
    if record.get("input", ""):
        return ALPACA_PROMPT_INPUT.format_map(record)
    return ALPACA_PROMPT_NO_INPUT.format_map(record)


@preprocessor("tatsu-lab/alpaca")
def alpaca(record: dict) -> Example:
    """{"instruction", "input", "output"} (the Alpaca JSON and hub dataset) -> the Alpaca prompt."""
    return {"prompt": alpaca_prompt(record), "response": record["output"]}


def _identity(record: dict) -> Example:
    return {"prompt": record["prompt"], "response": record["response"]}


def find_preprocessor(name: str) -> Callable[[dict], Example]:
    """"" -> records are prompt/response already; a registered name; or module:function."""
    if not name:
        return _identity
    if name in PREPROCESSORS:
        return PREPROCESSORS[name]
    module, sep, function = name.partition(":")
    if not sep:
        raise ConfigError(f"data.preprocess={name!r}: not a registered preprocessor "
                          f"({', '.join(sorted(PREPROCESSORS))}) nor module:function")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"data.preprocess={name!r}: {e}") from None


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class SupervisedData:
    """Prompt/response examples for finetuning; the loss is on response tokens only."""

    source: str = "urls"  # "urls": your files in train_urls; "stdlib": the docstring demo
    train_urls: str = ""  # comma-separated: JSONL, Parquet, a `datasets` directory or hub id
    validation_urls: str = ""  # "" = hold out validation_fraction of the train examples
    validation_fraction: float = 0.05  # chosen by a hash of the prompt and response
    format: str = "auto"  # auto (by extension or layout), jsonl, parquet, hf, tfds
    preprocess: str = ""  # record -> prompt/response: "" (already), tatsu-lab/alpaca, mod:fn
    layout: str = "packed"  # packed: several examples per row; padded: one per row
    on_error: str = "stop"  # a bad record stops with file:line: reason; "skip" counts them
    tokenizer: TokenizerConfig = TokenizerConfig()  # path: a tokenizer.model or tokenizer.json
    cache_dir: str = ""  # the demo's trained tokenizer; "" = $LMLIB_CACHE or ~/.cache/lmlib

    @functools.cached_property
    def mixture(self) -> sources.Mixture:
        """train_urls (one dataset: no weights) and validation_urls, parsed once and kept."""
        return sources.Mixture.unweighted(self.train_urls, self.validation_urls, self.format)

    def validate(self) -> None:
        choices = {"source": ("urls", "stdlib"), "format": ("auto", "jsonl", "parquet", "hf", "tfds"),
                   "layout": ("packed", "padded"), "on_error": ("stop", "skip")}
        check_choices(self, "data", choices)
        if self.source == "urls" and not self.train_urls:
            raise ConfigError("supervised data needs data.train_urls (comma-separated URLs)")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"data.validation_fraction={self.validation_fraction}: expected "
                              "a fraction in [0, 1)")
        find_preprocessor(self.preprocess)


# ----------------------------------------------------------------------------- examples


def _records(config: SupervisedData, split: str) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """(file, line, record, reason) of one split's inputs; no validation_urls: the train inputs."""
    if config.source == "stdlib":
        yield from ((f, line, r, None) for f, line, r in stdlib.stdlib_docstring_records(split))
        return
    mixture = config.mixture
    if split == "eval" and config.validation_urls:
        urls = mixture.validation
    else:  # held out of the train inputs (their train split, for a `datasets` input)
        urls, split = mixture.train_urls, "train"
    options = sources.ReadOptions(format=config.format, on_error=config.on_error)
    for url in urls:
        for file in sources.expand_url(url, mixture.format):
            for line, record, reason in sources.read_records(file, split, options):
                yield file, line, record, reason


def read_examples(config: SupervisedData, split: str) -> tuple[list[Example], sources.SkipCounter]:
    """One split's prompt/response pairs. A bad record stops with `file:line: reason`, or is
    counted where on_error is "skip"."""
    preprocess = find_preprocessor(config.preprocess)
    held_out = config.source == "urls" and not config.validation_urls
    examples, skipped = [], sources.SkipCounter()
    for file, line, record, reason in _records(config, split):
        if reason is None:
            example, reason = _preprocess(preprocess, record)
        if reason is not None:
            if config.on_error == "skip":
                skipped.add(file, line, reason)
                continue
            raise sources.DataError(f"{file}:{line}: {reason}")
        if held_out and prepare_lib.is_held_out(example["prompt"] + example["response"],
                                                config.validation_fraction) != (split == "eval"):
            continue
        examples.append(example)
    return examples, skipped


def _preprocess(fn: Callable[[dict], Example], record: dict) -> tuple[Example | None, str | None]:
    try:
        example = fn(record)
    except KeyError as e:
        return None, f"no {e.args[0]!r} field (set data.preprocess?)"
    except (TypeError, ValueError, AttributeError) as e:
        return None, f"data.preprocess failed: {e}"
    for key in ("prompt", "response"):
        value = example.get(key) if isinstance(example, dict) else None
        if not isinstance(value, str):
            return None, f"{key!r} is {type(value).__name__}, not a string"
    return example, None


def tokenize_example(tokenizer: Tokenizer, example: Example) -> dict[str, np.ndarray]:
    """[BOS] prompt response [EOS] and its loss mask (1 on the response and EOS).

    As Stanford Alpaca: the text is encoded whole and the prompt's tokens are those it shares with
    the prompt encoded alone, so a token that straddles the boundary counts as response."""
    prompt = tokenizer.encode(example["prompt"])
    whole = tokenizer.encode(example["prompt"] + example["response"])
    shared = next((i for i, (a, b) in enumerate(zip(prompt, whole)) if a != b),
                  min(len(prompt), len(whole)))
    tokens = np.asarray([*tokenizer.with_bos(whole), tokenizer.eos_id], np.int32)
    mask = np.zeros(len(tokens), np.int32)
    mask[len(tokens) - len(whole) - 1 + shared:] = 1
    return {"tokens": tokens, "loss_mask": mask}


@dataclasses.dataclass
class Counts:
    examples: int = 0
    truncated: int = 0  # responses cut at seq_len
    dropped: int = 0  # prompts that leave no room for a response token
    tokens: int = 0
    response_tokens: int = 0


def truncate(example: dict[str, np.ndarray], max_len: int, counts: Counts
             ) -> dict[str, np.ndarray] | None:
    """Cuts an example to `max_len` tokens from the response end; None when its prompt alone
    fills them (no response token left to learn from)."""
    if len(example["tokens"]) > max_len:
        if example["loss_mask"][max_len - 1] == 0:
            counts.dropped += 1
            return None
        counts.truncated += 1
        example = {k: v[:max_len] for k, v in example.items()}
    counts.examples += 1
    counts.tokens += len(example["tokens"])
    counts.response_tokens += int(example["loss_mask"][1:].sum())
    return example


# ----------------------------------------------------------------------------- the pipeline


def sft_tokenizer(config: SupervisedData, path: str | Path | None = None) -> Tokenizer:
    """`path` (a run's own tokenizer), else the configured one (init_from's, or
    data.tokenizer.path), else the embedded corpus's, which the demo shares with StdlibLlama so
    that its checkpoints can be finetuned."""
    if path or config.tokenizer.path:
        return with_pad(load_tokenizer(path or config.tokenizer.path))
    if config.source == "urls":
        print("data: no init_from or data.tokenizer.path: using the embedded corpus's "
              f"{config.tokenizer.vocab_size}-piece tokenizer", flush=True)
    return with_pad(load_tokenizer(stdlib_tokenizer(
        PretrainData(tokenizer=config.tokenizer, cache_dir=config.cache_dir))))


def with_pad(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with a pad id: its own, or a new one after its vocabulary ("[PAD]", as
    Stanford Alpaca adds to Llama's), for which the model's embedding grows by a row."""
    if tokenizer.pad_id is not None:
        return tokenizer
    padded = type(tokenizer).__new__(type(tokenizer))
    padded.__dict__.update(tokenizer.__dict__, pad_id=tokenizer.vocab_size,
                           vocab_size=tokenizer.vocab_size + 1)
    return padded


@dataclasses.dataclass(frozen=True)
class SupervisedExamples:
    """Tokenized train and eval examples; `dataset()` is the Trainer's entry point, as
    PreparedData's is for pretraining."""

    tokenizer: Tokenizer
    splits: dict[str, list[dict[str, np.ndarray]]]
    layout: str
    fingerprint: str  # of the inputs: files, sizes, dates and reader options

    def dataset(self, split: str, *, seq_len: int, batch_size: int, seed: int, shuffle: bool,
                repeat: bool, process_index: int = 0, process_count: int = 1
                ) -> grain.IterDataset:
        return example_rows(self.splits[split], seq_len=seq_len, batch_size=batch_size,
                            seed=seed, shuffle=shuffle, repeat=repeat, layout=self.layout,
                            pad_id=self.tokenizer.pad_id, process_index=process_index,
                            process_count=process_count)


def inputs_fingerprint(config: SupervisedData) -> str:
    """Changes when an input file is added, removed, resized or touched, or read otherwise."""
    if config.source == "stdlib":
        files = [str(p) for split in ("train", "eval") for p in stdlib.stdlib_files(split)]
    else:
        mixture = config.mixture
        files = [f for url in (*mixture.train_urls, *mixture.validation)
                 for f in sources.expand_url(url, mixture.format)]
    described = json.dumps([{f: sources.file_stamp(f) for f in files}, config.source,
                            config.format, config.preprocess, config.validation_fraction],
                           sort_keys=True)
    return "sft-" + hashlib.sha256(described.encode()).hexdigest()[:16]


def prepare_supervised(config: SupervisedData, seq_len: int,
                       tokenizer_path: str | Path | None = None) -> SupervisedExamples:
    """Reads, preprocesses and tokenizes both splits, reporting counts, skips and truncation.
    `tokenizer_path`: a run's own tokenizer, which then replaces the configured one."""
    tokenizer = sft_tokenizer(config, tokenizer_path)
    if config.source == "urls" and not config.validation_urls:
        print(f"data: no validation_urls; holding out {config.validation_fraction:.2%} of the "
              "train examples (by a hash of their text) for validation", flush=True)
    splits = {}
    for split in ("train", "eval"):
        examples, skipped = read_examples(config, split)
        prepare_lib.report_skipped(skipped.as_dict())
        counts = Counts()
        tokenized = [truncate(tokenize_example(tokenizer, e), seq_len + 1, counts)
                     for e in examples]
        splits[split] = [e for e in tokenized if e is not None]
        summary = (f"{counts.examples:,} examples, {counts.tokens:,} tokens "
                   f"({counts.response_tokens / max(counts.tokens, 1):.0%} response); "
                   f"{counts.truncated:,} truncated at seq_len={seq_len}, {counts.dropped:,} "
                   "dropped (prompt alone fills seq_len)")
        if not splits[split]:
            raise ConfigError(f"supervised data: no {split} examples left: {summary}")
        print(f"data: {split}: {summary}", flush=True)
    return SupervisedExamples(tokenizer, splits, config.layout, inputs_fingerprint(config))


def example_rows(examples: Sequence[dict[str, np.ndarray]], *, seq_len: int, batch_size: int,
                 seed: int, shuffle: bool, repeat: bool, layout: str, pad_id: int,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """This process's batches of rows of seq_len + 1 tokens, each holding whole examples:
    several ("packed", first fit) or one ("padded"), padding with segment 0, which nothing
    attends to or learns. As in pretraining, every process builds the same global batches and
    keeps its block, so a run is the same on any number of processes."""
    dataset = read_order(grain.MapDataset.source(list(examples)), seed=seed, shuffle=shuffle,
                         repeat=repeat)
    length = {"tokens": seq_len + 1, "loss_mask": seq_len + 1}
    global_batch = batch_size * process_count
    # More bins than rows per batch: an example that fits no open bin closes them all.
    rows = grain.experimental.FirstFitPackIterDataset(
        dataset.to_iter_dataset(), length_struct=length,
        num_packing_bins=max(2 * global_batch, 16) if layout == "packed" else global_batch,
        max_sequences_per_bin=None if layout == "packed" else 1, shuffle_bins=shuffle, seed=seed,
        padding_struct={"tokens": pad_id, "loss_mask": 0})
    return process_batches(rows.map(model_inputs), batch_size, process_index, process_count,
                           complete=not repeat)
