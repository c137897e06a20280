"""The device mesh, the logical axis rules, and the sharding helpers built on them.

Modules name the axes of their parameters and activations logically ("embed", "mlp",
"act_batch"...). One table, LOGICAL_AXIS_RULES, maps each name to mesh axes, so changing the
parallelism of a run is a change of `trainer.mesh.*`, never of the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmlib.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes (None: replicated). Parameters and activations use separate names
# because FSDP shards a weight's embed dimension but never an activation's (MaxText does the same).
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    # Weights: FSDP shards the embed dimension; tensor parallelism shards heads and MLP width
    # (Megatron-style column/row split), and the vocabulary of the embedding and the head.
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,  # the scanned layer axis stays whole: each step of the scan reads one layer.
    "norm": None,
    "positions": None,
    # Activations: the batch splits over every data-parallel axis, features over tensor.
    "act_batch": ("data", "fsdp"),
    "act_length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_head_dim": None,
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; -1 means all devices the other axes leave."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def validate(self) -> None:
        sizes = dataclasses.astuple(self)
        if sizes.count(-1) > 1:
            raise ConfigError("trainer.mesh: at most one of data, fsdp, tensor may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"trainer.mesh: sizes must be positive or -1, got {self}")

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Axis sizes for `num_devices` devices, or a ConfigError that says why they don't fit."""
        sizes = dict(zip(MESH_AXES, dataclasses.astuple(self)))
        known = math.prod(s for s in sizes.values() if s != -1)
        for axis, size in sizes.items():
            if size == -1:
                if num_devices % known:
                    raise ConfigError(
                        f"trainer.mesh: {num_devices} devices cannot be split into "
                        f"{known} x N ({self})")
                sizes[axis] = num_devices // known
        if math.prod(sizes.values()) != num_devices:
            raise ConfigError(
                f"trainer.mesh: data*fsdp*tensor = {math.prod(sizes.values())} but there are "
                f"{num_devices} devices ({self}); set one axis to -1 to take the rest")
        return sizes


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: every device of every process).

    On a multi-slice TPU job the data axis spans the slices and fsdp and tensor stay inside each
    slice: slices talk over the data-centre network (DCN), far slower than the links inside a
    slice (ICI), and data parallelism sends the least over it (one gradient reduction per step).
    Across GPU or CPU hosts the outer axis (data) spans the hosts by the same row-major order.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = config.resolve(len(devices))
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if num_slices > 1:
        if sizes["data"] % num_slices:
            raise ConfigError(
                f"trainer.mesh.data={sizes['data']}: the run spans {num_slices} TPU slices and "
                f"data parallelism goes across them; set trainer.mesh.data to a multiple of "
                f"{num_slices}")
        device_array = mesh_utils.create_hybrid_device_mesh(
            (sizes["data"] // num_slices, sizes["fsdp"], sizes["tensor"]), (num_slices, 1, 1),
            devices, allow_split_physical_axes=True)
    else:  # on a TPU, an order that follows the physical links; elsewhere, devices reshaped
        device_array = mesh_utils.create_device_mesh(
            tuple(sizes[a] for a in MESH_AXES), devices, allow_split_physical_axes=True)
    # Each process feeds its own rows of the batch; the tensor group of a row must therefore
    # live in one process (one host), or several processes would have to feed the same rows.
    processes = np.vectorize(lambda d: d.process_index)(device_array)
    if (processes != processes[..., :1]).any():
        raise ConfigError(f"trainer.mesh.tensor={sizes['tensor']} spans several processes; "
                          "keep tensor parallelism within one host")
    return Mesh(device_array, MESH_AXES)


def logical_to_spec(names: Sequence[str | None] | None) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions have these logical names."""
    if names is None:
        return PartitionSpec()
    return PartitionSpec(*(LOGICAL_AXIS_RULES[n] if n else None for n in names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding inside jit; a no-op outside a mesh context."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, length] input array."""
    return NamedSharding(mesh, logical_to_spec(("act_batch", "act_length")))


def param_shardings(abstract_state, mesh: Mesh):
    """NamedShardings for a tree of nnx Variables carrying `out_sharding` logical names.

    A dimension whose size the mesh axes do not divide is replicated instead (for example a
    vocabulary of 50257 under tensor parallelism), so any model fits any mesh.
    """
    from flax import nnx

    def sharding_of(variable):
        names = variable.get_metadata().get("out_sharding")
        spec = logical_to_spec(names)
        shape = variable.get_value().shape
        fitted = []
        for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
            axis_tuple = (axes,) if isinstance(axes, str) else (axes or ())
            ways = math.prod(mesh.shape[a] for a in axis_tuple)
            fitted.append(axes if dim % ways == 0 else None)
        return NamedSharding(mesh, PartitionSpec(*fitted))

    return jax.tree.map(sharding_of, abstract_state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
