"""Experiments: registered Python classes that resolve to one frozen config tree.

    @register
    class StdlibLlama(Experiment):
        '''One line that --mode=list shows.'''
        def model(self):   return LlamaConfig.demo()
        def trainer(self): return TrainerConfig(num_train_steps=300)

A variant is a subclass that overrides a method. `--set trainer.batch_size=32` overrides any
field of the resolved tree, converted to the field's type; unknown keys and bad values are
ConfigErrors that name the nearest keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import types
import typing
from typing import Any

from lmlib.data.pretrain import PretrainData
from lmlib.errors import ConfigError
from lmlib.models import ModelConfig
from lmlib.train.loop import TrainerConfig
from lmlib.train.optimizer import AdamW
from lmlib.tree_util import flatten_dict


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    model: ModelConfig
    data: PretrainData
    optimizer: AdamW
    trainer: TrainerConfig


class Experiment:
    """Base class: override the methods whose defaults do not fit."""

    def model(self) -> ModelConfig:
        raise NotImplementedError(f"{type(self).__name__} must define model()")

    def data(self) -> PretrainData:
        return PretrainData()

    def optimizer(self) -> AdamW:
        return AdamW()

    def trainer(self) -> TrainerConfig:
        return TrainerConfig()

    def config(self) -> ExperimentConfig:
        return ExperimentConfig(name=type(self).__name__, model=self.model(), data=self.data(),
                                optimizer=self.optimizer(), trainer=self.trainer())


_REGISTRY: dict[str, type[Experiment]] = {}


def register(cls: type[Experiment]) -> type[Experiment]:
    if cls.__name__ in _REGISTRY and _REGISTRY[cls.__name__] is not cls:
        raise ValueError(f"experiment {cls.__name__} is registered twice")
    _REGISTRY[cls.__name__] = cls
    return cls


def _load_experiment_modules() -> None:
    import experiments

    for module in pkgutil.iter_modules(experiments.__path__):
        importlib.import_module(f"experiments.{module.name}")


def registry() -> dict[str, type[Experiment]]:
    _load_experiment_modules()
    return dict(sorted(_REGISTRY.items()))


def lookup(name: str) -> Experiment:
    experiments = registry()
    if name not in experiments:
        nearest = difflib.get_close_matches(name, experiments, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(nearest)}?" if nearest else ""
        raise ConfigError(f"unknown experiment {name!r}{hint} (--mode=list lists them all)")
    return experiments[name]()


def description(cls: type[Experiment]) -> str:
    return (cls.__doc__ or "").strip().split("\n")[0]


# ----------------------------------------------------------------------------- overrides


def flatten(config: Any) -> dict[str, Any]:
    """{"trainer.mesh.data": 1, ...} for every leaf field of a config tree."""
    return flatten_dict(dataclasses.asdict(config))


def _parse(text: str, annotation: Any, key: str) -> Any:
    """Converts a --set value to the field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _parse(text, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"--set {key}={text}: " + "; ".join(errors))
    if annotation is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--set {key}={text}: expected true or false")
    if annotation in (int, float):
        try:
            value = float(text) if annotation is float else int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(
                f"--set {key}={text}: expected {annotation.__name__}") from None
        return value
    if annotation is str:
        return text
    raise ConfigError(f"--set {key}: fields of type {annotation} cannot be set from the command line")


def _override(config: Any, path: list[str], text: str, full_key: str) -> Any:
    hints = typing.get_type_hints(type(config))
    name, rest = path[0], path[1:]
    if name not in hints:
        raise KeyError(full_key)
    current = getattr(config, name)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise KeyError(full_key)
        value = _override(current, rest, text, full_key)
    elif dataclasses.is_dataclass(current):
        raise ConfigError(f"--set {full_key}: is a group of fields; set one of "
                          f"{', '.join(sorted(flatten_dict(dataclasses.asdict(current), full_key + '.')))}")
    else:
        value = _parse(text, hints[name], full_key)
    return dataclasses.replace(config, **{name: value})


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. trainer.batch_size=32")
        try:
            config = _override(config, key.split("."), text.strip(), key)
        except KeyError:
            keys = [k for k in flatten(config) if k != "name"]
            nearest = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(nearest)}?" if nearest else ""
            raise ConfigError(f"--set: unknown key {key!r}{hint}") from None
    return config


def resolve(name: str, overrides: list[str] = ()) -> ExperimentConfig:
    """The frozen config tree of a registered experiment with --set overrides applied."""
    config = apply_overrides(lookup(name).config(), list(overrides))
    config.trainer.check_fits(config.model)
    return config
