"""AdamW with linear warmup and cosine decay, gradient clipping, decay only on matrices."""

from __future__ import annotations

import dataclasses

import jax
import optax

from lmlib.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AdamW:
    learning_rate: float = 3e-4  # peak, reached at the end of warmup
    weight_decay: float = 0.1  # decoupled (Loshchilov & Hutter 2019); not on norms and biases
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup: float = 0.01  # < 1: fraction of num_train_steps; >= 1: a number of steps
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    clip_grad_norm: float = 1.0  # 0 disables clipping

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"optimizer.learning_rate must be positive, got {self.learning_rate}")
        if self.warmup < 0:
            raise ConfigError(f"optimizer.warmup must be >= 0, got {self.warmup}")

    def schedule(self, num_train_steps: int) -> optax.Schedule:
        warmup_steps = int(self.warmup * num_train_steps if self.warmup < 1 else self.warmup)
        warmup_steps = min(warmup_steps, num_train_steps)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=self.learning_rate, warmup_steps=warmup_steps,
            decay_steps=max(num_train_steps, warmup_steps + 1),
            end_value=self.learning_rate * self.min_lr_ratio)

    def make(self, num_train_steps: int) -> optax.GradientTransformation:
        adamw = optax.adamw(self.schedule(num_train_steps), b1=self.beta1, b2=self.beta2,
                            eps=self.eps, weight_decay=self.weight_decay, mask=decay_mask)
        if self.clip_grad_norm:
            return optax.chain(optax.clip_by_global_norm(self.clip_grad_norm), adamw)
        return adamw


def decay_mask(params):
    """Weight decay applies to weight matrices, not to norm scales or biases."""
    def decays(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return not (name == "scale" or name.endswith("bias"))

    return jax.tree_util.tree_map_with_path(decays, params)
