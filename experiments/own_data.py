"""Pretraining on your own files: point data.train_urls at them.

    python -m lmlib.main --exp=JsonlLlamaTiny --workdir=runs/mine \
        --set data.train_urls='data/train.{000..015}.jsonl.zst'
"""

from lmlib.data.pretrain import PretrainData
from lmlib.experiment import register
from experiments.demo import StdlibLlama


@register
class JsonlLlamaTiny(StdlibLlama):
    """The demo's Llama on your JSONL files (--set data.train_urls=...; text under "text")."""

    def data(self):
        return PretrainData(source="urls", train_urls="data/*.jsonl*")
