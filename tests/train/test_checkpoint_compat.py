"""Checkpoints written by earlier lmlib versions still restore."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lmlib.train.checkpoint import CheckpointConfig, Checkpointer


def test_a_compressed_training_checkpoint_from_before_2026_11_27_restores(tmp_path):
    """Training checkpoints were Orbax StandardSave items, zstd-compressed, until 2026-11-27."""
    state = {"params": {"w": jnp.arange(12.0).reshape(3, 4)}, "step": jnp.int32(7)}
    old = ocp.CheckpointManager(tmp_path, item_names=("state", "meta"))
    old.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave({"step": 5})))
    old.wait_until_finished()
    old.close()

    checkpointer = Checkpointer(tmp_path, CheckpointConfig(save_interval=""))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = checkpointer.restore(checkpointer.last_good, abstract)
    checkpointer.close()
    np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])
    assert int(restored["step"]) == 7
