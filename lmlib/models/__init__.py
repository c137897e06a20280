"""Model families. Each config has `make(rngs)` and `flops_per_token()`; each model maps
(tokens, positions, segment_ids) to final hidden states and has `logits(hidden)`. The families
themselves are listed in lmlib.models.families."""

from __future__ import annotations

import math

import jax
from flax import nnx

from lmlib.models.families import ModelConfig
from lmlib.models.gpt2 import Gpt2, Gpt2Config
from lmlib.models.llama import Llama, LlamaConfig

__all__ = ["Gpt2", "Gpt2Config", "Llama", "LlamaConfig", "ModelConfig", "abstract_model", "num_params"]


def abstract_model(config: ModelConfig) -> nnx.Module:
    """The model with shapes and dtypes only: nothing is allocated, even for a 7B config."""
    return nnx.eval_shape(lambda: config.make(nnx.Rngs(0)))


def num_params(config: ModelConfig) -> int:
    """Exact parameter count, embeddings included, computed from shapes alone."""
    state = nnx.state(abstract_model(config), nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
