"""What lmlib knows of a model family, in one declaration: each family module (llama.py, gpt2.py)
ends with its `FAMILY`, and lmlib.models.families lists them. The checkpoint loader, Hugging Face
conversion (lmlib.hf) and the sampler ask the family rather than test a config's type."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from lmlib.models.hf_table import Row


def _unbounded(config: Any) -> None:
    return None


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: one object per family, hashable
class Family:
    """name: the family's own name ("llama").
    config_class, model_class: its config dataclass (whose `make(rngs)` builds a model_class);
        a checkpoint's meta names the config class ("model_type": "LlamaConfig").
    hf_readers: Hugging Face `model_type` -> the lmlib config fields of such a config.json
        (as a dict); several HF families may read as one lmlib family (mistral, qwen2 -> llama).
    hf_writes: the `model_type`s hf_writer may write; each must be one hf_readers reads back.
    hf_writer: a config -> its HF config.json fields, model_type and architectures included.
    hf_table: a config -> the rows mapping HF tensors to lmlib parameters, both directions.
    hf_optional_prefix: a prefix some of the family's checkpoints leave off tensor names.
    hf_ignored: regexes (matched at the end of a name) of HF tensors that carry no parameters
        (buffers of older transformers versions), so their absence from the table is no warning.
    max_positions: a config -> the most positions decoding may reach (the size of a learned
        position table); None = unbounded (rotary positions).
    """
    name: str
    config_class: type
    model_class: type
    hf_readers: Mapping[str, Callable[[dict], dict[str, Any]]]
    hf_writes: tuple[str, ...]
    hf_writer: Callable[[Any], dict[str, Any]]
    hf_table: Callable[[Any], list[Row]]
    hf_optional_prefix: str = ""
    hf_ignored: tuple[str, ...] = ()
    max_positions: Callable[[Any], int | None] = _unbounded

    def __post_init__(self) -> None:
        unreadable = set(self.hf_writes) - set(self.hf_readers)
        if unreadable:
            raise ValueError(f"family {self.name} writes Hugging Face model_type(s) "
                             f"{sorted(unreadable)} that it cannot read back")

    def config_from_hf(self, hf_config: dict) -> Any:
        """The lmlib config of an HF config.json (as a dict) whose model_type this family reads."""
        return self.config_class(**self.hf_readers[hf_config["model_type"]](hf_config))
