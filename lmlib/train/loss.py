"""Next-token cross-entropy that never holds float32 logits for the whole batch at once."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits_btv: jax.Array, targets_bt: jax.Array,
                       weights_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted token losses, sum of weights), with the softmax in float32."""
    logits_btv = logits_btv.astype(jnp.float32)
    log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    return jnp.sum((log_z_bt - target_logit_bt) * weights_bt), jnp.sum(weights_bt)


def chunked_cross_entropy(hidden_btd: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array,
                          logits_fn: Callable[[jax.Array], jax.Array],
                          chunk_len: int) -> tuple[jax.Array, jax.Array]:
    """cross_entropy_sums(logits_fn(hidden)) computed `chunk_len` positions at a time.

    A scan over sequence chunks with each chunk rematerialised: peak memory holds the logits of
    one chunk (B * chunk_len * V), in the forward and the backward pass alike.
    """
    batch, length, dim = hidden_btd.shape
    if chunk_len <= 0 or chunk_len >= length:
        return cross_entropy_sums(logits_fn(hidden_btd), targets_bt, weights_bt)
    if length % chunk_len:
        raise ValueError(f"sequence length {length} is not a multiple of chunk {chunk_len}")
    num_chunks = length // chunk_len

    def to_chunks(x):  # (B, T, ...) -> (C, B, T/C, ...)
        return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_len, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def chunk_sums(hidden_bcd, targets_bc, weights_bc):
        return cross_entropy_sums(logits_fn(hidden_bcd), targets_bc, weights_bc)

    def body(carry, chunk):
        loss, weight = chunk_sums(*chunk)
        return (carry[0] + loss, carry[1] + weight), None

    zero = jnp.zeros((), jnp.float32)
    (loss_sum, weight_sum), _ = jax.lax.scan(
        body, (zero, zero), (to_chunks(hidden_btd), to_chunks(targets_bt), to_chunks(weights_bt)))
    return loss_sum, weight_sum
