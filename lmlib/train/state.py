"""TrainState, created directly in its shardings: a 7B model never exists whole on one host."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lmlib.mesh import param_shardings
from lmlib.models import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: dict[str, Any]  # nested dict of float32 arrays (an nnx "pure dict")
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The model's structure and the sharding of every TrainState leaf on one mesh."""

    graphdef: nnx.GraphDef
    shardings: TrainState
    init: Callable[..., TrainState]  # pure, (params=None) -> state: jit with out_shardings


def state_layout(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                 seed: int) -> StateLayout:
    """Shapes and shardings from abstract evaluation only; nothing is allocated."""
    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: config.make(nnx.Rngs(seed))))
    params_sharding = nnx.to_pure_dict(param_shardings(abstract_params, mesh))

    def init(params=None) -> TrainState:
        if params is None:
            params = nnx.to_pure_dict(nnx.state(config.make(nnx.Rngs(seed))))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))

    replicated = NamedSharding(mesh, PartitionSpec())
    # Optimizer moments take their parameter's sharding; counters and the like are replicated.
    opt_sharding = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, jax.eval_shape(init).opt_state,
        params_sharding, transform_non_params=lambda _: replicated)
    shardings = TrainState(step=replicated, params=params_sharding, opt_state=opt_sharding)
    return StateLayout(graphdef, shardings, init)


def abstract_state(layout: StateLayout) -> TrainState:
    """The TrainState as ShapeDtypeStructs in their shardings: a target for compile or restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        jax.eval_shape(layout.init), layout.shardings)


def state_bytes(layout: StateLayout) -> int:
    """The size of the whole TrainState (what a checkpoint holds), in bytes."""
    return sum(math.prod(x.shape) * x.dtype.itemsize
               for x in jax.tree.leaves(jax.eval_shape(layout.init)))


def init_state(layout: StateLayout, params=None) -> TrainState:
    """A fresh TrainState made inside jit, each leaf born in its sharding; from `params` (already
    placed, e.g. restored) when given, else from the model's initialisers."""
    if params is None:
        return jax.jit(layout.init, out_shardings=layout.shardings)()
    return jax.jit(layout.init, out_shardings=layout.shardings)(params)
