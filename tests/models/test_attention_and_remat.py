"""Attention implementations agree with a plain reference; remat policies change memory, not math."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmlib.models import LlamaConfig
from lmlib.models.layers import REMAT_POLICIES, attention_mask, dot_product_attention


def reference_attention(q, k, v, segment_ids):
    """Softmax(QK^T / sqrt(H)) V with causal and same-document masking, grouped heads repeated."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(q.shape[-1])
    length = q.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None] & \
        (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
    return jnp.einsum("BNTS,BSNH->BTNH", probs, v)


IMPLEMENTATIONS = ["xla"] + (["cudnn"] if jax.default_backend() == "gpu" else [])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_attention_matches_the_reference(implementation, dtype, tolerance):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 32, 4, 16))
    k, v = (jax.random.normal(key, (2, 32, 2, 16)) for key in keys[1:])
    segment_ids = jnp.array([[1] * 20 + [2] * 12, [1] * 32])
    expected = reference_attention(q, k, v, segment_ids)
    out = dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                attention_mask(segment_ids),
                                implementation)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=tolerance,
                               rtol=tolerance)


def test_remat_policies_give_identical_loss_and_gradients():
    base = LlamaConfig(vocab_size=64, hidden_dim=32, num_layers=3, num_heads=4, num_kv_heads=2,
                       mlp_dim=64, seq_len=16)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))
    results = {}
    for remat in REMAT_POLICIES:
        config = dataclasses.replace(base, remat=remat)
        graphdef, params = nnx.split(config.make(nnx.Rngs(0)))

        def loss(params):
            model = nnx.merge(graphdef, params)
            logits = model.logits(model(tokens, positions, jnp.ones_like(tokens)))
            return jnp.mean(jax.nn.logsumexp(logits, -1))

        results[remat] = jax.jit(jax.value_and_grad(loss))(params)
    reference = jax.tree.leaves(results["none"])
    for remat in ("minimal", "full"):
        for a, b in zip(jax.tree.leaves(results[remat]), reference):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
