"""RoPE reads cos and sin from an embedded table; long contexts compute them in place."""

import jax.numpy as jnp
import numpy as np
import pytest

from lmlib.models import rope

SCALINGS = [None, rope.Llama3RopeScaling(8.0, 1.0, 4.0, 64)]


@pytest.mark.parametrize("scaling", SCALINGS, ids=["plain", "llama3"])
def test_the_table_and_the_in_place_angles_rotate_alike(monkeypatch, scaling):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 96, 3, 16)), jnp.float32)
    # Packed rows restart positions at each document; decoding reads a 128-slot cache.
    positions = jnp.asarray(np.stack([np.arange(96), np.arange(96) % 40 + 30]), jnp.int32)
    table = rope.apply_rope(x, positions, 500_000.0, scaling, num_positions=128)
    monkeypatch.setattr(rope, "ROPE_TABLE_MAX_POSITIONS", 0)
    in_place = rope.apply_rope(x, positions, 500_000.0, scaling, num_positions=128)
    np.testing.assert_allclose(table, in_place, atol=2e-5)
    # A rotation keeps each head vector's norm.
    np.testing.assert_allclose(jnp.linalg.norm(table, axis=-1), jnp.linalg.norm(x, axis=-1),
                               rtol=1e-5)


def test_a_position_past_the_table_reads_nan_not_another_angle():
    x = jnp.ones((1, 4, 1, 8), jnp.float32)
    out = rope.apply_rope(x, jnp.asarray([[0, 1, 2, 4]]), 10_000.0)  # 4 positions: 0..3
    assert np.isfinite(out[0, :3]).all()
    assert np.isnan(out[0, 3]).all()
