"""Supervised finetuning: Stanford Alpaca replicated, and a demo that runs offline.

    python -m lmlib.main --exp=Llama7BAlpaca --workdir=gs://bucket/alpaca \
        --set init_from=/path/to/llama-7b-hf --set data.train_urls=alpaca_data.json.jsonl
"""

import dataclasses

from experiments.demo import StdlibLlama
from lmlib.data.supervised import SupervisedData
from lmlib.experiment import Experiment, HFCheckpoint, register
from lmlib.mesh import MeshConfig
from lmlib.models.llama import LlamaConfig
from lmlib.config import TrainerConfig
from lmlib.train.optimizer import AdamW

# Stanford Alpaca's train.py: 52,002 examples, 3 epochs of 128 examples, lr 2e-5, cosine to 0
# after 3% warmup, no weight decay, HF Trainer's AdamW (0.9, 0.999) and clipping at 1.0.
ALPACA_OPTIMIZER = AdamW(learning_rate=2e-5, weight_decay=0.0, warmup=0.03, min_lr_ratio=0.0,
                         beta2=0.999)
ALPACA_DATA = SupervisedData(train_urls="tatsu-lab/alpaca", preprocess="tatsu-lab/alpaca")


@register
class Llama7BAlpaca(Experiment):
    """Alpaca replicated: LLaMA-7B, 52k instructions, 3 epochs, one example per 512-token row."""

    def init_from(self):
        return HFCheckpoint("huggyllama/llama-7b")

    def model(self):
        return dataclasses.replace(LlamaConfig.llama1_7b(), seq_len=512)

    def data(self):
        # Padded, as the original (one example per row): 1218 steps are then its 3 epochs.
        # The original holds nothing out; 1% (520 examples) gives an eval loss.
        return dataclasses.replace(ALPACA_DATA, layout="padded", validation_fraction=0.01)

    def optimizer(self):
        return ALPACA_OPTIMIZER

    def trainer(self):
        # 128 = 4 GPUs x 4 examples x 8 accumulation steps there; here 4 microbatches of 32.
        # Tensor parallelism is optional: --set trainer.mesh.tensor=8.
        return TrainerConfig(num_train_steps=1218, batch_size=128, microbatch_size=32,
                             precision="p=f32,c=bf16", eval_every=200, log_every=10,
                             mesh=MeshConfig(data=1, fsdp=-1, tensor=1))


@register
class Llama2_7BAlpaca(Llama7BAlpaca):
    """Alpaca on Llama-2-7B at its 4096 context: packed rows, 8 accumulation steps."""

    def init_from(self):
        return HFCheckpoint("meta-llama/Llama-2-7b-hf")

    def model(self):
        return LlamaConfig.llama2_7b()

    def data(self):
        return ALPACA_DATA  # packed: ~20 Alpaca examples fill a 4096-token row

    def trainer(self):
        # ~3 epochs: 52k examples of ~180 tokens are ~9.4M tokens an epoch, 131k a step.
        return dataclasses.replace(super().trainer(), num_train_steps=216, batch_size=32,
                                   microbatch_size=4, eval_every=50)


@register
class FinetuneHF(Experiment):
    """SFT any HF Llama/Mistral/Qwen2/GPT-2: --set init_from=DIR_OR_HUB_ID data.train_urls=..."""

    def data(self):
        return SupervisedData(train_urls="data/sft*.jsonl")

    def optimizer(self):
        return ALPACA_OPTIMIZER

    def trainer(self):
        return TrainerConfig(num_train_steps=1000, batch_size=32, eval_every=100)


@register
class StdlibSFT(StdlibLlama):
    """SFT demo: the demo Llama learns to write stdlib docstrings from signatures (CPU, minutes)."""

    def data(self):
        return SupervisedData(source="stdlib", preprocess="tatsu-lab/alpaca")

    def trainer(self):
        return dataclasses.replace(super().trainer(), num_train_steps=200, eval_every=50)


@register
class JsonlAlpacaTiny(StdlibSFT):
    """The demo Llama finetuned on your Alpaca-format JSONL (--set data.train_urls=...)."""

    def data(self):
        return SupervisedData(train_urls="data/alpaca*.jsonl", preprocess="tatsu-lab/alpaca")
