"""Llama-family pretraining recipes."""

import dataclasses

from lmlib.experiment import Experiment, register
from lmlib.mesh import MeshConfig
from lmlib.models.llama import LlamaConfig
from lmlib.config import TrainerConfig
from lmlib.train.optimizer import AdamW


@register
class Llama2_7B(Experiment):
    """Llama-2-7B pretraining recipe (Touvron et al. 2023): 4M tokens per step, FSDP."""

    def model(self):
        return LlamaConfig.llama2_7b()

    def optimizer(self):
        return AdamW(learning_rate=3e-4, weight_decay=0.1, warmup=2000, min_lr_ratio=0.1)

    def trainer(self):
        return TrainerConfig(num_train_steps=500_000, batch_size=1024, microbatch_size=256,
                             mesh=MeshConfig(data=1, fsdp=-1, tensor=1))


@register
class TeenyTinyLlama160M(Experiment):
    """TeenyTinyLlama-160m (Corrêa et al. 2024): 768 wide, 12 layers, 2048 context."""

    def model(self):
        return LlamaConfig.teenytinyllama_160m()

    def optimizer(self):
        return AdamW(learning_rate=6e-4, weight_decay=0.01, warmup=2000, beta2=0.999)

    def trainer(self):
        return TrainerConfig(num_train_steps=458_000, batch_size=16)


@register
class Llama1B(Experiment):
    """The ~1.1B Llama of the benchmarks: 2048 wide, 16 layers, 32 heads, 8 kv heads."""

    def model(self):
        # The fastest setting measured on one H200 (BENCHMARKS.md): layers unrolled, nothing
        # recomputed, 45 GiB a device at 8 sequences a microbatch (49.9% MFU, against 43.6%
        # with the layer scan). On smaller devices: --set model.remat=minimal (or full).
        return dataclasses.replace(LlamaConfig.llama_1b(), remat="none", unroll_layers=True)

    def trainer(self):
        return TrainerConfig(num_train_steps=100_000, batch_size=256, microbatch_size=8)
