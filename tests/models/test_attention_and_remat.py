"""Attention implementations agree with a plain reference; remat policies change memory, not math."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmlib.models import LlamaConfig, layers
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


@pytest.mark.parametrize("spec, x_shape, w_shape", [
    ("BTD,DF->BTF", (2, 8, 16), (16, 24)), ("BTD,VD->BTV", (2, 8, 16), (40, 16)),
    ("BTD,DNH->BTNH", (2, 8, 16), (16, 4, 8)), ("BTNH,NHD->BTD", (2, 8, 4, 8), (4, 8, 16))])
def test_model_einsum_in_bf16_gives_the_values_and_gradients_of_a_float32_one(
        spec, x_shape, w_shape):
    """layers.einsum has its own backward on CPU in bfloat16 (f32-output dots); it must be the
    gradient of the einsum, as autodiff of a float32 einsum gives it, within bf16 rounding."""
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in (x_shape, w_shape))
    out_shape = jnp.einsum(spec, x, w).shape
    ct = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

    def loss(einsum, x, w):
        return (einsum(spec, x, w).astype(jnp.float32) * ct).sum()

    ours = jax.value_and_grad(lambda x, w: loss(layers.einsum, x, w), argnums=(0, 1))(x, w)
    f32 = jax.value_and_grad(lambda x, w: loss(jnp.einsum, x, w), argnums=(0, 1))(
        x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_allclose(ours[0], f32[0], rtol=2e-2, atol=0.1)
    for got, want in zip(ours[1], f32[1]):
        assert got.dtype == jnp.bfloat16
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=1e-2 * scale)


def test_bf16_attention_gradients_match_the_float32_reference():
    """On CPU, bf16 attention has its own backward (see layers._cpu_bf16_attention)."""
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (2, 32, 4, 16))
    k, v = (jax.random.normal(key, (2, 32, 2, 16)) for key in keys[1:3])
    d_out = jax.random.normal(keys[3], q.shape)
    segment_ids = jnp.array([[1] * 20 + [2] * 12, [1] * 32])

    def loss(attention, q, k, v):
        return (attention(q, k, v).astype(jnp.float32) * d_out).sum()

    want = jax.grad(lambda *a: loss(lambda q, k, v: reference_attention(q, k, v, segment_ids),
                                    *a), argnums=(0, 1, 2))(q, k, v)
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    got = jax.jit(jax.grad(lambda *a: loss(lambda q, k, v: dot_product_attention(
        q, k, v, attention_mask(segment_ids), "xla"), *a), argnums=(0, 1, 2)))(*bf16)
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16 and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), w,
                                   atol=3e-2 * float(jnp.abs(w).max()))
