"""A trained model for notebooks and tools: `lmlib.load_model(path).logits(tokens)`."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmlib.models import ModelConfig
from lmlib.train.checkpoint import load_params


class LoadedModel:
    def __init__(self, config: ModelConfig, params):
        self.config = config
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: config.make(nnx.Rngs(0))))
        self.params = jax.tree.map(jnp.asarray, params)

        @jax.jit
        def logits(params, tokens_bt):
            model = nnx.merge(graphdef, params)
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
            hidden_btd = model(tokens_bt, positions_bt, jnp.ones_like(tokens_bt))
            return model.logits(hidden_btd).astype(jnp.float32)

        self._logits = logits

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """int32 [batch, length] -> float32 [batch, length, vocab], in float32 throughout."""
        tokens = np.asarray(tokens, dtype=np.int32)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        return np.asarray(self._logits(self.params, tokens))


def load_model(path: str | Path) -> LoadedModel:
    """Loads a checkpoint: a step directory, a run's checkpoints/ directory (its newest step),
    a run's workdir, or an imported Hugging Face checkpoint; local or gs://bucket/..."""
    return LoadedModel(*load_params(path))
