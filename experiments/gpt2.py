"""GPT-2 sizes (Radford et al. 2019) on nanoGPT's OpenWebText recipe: 0.5M tokens per step."""

from lmlib.experiment import Experiment, register
from lmlib.models.gpt2 import Gpt2Config
from lmlib.config import TrainerConfig
from lmlib.train.optimizer import AdamW


@register
class Gpt2Small(Experiment):
    """GPT-2 small, 124M parameters, 1024 context."""

    def model(self):
        return Gpt2Config.small()

    def optimizer(self):
        return AdamW(learning_rate=6e-4, weight_decay=0.1, warmup=2000, min_lr_ratio=0.1)

    def trainer(self):
        return TrainerConfig(num_train_steps=600_000, batch_size=480, microbatch_size=96,
                             eval_every=1000)


@register
class Gpt2Medium(Gpt2Small):
    """GPT-2 medium, 355M parameters."""

    def model(self):
        return Gpt2Config.medium()

    def optimizer(self):
        return AdamW(learning_rate=3e-4, weight_decay=0.1, warmup=2000)


@register
class Gpt2Large(Gpt2Medium):
    """GPT-2 large, 774M parameters."""

    def model(self):
        return Gpt2Config.large()


@register
class Gpt2XL(Gpt2Medium):
    """GPT-2 XL, 1.5B parameters."""

    def model(self):
        return Gpt2Config.xl()
