"""Where the train step's time goes: the step taken apart into separately jitted pieces.

    python benchmarks/profile_step.py --model=demo --batch_size=16

Times (median of --repeats after a warm-up) the whole train step, its gradient without the
optimizer, the AdamW update alone, the forward pass to the final hidden states and its
gradient, then one layer's attention and MLP, forward and forward+backward, with their
GFLOP/s. A backward pass much slower than twice its forward, or a piece far below the matmul
rate, is where to look. Random tokens, one device, the model's precision settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.presets import PRESETS
from lmlib import xla_flags
from lmlib.mesh import MeshConfig, make_mesh
from lmlib.models import layers
from lmlib.models.attention import dot_product_attention, training_mask
from lmlib.models.ops import normal
from lmlib.config import TrainerConfig
from lmlib.train.optimizer import AdamW
from lmlib.train.state import init_state, state_layout
from lmlib.train.step import StepConfig, loss_sums, make_train_step, random_batch


def timed(name: str, fn, *args, repeats: int, flops: float | None = None) -> None:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    rate = f"  {flops / seconds / 1e9:,.0f} GFLOP/s" if flops else ""
    print(f"{name:>28}: {1000 * seconds:8.1f} ms{rate}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--remat", default="", help="remat policy (none|minimal|full)")
    parser.add_argument("--attention", default="", help="attention (auto|xla|cudnn)")
    parser.add_argument("--unroll", action="store_true", help="no layer loop")
    parser.add_argument("--loss_chunk_len", type=int, default=TrainerConfig.loss_chunk_len,
                        help="positions per cross-entropy chunk (the demo trains with 32)")
    parser.add_argument("--trace", default="", help="also write a profiler trace of 3 train "
                        "steps to this directory (TensorBoard's profile plugin, xprof)")
    args = parser.parse_args()
    xla_flags.set_defaults()
    c = PRESETS[args.model]()
    overrides = {"remat": args.remat, "attention_impl": args.attention,
                 "unroll_layers": args.unroll}
    c = dataclasses.replace(c, **{k: v for k, v in overrides.items() if v})
    dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
    b, t = args.batch_size, c.seq_len
    batch = random_batch(c.vocab_size, b, t)
    rng = np.random.default_rng(0)
    mesh = make_mesh(MeshConfig())
    adamw = AdamW()
    optimizer = adamw.make(100)
    layout = state_layout(c, optimizer, mesh, seed=0)
    state = init_state(layout)
    config = StepConfig(dtype, num_microbatches=1, loss_chunk_len=args.loss_chunk_len)
    step_flops = c.flops_per_token() * b * t

    def hidden(params, batch):
        model = nnx.merge(layout.graphdef, jax.tree.map(lambda p: p.astype(dtype), params))
        return model(batch["tokens"], batch["positions"], batch["segment_ids"])

    def loss(params, batch):
        return loss_sums(params, layout.graphdef, batch, config)[0]

    def scalar(fn, *args):
        """fn's output summed against a fixed random cotangent, in float32, to differentiate.
        A plain sum's all-ones cotangent changes what XLA makes of the backward pass: the
        demo's attention forward+backward read 22-25 ms that way, 15 ms with this."""
        cotangent = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, *args).shape),
                                jnp.float32)
        return lambda *a: (fn(*a).astype(jnp.float32) * cotangent).sum()

    repeats = args.repeats
    with jax.set_mesh(mesh):
        step = jax.jit(make_train_step(layout.graphdef, optimizer, adamw.schedule(100), config))
        timed("train step", step, state, batch, repeats=repeats, flops=step_flops)
        if args.trace:
            with jax.profiler.trace(args.trace):
                for _ in range(3):
                    jax.block_until_ready(step(state, batch))
        grad = jax.jit(jax.grad(loss))
        timed("gradient, no optimizer", grad, state.params, batch, repeats=repeats,
              flops=step_flops)
        grads = grad(state.params, batch)
        timed("AdamW update", jax.jit(optimizer.update), grads, state.opt_state, state.params,
              repeats=repeats)
        timed("forward to hidden states", jax.jit(hidden), state.params, batch, repeats=repeats)
        timed("its gradient", jax.jit(jax.grad(scalar(hidden, state.params, batch))),
              state.params, batch, repeats=repeats)

        # One layer's pieces on random activations of the model's shapes.
        n, k, h, d, f = c.num_heads, c.kv_heads, c.head_size, c.hidden_dim, c.mlp_dim
        q, kk, v = (jnp.asarray(rng.standard_normal((b, t, heads, h)), dtype)
                    for heads in (n, k, k))
        mask = training_mask(jnp.ones((b, t), jnp.int32), c.attention_impl)

        def attention(q, k, v):
            return dot_product_attention(q, k, v, mask)

        attention_flops = 4 * b * t * t * n * h
        timed("attention forward", jax.jit(attention), q, kk, v, repeats=repeats,
              flops=attention_flops)
        timed("attention fwd+bwd",
              jax.jit(jax.grad(scalar(attention, q, kk, v), argnums=(0, 1, 2))),
              q, kk, v, repeats=repeats, flops=3 * attention_flops)
        mlp = layers.GatedMLP(d, f, normal(0.02), normal(0.02), nnx.Rngs(0))
        x = jnp.asarray(rng.standard_normal((b, t, d)), dtype)
        graphdef, weights = nnx.split(mlp)
        weights = jax.tree.map(lambda w: w.astype(dtype), weights)

        def mlp_fn(x, weights):
            return nnx.merge(graphdef, weights)(x)

        mlp_flops = 2 * b * t * d * f * 3
        timed("MLP forward", jax.jit(mlp_fn), x, weights, repeats=repeats, flops=mlp_flops)
        timed("MLP fwd+bwd", jax.jit(jax.grad(scalar(mlp_fn, x, weights), argnums=(0, 1))),
              x, weights, repeats=repeats, flops=3 * mlp_flops)


if __name__ == "__main__":
    main()
