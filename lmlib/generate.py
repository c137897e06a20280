"""Batched sampling with a preallocated KV cache: one prefill, then one token per step.

Prompts of different lengths are left-padded to one length P, so every row writes its next token
into the same cache slot. A row's padding slots are masked out of attention and its positions
start at 0 at its first real token, so a padded row computes exactly what it would alone.
Both the prefill and the step function are compiled once per (batch, P, max_new_tokens) and
sampling settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmlib.models import ModelConfig
from lmlib.models.families import family_of


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (nucleus)
    eos_id: int | None = None  # a row stops at this token
    seed: int = 0


def sample_logits(logits_bv: jax.Array, key: jax.Array, config: SamplingConfig) -> jax.Array:
    """Next token per row from float32 logits (B, V)."""
    if config.temperature == 0:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits_bv = logits_bv / config.temperature
    if config.top_k:
        kth = jax.lax.top_k(logits_bv, config.top_k)[0][:, -1:]
        logits_bv = jnp.where(logits_bv < kth, -jnp.inf, logits_bv)
    if config.top_p < 1.0:
        sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_bv, axis=-1), axis=-1)
        # The smallest logit still inside the nucleus: tokens below it are dropped.
        cutoff = jnp.take_along_axis(
            sorted_bv, jnp.sum(cumulative < config.top_p, axis=-1, keepdims=True), axis=-1)
        logits_bv = jnp.where(logits_bv < cutoff, -jnp.inf, logits_bv)
    return jax.random.categorical(key, logits_bv).astype(jnp.int32)


class Sampler:
    """Generates from `params` of a model; reuse it for many batches (compiled once per shape).

    Each new token is one compiled call (forward, sampling and the EOS bookkeeping together) and
    one transfer of the (B,) tokens to the host, to stream them: at batch 1 on a CPU the step's
    separate eager operations had cost more than the model itself.
    """

    def __init__(self, config: ModelConfig, params, dtype=jnp.float32):
        self.config = config
        self.dtype = dtype
        self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: config.make(nnx.Rngs(0))))
        self.params = params  # may be replaced, e.g. by the training loop's current params
        self._feed = jax.jit(self._feed_impl, static_argnums=(7,), donate_argnums=(1,))

    def _feed_impl(self, params, kv_cache, tokens_bt, start, pad_b, key, done_b,
                   sampling: SamplingConfig):
        """Writes `tokens_bt` (the prompts, then each new token) into cache slots start.. and
        samples the next token of each row, (B, 1) to feed back; a finished row repeats EOS."""
        query_t = start + jnp.arange(tokens_bt.shape[1])
        slot_s = jnp.arange(kv_cache[0].shape[2])
        valid_bs = slot_s[None, :] >= pad_b[:, None]  # padding never attended
        mask_b1ts = (valid_bs[:, None, :] & (slot_s[None, :] <= query_t[:, None])[None])[:, None]
        positions_bt = jnp.maximum(query_t[None, :] - pad_b[:, None], 0)
        model = nnx.merge(self.graphdef, jax.tree.map(lambda p: p.astype(self.dtype), params))
        hidden_btd, kv_cache = model.forward(tokens_bt, positions_bt, mask_b1ts, kv_cache, start)
        logits_bv = model.logits(hidden_btd[:, -1:])[:, 0].astype(jnp.float32)
        key, subkey = jax.random.split(key)
        token_b = sample_logits(logits_bv, subkey, sampling)
        if sampling.eos_id is not None:
            token_b = jnp.where(done_b, sampling.eos_id, token_b)
            done_b = done_b | (token_b == sampling.eos_id)
        return (token_b[:, None], done_b, key), kv_cache

    def _empty_cache(self, batch: int, slots: int):
        c = self.config
        shape = (c.num_layers, batch, slots, c.kv_heads, c.head_size)
        return jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)

    def stream(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig
               ) -> Iterator[np.ndarray]:
        """Yields the next token of every row (B,) as it is produced; finished rows repeat EOS."""
        if not prompts or not all(prompts):
            raise ValueError("every prompt needs at least one token")
        batch, prompt_len = len(prompts), max(map(len, prompts))
        slots = prompt_len + sampling.max_new_tokens
        positions = family_of(self.config).max_positions(self.config)
        if positions is not None and slots > positions:
            raise ValueError(f"prompt + max_new_tokens = {slots} exceeds the model's "
                             f"{positions} learned positions")
        pad = np.asarray([prompt_len - len(p) for p in prompts], np.int32)
        tokens = np.zeros((batch, prompt_len), np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, pad[row]:] = prompt
        cache, pad = self._empty_cache(batch, slots), jnp.asarray(pad)
        key, done = jax.random.key(sampling.seed), jnp.zeros(batch, jnp.bool_)
        tokens_bt, start = jnp.asarray(tokens), 0
        for _ in range(sampling.max_new_tokens):
            (next_bt, done, key), cache = self._feed(self.params, cache, tokens_bt,
                                                     jnp.int32(start), pad, key, done, sampling)
            yield np.asarray(next_bt)[:, 0]
            if np.asarray(done).all():
                return
            tokens_bt, start = next_bt, start + tokens_bt.shape[1]

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 on_token: Callable[[np.ndarray], None] | None = None) -> list[list[int]]:
        """New tokens per row, cut after EOS."""
        columns = []
        for token in self.stream(prompts, sampling):
            columns.append(token)
            if on_token:
                on_token(token)
        rows = np.stack(columns, axis=1) if columns else np.zeros((len(prompts), 0), np.int32)
        out = []
        for row in rows.tolist():
            if sampling.eos_id is not None and sampling.eos_id in row:
                row = row[:row.index(sampling.eos_id) + 1]
            out.append(row)
        return out
