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

import argparse
import dataclasses
import difflib
import importlib
import importlib.metadata
import pkgutil
import types
import typing
from collections.abc import Iterator
from typing import Any

from lmlib import hf
from lmlib.data.pretrain import PretrainData
from lmlib.data.supervised import SupervisedData, sft_tokenizer
from lmlib.config import ExperimentConfig, TrainerConfig
from lmlib.errors import ConfigError
from lmlib.models import ModelConfig
from lmlib.train.optimizer import AdamW
from lmlib.tree_util import flatten_dict


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    """Start from a Hugging Face checkpoint: a local directory or a hub id."""

    path: str


class Experiment:
    """Base class: override the methods whose defaults do not fit.

    With `init_from()` (or --set init_from=...), the model config comes from the checkpoint's
    config.json and the tokenizer from its directory, unless the experiment defines them."""

    def model(self) -> ModelConfig:
        raise ConfigError(f"{type(self).__name__} defines neither model() nor init_from(); "
                          "set init_from=HF_DIR")

    def init_from(self) -> HFCheckpoint | None:
        return None

    def data(self) -> PretrainData | SupervisedData:
        return PretrainData()

    def optimizer(self) -> AdamW:
        return AdamW()

    def trainer(self) -> TrainerConfig:
        return TrainerConfig()

    def config(self, init_from: str | None = None) -> ExperimentConfig:
        """The experiment's own tree; `init_from` replaces the experiment's own init_from().

        Reads no weights and no data: with init_from and no model() of its own, the model comes
        from the checkpoint's config.json alone (for a hub id, that one file is fetched)."""
        if init_from is None:
            checkpoint = self.init_from()
            init_from = checkpoint.path if checkpoint else ""
        if init_from and type(self).model is Experiment.model:
            model = hf.model_config_from_hf(hf.read_hf_config(hf.hf_config_dir(init_from)))
        else:
            model = self.model()
        return ExperimentConfig(name=type(self).__name__, model=model, data=self.data(),
                                optimizer=self.optimizer(), trainer=self.trainer(),
                                init_from=init_from)


_REGISTRY: dict[str, type[Experiment]] = {}
ENTRY_POINT_GROUP = "lmlib.experiments"


def register(cls: type[Experiment]) -> type[Experiment]:
    if cls.__name__ in _REGISTRY and _REGISTRY[cls.__name__] is not cls:
        raise ValueError(f"experiment {cls.__name__} is registered twice")
    _REGISTRY[cls.__name__] = cls
    return cls


def _load_experiment_modules() -> None:
    """Imports each package registered under the `lmlib.experiments` entry point, with its
    modules: lmlib's own `experiments/` and any installed package's (pyproject.toml:
    `[project.entry-points."lmlib.experiments"] mine = "my_experiments"`). The library never
    imports an application package by name."""
    entries = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if not entries:
        raise ConfigError(f"no package registers experiments (the {ENTRY_POINT_GROUP!r} entry "
                          "point): install lmlib with `pip install -e .` (or `make demo`) from "
                          "its checkout")
    for entry in entries:
        try:
            package = entry.load()
            for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
                importlib.import_module(f"{package.__name__}.{module.name}")
        except ImportError as e:
            raise ConfigError(f"the experiments of {entry.value!r} (entry point {entry.name!r}) "
                              f"do not import: {e}") from None


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


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--exp and --set, as lmlib.main takes them, for a tool that works on an experiment."""
    parser.add_argument("--exp", required=True, help="a registered experiment")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="override a config field, e.g. data.on_error=skip")


def resolve(name: str, overrides: list[str] = (), *, num_devices: int | None = None,
            num_processes: int | None = None) -> ExperimentConfig:
    """The frozen config tree of a registered experiment with --set overrides applied, then
    validated once as a whole: the order of the overrides never matters. The mesh and batch
    are checked against this machine's devices and processes, or against those given (a
    launcher resolving for a pod)."""
    # init_from decides the model config that the other overrides then refine.
    init_from = [o.partition("=")[2].strip() for o in overrides
                 if o.partition("=")[0].strip() == "init_from"]
    config = lookup(name).config(init_from[-1] if init_from else None)
    config = apply_overrides(config, [o for o in overrides
                                      if o.partition("=")[0].strip() != "init_from"])
    validate(config, num_devices, num_processes)
    return config


def validate(config: ExperimentConfig, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
    """Every group's own checks (the `validate()` of each config dataclass in the tree), then
    the checks across groups. Raises the first ConfigError."""
    def groups(node: Any) -> Iterator[Any]:
        yield node
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            if dataclasses.is_dataclass(value):
                yield from groups(value)

    for group in groups(config):
        if hasattr(group, "validate"):
            group.validate()
    config.trainer.check_fits(config.model, num_devices, num_processes)


def with_tokenizer(config: ExperimentConfig, *, download: bool = True) -> ExperimentConfig:
    """The tree with init_from's tokenizer in data.tokenizer.path (unless the data names one)
    and, for finetuning with a tokenizer that has no pad token, a vocabulary grown by one.

    Reads the tokenizer; `download=False` (dry runs) leaves a hub id that is not in the local
    cache alone, with a note, rather than downloading the checkpoint."""
    data = config.data
    if config.init_from and not data.tokenizer.path:
        hf_dir = hf.resolve_hf_dir(config.init_from, download=download)
        if hf_dir is None:
            print(f"init_from={config.init_from}: not in the local Hugging Face cache; the "
                  "tokenizer was not read (a pad token it lacks would add a vocabulary row)",
                  flush=True)
            return config
        tokenizer = hf.tokenizer_file(hf_dir)
        if tokenizer:
            data = dataclasses.replace(
                data, tokenizer=dataclasses.replace(data.tokenizer, path=str(tokenizer)))
    config = dataclasses.replace(config, data=data)
    return _fit_vocab(config)


def _fit_vocab(config: ExperimentConfig) -> ExperimentConfig:
    """Finetuning with a tokenizer that has no pad token adds one, so the model's vocabulary
    (and embedding, when its weights load) grows by a row, as Stanford Alpaca does."""
    if not isinstance(config.data, SupervisedData) or not config.data.tokenizer.path:
        return config
    vocab_size = sft_tokenizer(config.data).vocab_size
    if vocab_size <= config.model.vocab_size:
        return config
    print(f"model.vocab_size: {config.model.vocab_size} -> {vocab_size} (the tokenizer has no "
          "pad token: adding one)", flush=True)
    return dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                 vocab_size=vocab_size))
