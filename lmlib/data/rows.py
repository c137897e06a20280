"""Rows of tokens -> the batches a process trains on, for pretraining and finetuning alike.

The order a source is read in (shuffled by seed, repeated for training), a row of seq_len + 1
tokens -> model inputs (tokens, targets, positions, segment ids, loss weights), global batches
-> this process's block of each (the last eval batch filled up with rows that weigh nothing),
and the iterator state restored from a checkpoint.
"""

from __future__ import annotations

import functools

import grain
import numpy as np


def read_order(dataset: grain.MapDataset, *, seed: int, shuffle: bool, repeat: bool
               ) -> grain.MapDataset:
    """The source in the order it is read: shuffled by `seed` (reshuffled each epoch), and
    repeated without end where `repeat` (training)."""
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    return dataset.repeat() if repeat else dataset


def model_inputs(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One packed row of seq_len + 1 tokens -> next-token inputs and targets.

    Positions restart at 0 at each document start and at the row start (a document split across
    rows continues in the next row from position 0), so they never exceed seq_len. The target of
    the last token of one document is the first token of the next: its weight is 0. A row with a
    "loss_mask" (supervised data) also gives 0 weight to the targets it masks (the prompt).
    """
    tokens, segments = row["tokens"], row["tokens_segment_ids"]
    inputs, targets = tokens[:-1], tokens[1:]
    input_segments, target_segments = segments[:-1], segments[1:]
    starts = np.r_[True, input_segments[1:] != input_segments[:-1]]
    index = np.arange(len(inputs))
    positions = index - np.maximum.accumulate(np.where(starts, index, 0))
    weights = (input_segments == target_segments) & (input_segments != 0)
    if "loss_mask" in row:
        weights &= row["loss_mask"][1:].astype(bool)
    return {
        "tokens": inputs.astype(np.int32),
        "targets": targets.astype(np.int32),
        "positions": positions.astype(np.int32),
        "segment_ids": input_segments.astype(np.int32),
        "weights": weights.astype(np.float32),
    }


def process_batches(rows: grain.IterDataset, batch_size: int, process_index: int,
                    process_count: int, *, complete: bool = False) -> grain.IterDataset:
    """Global batches of `batch_size * process_count` rows -> this process's block of each.

    `complete` (evaluation) keeps the last, partial global batch, filled up with rows that
    weigh nothing, so that every row of the split is scored whatever the batch size and the
    number of processes; otherwise the remainder is dropped (training repeats the data)."""
    global_batch = batch_size * process_count
    batches = rows.batch(global_batch, drop_remainder=not complete)
    if complete:
        batches = batches.map(functools.partial(_fill_batch, size=global_batch))
    if process_count == 1:
        return batches
    block = slice(process_index * batch_size, (process_index + 1) * batch_size)
    return batches.map(lambda batch: {k: v[block] for k, v in batch.items()})


def _fill_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """A batch of fewer than `size` rows, completed with zero rows: segment 0 and weight 0, so
    nothing attends to them or learns from them."""
    missing = size - len(batch["tokens"])
    if not missing:
        return batch
    return {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)])
            for k, v in batch.items()}


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def restore_iterator_state(iterator: grain.DatasetIterator, state: dict) -> None:
    """Sets a state that went through JSON (in a checkpoint) on a fresh iterator.

    JSON turns tuples into lists, and Grain's concat-then-split packer compares its remainder
    slice with the tuple (-1, -1) to mean "empty": a list there silently replays wrong rows.
    Grain states hold no lists of their own, so every list goes back to a tuple.
    """
    iterator.set_state(_lists_to_tuples(state))
