"""A tiny sibling of every large recipe (Pax's `*Test`, big_vision's runlocal): the same
architecture features (grouped-query attention, RoPE scaling, tied embeddings, biases), optimizer,
precision, data layout and gradient accumulation, at a size that trains a step on a CPU in
seconds, on the embedded corpus and without downloading weights.

    python -m lmlib.main --exp=Llama2_7BTiny --set trainer.num_train_steps=1

A recipe's mistakes then show up on a laptop, before a pod is booked.
"""

from __future__ import annotations

import dataclasses

from experiments.finetune import Llama2_7BAlpaca, Llama7BAlpaca
from experiments.gpt2 import Gpt2Large, Gpt2Medium, Gpt2Small, Gpt2XL
from experiments.llama import Llama1B, Llama2_7B, TeenyTinyLlama160M
from lmlib.data.pretrain import PretrainData
from lmlib.data.supervised import SupervisedData
from lmlib.experiment import Experiment, register
from lmlib.models import ModelConfig
from lmlib.config import TrainerConfig

TINY_HEADS = 4


def tiny_model(model: ModelConfig) -> ModelConfig:
    """2 layers 64 wide with 4 heads over 128 positions; the kv-head ratio kept."""
    changes = {"hidden_dim": 64, "num_layers": 2, "num_heads": TINY_HEADS, "mlp_dim": 128,
               "seq_len": 128}
    if getattr(model, "num_kv_heads", None):
        changes["num_kv_heads"] = max(1, TINY_HEADS * model.num_kv_heads // model.num_heads)
    if getattr(model, "head_dim", None):
        changes["head_dim"] = 64 // TINY_HEADS
    return dataclasses.replace(model, **changes)


def tiny_trainer(trainer: TrainerConfig) -> TrainerConfig:
    """8 rows a step (2 microbatches where the recipe accumulates), a few steps, one device."""
    return dataclasses.replace(
        trainer, num_train_steps=4, batch_size=8, microbatch_size=4 if trainer.microbatch_size else 0,
        eval_every=2, eval_batches=1, log_every=1, loss_chunk_len=0)


def tiny_data(data: PretrainData | SupervisedData) -> PretrainData | SupervisedData:
    """The embedded corpus: its documents, or its docstrings as Alpaca records."""
    if isinstance(data, SupervisedData):
        return SupervisedData(source="stdlib", preprocess="tatsu-lab/alpaca", layout=data.layout)
    return PretrainData()


def tiny_sibling(recipe: type[Experiment]) -> type[Experiment]:
    """Registers `<Recipe>Tiny`."""
    sibling = type(f"{recipe.__name__}Tiny", (recipe,), {
        "__doc__": f"{recipe.__name__} shrunk to run on a CPU in seconds (experiments/tiny.py).",
        "__module__": __name__,
        "init_from": lambda self: None,
        "model": lambda self: tiny_model(recipe.model(self)),
        "data": lambda self: tiny_data(recipe.data(self)),
        "trainer": lambda self: tiny_trainer(recipe.trainer(self)),
    })
    return register(sibling)


SIBLINGS = {recipe.__name__: tiny_sibling(recipe).__name__ for recipe in (
    Llama2_7B, Llama1B, TeenyTinyLlama160M, Gpt2Small, Gpt2Medium, Gpt2Large, Gpt2XL,
    Llama7BAlpaca, Llama2_7BAlpaca)}
