"""The packing pipeline's rows: inputs, shifted targets, positions and loss weights."""

from pathlib import Path

import numpy as np
import pytest

from lmlib.data.rows import model_inputs


def test_model_inputs_restart_positions_and_mask_the_cross_document_target():
    row = {"tokens": np.array([1, 11, 12, 2, 1, 21, 22, 23, 2], np.int32),
           "tokens_segment_ids": np.array([1, 1, 1, 1, 2, 2, 2, 2, 2], np.int32)}
    out = model_inputs(row)
    np.testing.assert_array_equal(out["tokens"], [1, 11, 12, 2, 1, 21, 22, 23])
    np.testing.assert_array_equal(out["targets"], [11, 12, 2, 1, 21, 22, 23, 2])
    np.testing.assert_array_equal(out["positions"], [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(out["segment_ids"], [1, 1, 1, 1, 2, 2, 2, 2])
    # Predicting the next document's BOS from the previous document's EOS is not learnable.
    np.testing.assert_array_equal(out["weights"], [1, 1, 1, 0, 1, 1, 1, 1])


def test_padding_segments_carry_no_weight():
    row = {"tokens": np.array([1, 5, 2, 0, 0], np.int32),
           "tokens_segment_ids": np.array([1, 1, 1, 0, 0], np.int32)}
    np.testing.assert_array_equal(model_inputs(row)["weights"], [1, 1, 0, 0])


def test_iterator_state_through_json_replays_the_same_batches():
    """A checkpoint stores the iterator state as JSON; restoring it must replay exactly."""
    import json

    from lmlib.data.pretrain import PretrainData, packed_dataset, prepare_data
    from lmlib.data.rows import restore_iterator_state

    data = prepare_data(PretrainData())
    dataset = packed_dataset(data.shards("train"), seq_len=64, batch_size=4, seed=0,
                             shuffle=True, repeat=True, row_shuffle_window=32)
    for skip in (0, 3, 11):  # at the start, inside the first window, in the second
        iterator = iter(dataset)
        for _ in range(skip):
            next(iterator)
        state = json.loads(json.dumps(iterator.get_state()))
        expected = [next(iterator)["tokens"] for _ in range(4)]
        restored = iter(dataset)
        restore_iterator_state(restored, state)
        for batch in expected:
            np.testing.assert_array_equal(next(restored)["tokens"], batch)


def test_weights_mix_shards_in_their_proportions(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    from lmlib.data.pretrain import PreparedData, packed_dataset

    paths = []
    for marker in (5, 6):  # every document of a shard carries its marker token
        paths.append(str(tmp_path / f"{marker}.array_record"))
        writer = ArrayRecordWriter(paths[-1], "group_size:1")
        for _ in range(10):
            writer.write(np.array([1, marker, marker, 2], np.int32).tobytes())
        writer.close()
    dataset = packed_dataset(paths, seq_len=399, batch_size=1, seed=0, shuffle=True,
                             repeat=True, weights=[0.75, 0.25])
    tokens = next(iter(dataset))["tokens"]  # 100 documents
    assert np.sum(tokens == 5) / np.sum(tokens == 1) == pytest.approx(2 * 0.75, abs=0.05)

    # The Trainer's entry point applies the mixture weights of the data config.
    manifest = {"splits": {"train": [{"path": Path(p).name, "dataset": i, "documents": 10}
                                     for i, p in enumerate(paths)]}}
    data = PreparedData(tokenizer=None, directory=str(tmp_path), manifest=manifest,
                        fingerprint="", weights=(0.25, 0.75))
    tokens = next(iter(data.dataset("train", seq_len=399, batch_size=1, seed=0, shuffle=True,
                                    repeat=True)))["tokens"]
    assert np.sum(tokens == 6) / np.sum(tokens == 1) == pytest.approx(2 * 0.75, abs=0.05)
