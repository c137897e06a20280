"""The demo: a small Llama that learns Python from the standard library on two CPU cores."""

from lmlib.experiment import Experiment, register
from lmlib.models.llama import LlamaConfig
from lmlib.config import TrainerConfig
from lmlib.train.optimizer import AdamW


@register
class StdlibLlama(Experiment):
    """Demo: a 4M-parameter Llama trained on the Python standard library (CPU, minutes)."""

    def model(self):
        return LlamaConfig.demo()

    def optimizer(self):
        return AdamW(learning_rate=3e-3, warmup=0.05, weight_decay=0.1)

    def trainer(self):
        # Short loss chunks keep each chunk's float32 logits in the CPU's cache: the loss's
        # forward and backward take 56 ms a step at 32 positions, 73 ms at the default 128.
        return TrainerConfig(num_train_steps=300, batch_size=16, log_every=10, eval_every=100,
                             loss_chunk_len=32)
