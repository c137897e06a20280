"""The numeric primitives of the models: parameter creation with logical axis names, and the
einsum every matmul goes through (with its bfloat16 backward for XLA:CPU).

Shape letters in names are those of lmlib/models/layers.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
          names: Sequence[str]) -> nnx.Param:
    """A float32 parameter annotated with logical axis names (mapped to the mesh by lmlib.mesh)."""
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32),
                     out_sharding=tuple(names), eager_sharding=False)


def normal(stddev: float) -> Initializer:
    return nnx.initializers.normal(stddev)


zeros = nnx.initializers.zeros
ones = nnx.initializers.ones


def einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """`jnp.einsum` of an activation and a weight, for every matmul of the models.

    On a CPU with bfloat16 inputs, the products come out in float32 and are rounded once: XLA:CPU
    runs bf16 x bf16 -> f32 dots 2.7x faster than bf16 -> bf16 ones (860 against 320 GFLOP/s
    on the demo's MLP shapes, benchmarks/profile_step.py), and the backward pass is written to do the
    same (autodiff would make its dots f32 x f32). Elsewhere, and in float32, plain einsum.
    """
    if x.dtype != jnp.bfloat16 or jax.default_backend() != "cpu":
        return jnp.einsum(spec, x, w)
    return _bf16_einsum(spec, x, w)


def _f32_dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bf16_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    return _f32_dot(spec, x, w).astype(x.dtype)


def _bf16_einsum_fwd(spec, x, w):
    return _bf16_einsum(spec, x, w), (x, w)


def _bf16_einsum_bwd(spec, residuals, ct):
    # "xs,ws->os": each index is in two of the three operands, so each gradient is one einsum.
    x, w = residuals
    x_spec, rest = spec.split(",")
    w_spec, out_spec = rest.split("->")
    ct = ct.astype(x.dtype)
    return (_f32_dot(f"{out_spec},{w_spec}->{x_spec}", ct, w).astype(x.dtype),
            _f32_dot(f"{x_spec},{out_spec}->{w_spec}", x, ct).astype(w.dtype))


_bf16_einsum.defvjp(_bf16_einsum_fwd, _bf16_einsum_bwd)
