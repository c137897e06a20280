"""Attention implementations agree with a plain reference; remat policies change memory, not math."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmlib.errors import ConfigError
from lmlib.models import LlamaConfig, attention, ops
from lmlib.models.attention import attention_mask, dot_product_attention
from lmlib.models.layers import REMAT_POLICIES


def reference_attention(q, k, v, segment_ids):
    """Softmax(QK^T / sqrt(H)) V with causal and same-document masking, grouped heads repeated."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(q.shape[-1])
    length = q.shape[1]
    mask = (jnp.tril(jnp.ones((length, length), bool))[None, None]
            & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :]))
    probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
    return jnp.einsum("BNTS,BSNH->BTNH", probs, v)


GPU = jax.default_backend() == "gpu"
# (implementation, dtype, tolerance); cuDNN takes bfloat16 only.
CASES = ([("xla", jnp.float32, 1e-5), ("xla", jnp.bfloat16, 2e-2)]
         + [("cudnn", jnp.bfloat16, 2e-2)] * GPU)
# Rows of 2, 1 and 33 documents (the last more than cuDNN's packed layout takes).
SEGMENT_IDS = np.array([[1] * 40 + [2] * 24, [7] * 64, np.arange(64) // 2 + (np.arange(64) > 40)])


@pytest.mark.parametrize("implementation, dtype, tolerance", CASES)
@pytest.mark.parametrize("rows", [[0, 1], [0, 1, 2]], ids=["few-docs", "many-docs"])
def test_attention_and_its_gradients_match_the_reference(implementation, dtype, tolerance,
                                                         rows):
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (len(rows), 64, 8, 64))
    k, v = (jax.random.normal(key, (len(rows), 64, 2, 64)) for key in keys[1:3])
    d_out = jax.random.normal(keys[3], q.shape)
    segment_ids = jnp.asarray(SEGMENT_IDS[rows])
    # Float32 matmuls in float32 (a GPU would use TF32 by default, 1e-3 off).
    with jax.default_matmul_precision("highest"):
        check_attention(implementation, dtype, tolerance, q, k, v, d_out, segment_ids)


def check_attention(implementation, dtype, tolerance, q, k, v, d_out, segment_ids):
    def loss(attention, q, k, v):
        return (attention(q, k, v).astype(jnp.float32) * d_out).sum()

    want_grads = jax.grad(
        lambda *a: loss(lambda q, k, v: reference_attention(q, k, v, segment_ids), *a),
        argnums=(0, 1, 2))(q, k, v)
    mask = attention.training_mask(segment_ids, implementation)
    grads = jax.jit(jax.grad(lambda *a: loss(lambda q, k, v: dot_product_attention(
        q, k, v, mask), *a), argnums=(0, 1, 2)))(*(x.astype(dtype) for x in (q, k, v)))
    out = dot_product_attention(*(x.astype(dtype) for x in (q, k, v)), mask)
    np.testing.assert_allclose(np.asarray(out, np.float32),
                               reference_attention(q, k, v, segment_ids),
                               atol=tolerance, rtol=tolerance)
    for g, w in zip(grads, want_grads):
        assert g.dtype == dtype and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), w,
                                   atol=tolerance * float(jnp.abs(w).max()))


@pytest.mark.skipif(GPU, reason="asks for cuDNN where there is none")
def test_cudnn_without_a_gpu_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="model.attention_impl='cudnn' needs a GPU"):
        attention.training_mask(jnp.ones((1, 8), jnp.int32), "cudnn")


def test_jax_still_has_the_cudnn_packed_attention_lmlib_calls():
    """The private cuDNN entry point with per-row document offsets: a jax upgrade that moves or
    changes it fails here, on any machine, instead of slowing GPU training down unnoticed."""
    assert attention.cudnn_packed_attention() is not None


def test_packed_docs_describe_each_document_of_each_row():
    """What cuDNN's packed attention reads: each document's start and length, -1 after the last,
    and the overflow flag for rows of more documents than it takes."""
    docs = attention.packed_docs(jnp.asarray(SEGMENT_IDS), max_docs=4)
    assert docs.offsets_bm.tolist()[:2] == [[0, 40, -1, -1, -1], [0, -1, -1, -1, -1]]
    assert docs.lengths_bm.tolist()[:2] == [[40, 24, -1, -1], [64, -1, -1, -1]]
    assert bool(docs.overflow)
    assert not attention.packed_docs(jnp.asarray(SEGMENT_IDS[:2]), max_docs=4).overflow
    # Every position of a row lies in exactly one of its documents, and the documents follow
    # the segment ids: rebuilding the mask from them gives attention_mask.
    for row, (offsets, lengths) in enumerate(zip(*attention.packed_docs(
            jnp.asarray(SEGMENT_IDS), max_docs=64)[:2])):
        doc_of = np.full(64, -1)
        for doc, (start, length) in enumerate(zip(offsets[:-1], lengths)):
            if length > 0:
                assert (doc_of[start:start + length] == -1).all()
                doc_of[start:start + length] = doc
        assert (doc_of >= 0).all()
        rebuilt = np.tril(doc_of[:, None] == doc_of[None, :])
        expected = attention_mask(jnp.asarray(SEGMENT_IDS[row:row + 1]))[0, 0]
        np.testing.assert_array_equal(rebuilt, expected)


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
    # A GPU fuses the recomputation differently and reorders its sums (1.3e-7 seen on an H200).
    atol = 1e-6 if GPU else 1e-7
    for remat in ("minimal", "full"):
        for a, b in zip(jax.tree.leaves(results[remat]), reference):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("spec, x_shape, w_shape", [
    ("BTD,DF->BTF", (2, 8, 16), (16, 24)), ("BTD,VD->BTV", (2, 8, 16), (40, 16)),
    ("BTD,DNH->BTNH", (2, 8, 16), (16, 4, 8)), ("BTNH,NHD->BTD", (2, 8, 4, 8), (4, 8, 16))])
def test_model_einsum_in_bf16_gives_the_values_and_gradients_of_a_float32_one(
        spec, x_shape, w_shape):
    """ops.einsum has its own backward on CPU in bfloat16 (f32-output dots); it must be the
    gradient of the einsum, as autodiff of a float32 einsum gives it, within bf16 rounding."""
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in (x_shape, w_shape))
    out_shape = jnp.einsum(spec, x, w).shape
    ct = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

    def loss(einsum, x, w):
        return (einsum(spec, x, w).astype(jnp.float32) * ct).sum()

    ours = jax.value_and_grad(lambda x, w: loss(ops.einsum, x, w), argnums=(0, 1))(x, w)
    f32 = jax.value_and_grad(lambda x, w: loss(jnp.einsum, x, w), argnums=(0, 1))(
        x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_allclose(ours[0], f32[0], rtol=2e-2, atol=0.1)
    for got, want in zip(ours[1], f32[1]):
        assert got.dtype == jnp.bfloat16
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=1e-2 * scale)
