"""Rotary position embeddings: the frequencies (with Llama 3.1 scaling), their cos/sin tables,
and the rotation of queries and keys.

Shape letters in names are those of lmlib/models/layers.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1 long-context RoPE: wavelengths longer than original_seq_len / low_freq_factor
    are stretched by `factor`, those shorter than original_seq_len / high_freq_factor are kept,
    and a linear ramp blends the two in between (HF rope_type "llama3")."""
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_seq_len: int


def rope_inv_freq(head_dim: int, theta: float,
                  scaling: Llama3RopeScaling | None = None) -> np.ndarray:
    """(H/2,) rotation frequencies in float32, as HF computes them so that logits match: the
    power is taken in float64 and rounded once, which gives torch's float32 power."""
    exponent_h = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    power_h = (np.float64(np.float32(theta)) ** exponent_h.astype(np.float64)).astype(np.float32)
    inv_freq_h = np.float32(1.0) / power_h
    if scaling is None:
        return inv_freq_h
    s = scaling
    wavelen_h = 2 * math.pi / inv_freq_h
    # 0 for long wavelengths (fully stretched), 1 for short ones (kept), linear in between.
    ramp_h = np.clip((s.original_seq_len / wavelen_h - s.low_freq_factor)
                     / (s.high_freq_factor - s.low_freq_factor), 0.0, 1.0)
    return ((1 - ramp_h) * inv_freq_h / s.factor + ramp_h * inv_freq_h).astype(np.float32)


# RoPE's cos and sin are read from a table of every position a call can see, computed once in
# NumPy and embedded in the program. Computed from the positions instead, XLA fuses sin and cos
# into each consumer and evaluates them again for every head and both halves: one rotation of
# the demo's queries took 1.6 ms instead of 0.22. Longer tables than this are not embedded
# (8 MB at head dim 128): their angles are computed in place.
ROPE_TABLE_MAX_POSITIONS = 16384


@functools.lru_cache(maxsize=32)
def rope_table(head_dim: int, theta: float, scaling: Llama3RopeScaling | None,
               num_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of positions 0 .. num_positions - 1, each (num_positions, H/2) float32."""
    angles = (np.arange(num_positions, dtype=np.float32)[:, None]
              * rope_inv_freq(head_dim, theta, scaling)).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x_btnh: jax.Array, positions_bt: jax.Array, theta: float,
               scaling: Llama3RopeScaling | None = None,
               num_positions: int | None = None) -> jax.Array:
    """Rotary position embedding (Su et al. 2021) in the rotate-half layout of HF Llama.

    Positions must be below `num_positions` (default T; decoding passes the cache's length);
    a position past the table reads NaN, never another position's angle.
    """
    num_positions = num_positions or x_btnh.shape[1]
    if num_positions <= ROPE_TABLE_MAX_POSITIONS:
        cos_ph, sin_ph = rope_table(x_btnh.shape[-1], theta, scaling, num_positions)
        cos = jnp.take(cos_ph, positions_bt, axis=0, mode="fill", fill_value=jnp.nan)
        sin = jnp.take(sin_ph, positions_bt, axis=0, mode="fill", fill_value=jnp.nan)
    else:
        angles = positions_bt[..., None].astype(jnp.float32) * rope_inv_freq(
            x_btnh.shape[-1], theta, scaling)
        cos, sin = jnp.cos(angles), jnp.sin(angles)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (B, T, 1, H/2)
    x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_btnh.dtype)
