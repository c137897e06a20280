"""Packed documents do not see each other: a document's logits are the same packed or alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmlib.models import Gpt2Config, LlamaConfig

CONFIGS = {
    "llama": LlamaConfig(vocab_size=97, hidden_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         mlp_dim=64, seq_len=24),
    "gpt2": Gpt2Config(vocab_size=97, hidden_dim=32, num_layers=2, num_heads=4, seq_len=24),
}


def logits(model, tokens, segment_ids):
    tokens, segment_ids = jnp.asarray([tokens]), jnp.asarray([segment_ids])
    starts = jnp.concatenate([jnp.ones((1, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    index = jnp.arange(tokens.shape[1])
    positions = index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return np.asarray(model.logits(model(tokens, positions, segment_ids)))[0]


@pytest.mark.parametrize("family", CONFIGS)
def test_documents_packed_in_one_row_do_not_attend_to_each_other(family):
    model = CONFIGS[family].make(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 97, 10), rng.integers(0, 97, 14)
    segments = [1] * 10 + [2] * 14
    packed = logits(model, np.r_[first, second], segments)

    # The second document packed after the first == the second document alone.
    alone = logits(model, second, [1] * 14)
    np.testing.assert_allclose(packed[10:], alone, rtol=1e-5, atol=1e-5)

    # Changing the first document does not change the second's logits at all.
    changed = logits(model, np.r_[rng.integers(0, 97, 10), second], segments)
    np.testing.assert_allclose(changed[10:], packed[10:], rtol=1e-6, atol=1e-6)
    assert not np.allclose(changed[:10], packed[:10])  # ...while the first's do change
