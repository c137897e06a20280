"""Continued pretraining from a Hugging Face checkpoint (Levanter's initialize_from_hf)."""

from lmlib.experiment import Experiment, register
from lmlib.config import TrainerConfig
from lmlib.train.optimizer import AdamW


@register
class ContinuePretraining(Experiment):
    """Continue pretraining any HF Llama/Mistral/Qwen2/GPT-2: --set init_from=DIR_OR_HUB_ID."""

    def optimizer(self):
        return AdamW(learning_rate=3e-5, warmup=0.01, weight_decay=0.0)

    def trainer(self):
        return TrainerConfig(num_train_steps=1000, batch_size=32)
