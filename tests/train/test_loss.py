"""Chunked cross-entropy equals the plain one, value and gradient, in float32."""

import jax
import jax.numpy as jnp
import numpy as np

from lmlib.train.loss import chunked_cross_entropy, cross_entropy_sums


def test_chunked_cross_entropy_equals_plain_value_and_gradient():
    keys = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(keys[0], (2, 32, 16))
    head = jax.random.normal(keys[1], (16, 50))
    targets = jax.random.randint(keys[2], (2, 32), 0, 50)
    weights = (jax.random.uniform(keys[3], (2, 32)) > 0.2).astype(jnp.float32)

    def plain(hidden, head):
        loss, weight = cross_entropy_sums(hidden @ head, targets, weights)
        return loss / weight

    def chunked(hidden, head):
        loss, weight = chunked_cross_entropy(hidden, targets, weights, lambda h: h @ head, 8)
        return loss / weight

    value, grads = jax.value_and_grad(plain, argnums=(0, 1))(hidden, head)
    chunked_value, chunked_grads = jax.value_and_grad(chunked, argnums=(0, 1))(hidden, head)
    np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
    for g, cg in zip(grads, chunked_grads):
        np.testing.assert_allclose(cg, g, rtol=1e-5, atol=1e-6)
