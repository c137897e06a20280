"""The vocabulary of a family's Hugging Face map: how HF tensors hold lmlib parameters (Layout,
Row) and the checks a config reader shares. lmlib.hf drives the tables; each family declares its
own (lmlib/models/<family>_hf.py), so this module imports neither.

Shapes in names: D model width, N query heads, K key/value heads, H head dim, F MLP width,
V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmlib.errors import ConfigError

TRAIN_SEQ_LEN = 4096  # the training row length of an imported model, at most


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one HF tensor holds one or more lmlib parameters (of one layer).

    transposed: HF stores the matrix (out, in) as torch.nn.Linear does; lmlib and GPT-2's Conv1D
        store (in, out).
    in_axes: how many leading lmlib axes make HF's input axis (the rest make its output axis);
        0 flattens to a vector; None keeps the shape as it is.
    parts: lmlib parameters concatenated along HF's output axis (GPT-2's fused q|k|v).
    """
    in_axes: int | None = None
    transposed: bool = False
    parts: int = 1

    def to_lmlib(self, hf: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        matrix = hf.T if self.transposed else hf
        pieces = np.split(matrix, self.parts, axis=-1) if self.parts > 1 else [matrix]
        return [piece.reshape(shape) for piece, shape in zip(pieces, shapes, strict=True)]

    def to_hf(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        matrices = [self._flatten(a) for a in arrays]
        matrix = np.concatenate(matrices, axis=-1) if len(matrices) > 1 else matrices[0]
        return np.ascontiguousarray(matrix.T if self.transposed else matrix)

    def _flatten(self, array: np.ndarray) -> np.ndarray:
        if self.in_axes is None:
            return array
        if self.in_axes == 0:
            return array.reshape(-1)
        return array.reshape(math.prod(array.shape[:self.in_axes]), -1)


KEEP = Layout()
LINEAR = Layout(in_axes=1, transposed=True)  # nn.Linear (out, in) <-> (D, ...) in lmlib
LINEAR_OUT = Layout(in_axes=2, transposed=True)  # o_proj (D, N*H) <-> (N, H, D)
FLAT = Layout(in_axes=0)  # a bias (N*H,) <-> (N, H)


@dataclasses.dataclass(frozen=True)
class Row:
    """One HF tensor. A `{i}` in the name makes it a per-layer row, stacked on lmlib's L axis."""
    hf_name: str
    paths: tuple[str, ...]  # dotted paths into the pure params dict
    layout: Layout = KEEP

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def require(hf: dict, key: str, allowed: Sequence[Any]) -> None:
    """Refuses an HF config whose `key` (its first allowed value when absent) lmlib cannot run."""
    if hf.get(key, allowed[0]) not in allowed:
        raise ConfigError(f"Hugging Face {hf['model_type']} config {key}={hf[key]!r} is not "
                          f"supported by lmlib (supported: {list(allowed)})")
