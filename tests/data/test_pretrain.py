"""The packing pipeline's rows: inputs, shifted targets, positions and loss weights."""

import numpy as np

from lmlib.data.pretrain import _model_inputs


def test_model_inputs_restart_positions_and_mask_the_cross_document_target():
    row = {"tokens": np.array([1, 11, 12, 2, 1, 21, 22, 23, 2], np.int32),
           "tokens_segment_ids": np.array([1, 1, 1, 1, 2, 2, 2, 2, 2], np.int32)}
    out = _model_inputs(row)
    np.testing.assert_array_equal(out["tokens"], [1, 11, 12, 2, 1, 21, 22, 23])
    np.testing.assert_array_equal(out["targets"], [11, 12, 2, 1, 21, 22, 23, 2])
    np.testing.assert_array_equal(out["positions"], [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(out["segment_ids"], [1, 1, 1, 1, 2, 2, 2, 2])
    # Predicting the next document's BOS from the previous document's EOS is not learnable.
    np.testing.assert_array_equal(out["weights"], [1, 1, 1, 0, 1, 1, 1, 1])


def test_padding_segments_carry_no_weight():
    row = {"tokens": np.array([1, 5, 2, 0, 0], np.int32),
           "tokens_segment_ids": np.array([1, 1, 1, 0, 0], np.int32)}
    np.testing.assert_array_equal(_model_inputs(row)["weights"], [1, 1, 0, 0])
