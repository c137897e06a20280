"""The train and eval steps: loss, gradients accumulated over microbatches, one AdamW update."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lmlib.mesh import constrain
from lmlib.train.loss import chunked_cross_entropy
from lmlib.train.state import TrainState

Batch = dict[str, jax.Array]  # tokens, targets, positions, segment_ids: (B, T) int32; weights


@dataclasses.dataclass(frozen=True)
class StepConfig:
    compute_dtype: jnp.dtype  # parameters are cast to it for the forward pass
    num_microbatches: int  # gradient accumulation steps per optimizer step
    loss_chunk_len: int  # positions per chunk of the cross-entropy


def random_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> Batch:
    """Random tokens in the layout the train step reads, one document a row: what the
    benchmarks and profiles time, leaving the data pipeline out."""
    shape = (batch_size, seq_len)
    tokens = np.random.default_rng(seed).integers(0, vocab_size, shape, dtype=np.int32)
    return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape),
            "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}


def loss_sums(params, graphdef: nnx.GraphDef, batch: Batch,
              config: StepConfig) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, number of weighted tokens) of one batch."""
    compute_params = jax.tree.map(lambda p: p.astype(config.compute_dtype), params)
    model = nnx.merge(graphdef, compute_params)
    hidden_btd = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    return chunked_cross_entropy(hidden_btd, batch["targets"], batch["weights"], model.logits,
                                 config.loss_chunk_len)


def _split_microbatches(batch: Batch, num: int) -> Batch:
    """(B, T) -> (num, B/num, T). Microbatch j takes rows j, j+num, ...: each one is spread over
    every device, like the whole batch, instead of living on a slice of them."""
    def split(x):
        x = x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
        return constrain(x, (None, "act_batch", "act_length"))
    return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, config: StepConfig
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    grad_fn = jax.value_and_grad(
        lambda p, b: loss_sums(p, graphdef, b, config), has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        def accumulate(carry, microbatch):
            grads, loss, weight = carry
            (mb_loss, mb_weight), mb_grads = grad_fn(state.params, microbatch)
            return (jax.tree.map(jnp.add, grads, mb_grads), loss + mb_loss,
                    weight + mb_weight), None

        zero = jnp.zeros((), jnp.float32)
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, loss_sum, weight_sum), _ = jax.lax.scan(
            accumulate, (zeros, zero, zero),
            _split_microbatches(batch, config.num_microbatches))
        # Mean over every weighted token of the whole batch, however it was split.
        scale = 1.0 / jnp.maximum(weight_sum, 1.0)
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_sum * scale,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "update_norm": optax.tree.norm(updates),
            "learning_rate": schedule(state.step),
            "tokens": weight_sum,
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, config: StepConfig
                   ) -> Callable[[dict, Batch], tuple[jax.Array, jax.Array]]:
    def eval_step(params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        return loss_sums(params, graphdef, batch, config)
    return eval_step
