"""The registry of model families: a new family is its own module(s), ending with a `FAMILY`
declaration (lmlib.models.family.Family), and one entry in FAMILIES below."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Union

from lmlib.errors import ConfigError
from lmlib.models import gpt2, llama
from lmlib.models.family import Family

FAMILIES: tuple[Family, ...] = (llama.FAMILY, gpt2.FAMILY)

# Any family's config (LlamaConfig | Gpt2Config | ...), for annotations.
ModelConfig = Union[tuple(family.config_class for family in FAMILIES)]


def _index(keys: Callable[[Family], Iterable[str]]) -> dict[str, Family]:
    index: dict[str, Family] = {}
    for family in FAMILIES:
        for key in set(keys(family)):
            if key in index:
                raise ValueError(f"model families {index[key].name} and {family.name} both "
                                 f"claim {key!r}")
            index[key] = family
    return index


_BY_NAME = _index(lambda family: (family.name, family.config_class.__name__))
_BY_HF_TYPE = _index(lambda family: family.hf_readers)


def family_of(config: Any) -> Family:
    """The family of a model config."""
    for family in FAMILIES:
        if isinstance(config, family.config_class):
            return family
    raise ConfigError(f"{type(config).__name__} is not the config of a model family "
                      f"(known: {', '.join(family.config_class.__name__ for family in FAMILIES)})")


def family_named(name: str) -> Family:
    """The family of a name: its own ("llama") or its config class's ("LlamaConfig", as a
    checkpoint's meta records it)."""
    if name not in _BY_NAME:
        raise ConfigError(f"model type {name!r} is not a known model family "
                          f"(known: {', '.join(sorted(_BY_NAME))})")
    return _BY_NAME[name]


def family_for_hf(model_type: str | None) -> Family:
    """The family that reads Hugging Face config.json files of this `model_type`."""
    if model_type not in _BY_HF_TYPE:
        raise ConfigError(f"Hugging Face model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(sorted(_BY_HF_TYPE))})")
    return _BY_HF_TYPE[model_type]
