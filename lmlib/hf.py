"""Hugging Face <-> lmlib: configs, parameters, checkpoint directories and tokenizers.

Each model family (lmlib.models.families) declares its config.json reader and writer and one
table of rows (HF tensor name, lmlib parameter paths, layout; lmlib.models.hf_table); the same
table drives both directions, so import and export cannot drift apart. Tensors stream one at a
time: a safetensors checkpoint is read lazily and written shard by shard.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from lmlib.data.tokenizer import SentencePieceTokenizer, Tokenizer
from lmlib.errors import ConfigError
from lmlib.models import ModelConfig, abstract_model
from lmlib.models.families import family_for_hf, family_of
from lmlib.models.family import Family
from lmlib.models.hf_table import Row

Params = dict[str, Any]  # the nested pure dict of nnx.to_pure_dict(nnx.state(model))

DTYPES = {"float32": np.float32, "f32": np.float32,
          "bfloat16": ml_dtypes.bfloat16, "bf16": ml_dtypes.bfloat16}

# ---------------------------------------------------------------------------------------------
# Configs


def model_config_from_hf(hf_config: dict) -> ModelConfig:
    """The lmlib model config of a Hugging Face `config.json` (as a dict)."""
    return family_for_hf(hf_config.get("model_type")).config_from_hf(hf_config)


def hf_config_from_model(config: ModelConfig, *, bos_id: int | None = 1,
                         eos_id: int | None = 2, dtype: str = "float32") -> dict[str, Any]:
    """A Hugging Face `config.json` (as a dict) for an lmlib model config.

    Token ids default to lmlib's sentencepiece layout (unk, bos, eos, pad = 0..3)."""
    hf = family_of(config).hf_writer(config)
    return {**hf, "bos_token_id": bos_id, "eos_token_id": eos_id,
            "dtype": np.dtype(DTYPES[dtype]).name}

# ---------------------------------------------------------------------------------------------
# Parameters


def param_table(config: ModelConfig) -> list[Row]:
    return family_of(config).hf_table(config)


def _ignored_tensors(family: Family) -> re.Pattern[str]:
    """Tensors a checkpoint may hold that carry no parameters: the family's buffers, and a tied
    head saved next to the embedding it equals."""
    return re.compile("(" + "|".join((*family.hf_ignored, r"^lm_head\.weight")) + ")$")


def _param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    from flax import nnx

    state = nnx.to_pure_dict(nnx.state(abstract_model(config)))
    flat = traverse_util.flatten_dict(state, sep=".")
    return {path: tuple(x.shape) for path, x in flat.items()}


def _row_names(row: Row, num_layers: int) -> Iterator[tuple[int | None, str]]:
    """(layer index or None, HF tensor name) for each tensor a row stands for."""
    if not row.per_layer:
        yield None, row.hf_name
        return
    for i in range(num_layers):
        yield i, row.hf_name.format(i=i)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled)


def params_from_hf(tensors: Mapping[str, Any], config: ModelConfig, *,
                   progress: bool = False) -> Params:
    """lmlib parameters (nested dict of float32 numpy arrays) from HF tensors by name.

    `tensors` may read lazily on access (see open_hf_tensors): each tensor is fetched once,
    converted and dropped, so peak memory is the float32 model plus one tensor."""
    shapes = _param_shapes(config)
    flat = {path: np.empty(shape, np.float32) for path, shape in shapes.items()}
    family = family_of(config)
    prefix = family.hf_optional_prefix  # which some checkpoints leave off their tensor names
    names = {name.removeprefix(prefix): name for name in tensors}
    rows = family.hf_table(config)
    used = set()
    with _progress(sum(config.num_layers if r.per_layer else 1 for r in rows),
                   "HF -> lmlib", progress) as bar:
        for row in rows:
            for i, name in _row_names(row, config.num_layers):
                key = name if name in tensors else names.get(name.removeprefix(prefix))
                if key is None:
                    raise ConfigError(f"the Hugging Face checkpoint has no tensor {name!r} "
                                      f"(needed for lmlib parameter {', '.join(row.paths)})")
                used.add(key)
                hf = np.asarray(tensors[key], dtype=np.float32)
                layer_shapes = [shapes[p][1:] if row.per_layer else shapes[p] for p in row.paths]
                try:
                    pieces = row.layout.to_lmlib(hf, layer_shapes)
                except ValueError as e:
                    raise ConfigError(f"Hugging Face tensor {name!r} has shape {hf.shape}, which "
                                      f"does not fit lmlib's {layer_shapes}") from e
                for path, piece in zip(row.paths, pieces):
                    flat[path][... if i is None else i] = piece
                bar.update()
    ignored = _ignored_tensors(family)
    unused = sorted(n for n in set(tensors) - used if not ignored.search(n))
    if unused:
        logging.warning("Hugging Face tensors not used by lmlib: %s", ", ".join(unused))
    return traverse_util.unflatten_dict(flat, sep=".")


def hf_tensors_from_params(params: Params, config: ModelConfig, *,
                           progress: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 numpy array) for every tensor, one at a time, in table order."""
    flat = traverse_util.flatten_dict(params, sep=".")
    rows = param_table(config)
    with _progress(sum(config.num_layers if r.per_layer else 1 for r in rows),
                   "lmlib -> HF", progress) as bar:
        for row in rows:
            # One host copy per parameter (a device array sliced per layer would copy L times).
            arrays = [np.asarray(jax.device_get(flat[p]), dtype=np.float32) for p in row.paths]
            for i, name in _row_names(row, config.num_layers):
                yield name, row.layout.to_hf([a if i is None else a[i] for a in arrays])
                bar.update()

# ---------------------------------------------------------------------------------------------
# Checkpoint directories


class _LazyTensors(Mapping[str, Any]):
    """Tensor name -> array, read from its file only when asked for (files opened once)."""

    def __init__(self, files: dict[str, Path], open_file: Callable[[Path], Any],
                 read: Callable[[Any, str], np.ndarray]):
        self._files, self._open, self._read = files, open_file, read
        self._handles: dict[Path, Any] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = self._open(path)
        return self._read(self._handles[path], name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _open_safetensors(path: Path) -> Any:
    from safetensors import safe_open

    return safe_open(path, framework="numpy")  # memory-maps: opening reads no tensor


def _open_torch(path: Path) -> dict[str, Any]:
    import torch

    # mmap: only the tensors asked for are read; weights_only refuses arbitrary objects.
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


_FORMATS = {  # file name, index name, open, read one tensor
    "safetensors": ("model.safetensors", "model.safetensors.index.json", _open_safetensors,
                    lambda handle, name: handle.get_tensor(name)),
    "pickle": ("pytorch_model.bin", "pytorch_model.bin.index.json", _open_torch,
               lambda handle, name: handle[name].float().numpy()),
}


def _lazy_tensors(hf_dir: Path, file_format: str) -> _LazyTensors | None:
    """The tensors of a single-file or sharded checkpoint; None if neither is there."""
    single, index, open_file, read = _FORMATS[file_format]
    if (hf_dir / index).exists():
        weight_map = json.loads((hf_dir / index).read_text())["weight_map"]
        files = {name: hf_dir / file for name, file in weight_map.items()}
    elif (hf_dir / single).exists():
        files = dict.fromkeys(open_file(hf_dir / single).keys(), hf_dir / single)
    else:
        return None
    return _LazyTensors(files, open_file, read)


def open_hf_tensors(hf_dir: str | Path, *, allow_pickle: bool = False) -> Mapping[str, Any]:
    """All tensors of a local HF checkpoint by name, read lazily.

    safetensors (single or sharded) is preferred; `pytorch_model.bin` is a pickle, which can run
    code when loaded, so it is read only with allow_pickle=True."""
    hf_dir = Path(hf_dir)
    tensors = _lazy_tensors(hf_dir, "safetensors")
    if tensors is not None:
        return tensors
    if not (hf_dir / "pytorch_model.bin").exists() and not (
            hf_dir / "pytorch_model.bin.index.json").exists():
        raise ConfigError(f"{hf_dir} holds no model.safetensors[.index.json] or "
                          "pytorch_model.bin[.index.json]")
    if not allow_pickle:
        raise ConfigError(f"{hf_dir} holds only pytorch_model.bin, a pickle that can run code "
                          "when loaded; pass allow_pickle=True (--allow_pickle) if you trust it")
    return _lazy_tensors(hf_dir, "pickle")


def _hub_id(path_or_id: str) -> str:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id):
        raise ConfigError(f"init_from={path_or_id!r}: no such directory, and not a hub id")
    return path_or_id


def resolve_hf_dir(path_or_id: str, *, download: bool = True) -> Path | None:
    """A local Hugging Face directory as it is; a hub id ("org/name") downloaded through
    huggingface_hub's cache (token from the environment, e.g. HF_TOKEN). With
    `download=False`, a hub id not already in the cache gives None."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    hub_id = _hub_id(path_or_id)
    try:
        return Path(snapshot_download(hub_id, local_files_only=not download,
                                      allow_patterns=["*.json", "*.safetensors",
                                                      "tokenizer.model"]))
    except Exception as e:  # offline, gated, misspelt: the user must fix the id or the network
        if not download:
            return None
        raise ConfigError(f"init_from={path_or_id!r}: cannot download from the hub: {e}") from None


def hf_config_dir(path_or_id: str) -> Path:
    """A directory holding the checkpoint's config.json: for a hub id, only that file is
    fetched (or found in the cache), never the weights."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    from huggingface_hub import hf_hub_download

    hub_id = _hub_id(path_or_id)
    try:
        return Path(hf_hub_download(hub_id, "config.json")).parent
    except Exception as e:
        raise ConfigError(f"init_from={path_or_id!r}: cannot read its config.json (not a local "
                          f"directory; the hub: {type(e).__name__}). Download it once, or set "
                          "init_from to a local directory") from None


def tokenizer_file(hf_dir: str | Path) -> Path | None:
    """The directory's tokenizer: sentencepiece `tokenizer.model` first, else `tokenizer.json`."""
    for name in ("tokenizer.model", "tokenizer.json"):
        if (Path(hf_dir) / name).exists():
            return Path(hf_dir) / name
    return None


def resize_vocab(params: Params, vocab_size: int) -> Params:
    """Grows the embedding (and an untied head) to `vocab_size` entries for added tokens (a pad
    token for SFT), each new row the mean of the old ones: new tokens start as an average token
    rather than noise, so the first steps' outputs stay close to the checkpoint's."""
    def grow(table: np.ndarray, axis: int) -> np.ndarray:
        extra = vocab_size - table.shape[axis]
        mean = table.mean(axis=axis, keepdims=True)
        return np.concatenate([table, np.repeat(mean, extra, axis=axis)], axis=axis)

    params = {**params, "embed": {"table": grow(np.asarray(params["embed"]["table"]), 0)}}
    if "head" in params:
        params["head"] = grow(np.asarray(params["head"]), 1)
    return params


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise ConfigError(f"{hf_dir} is not a Hugging Face model directory: no config.json")
    return json.loads(path.read_text())


def load_hf(hf_dir: str | Path, *, allow_pickle: bool = False,
            progress: bool = False) -> tuple[ModelConfig, Params]:
    """(model config, float32 params) of a local Hugging Face checkpoint directory."""
    config = model_config_from_hf(read_hf_config(hf_dir))
    tensors = open_hf_tensors(hf_dir, allow_pickle=allow_pickle)
    return config, params_from_hf(tensors, config, progress=progress)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _write_shards(out_dir: Path, tensors: Iterator[tuple[str, np.ndarray]],
                  max_shard_bytes: int) -> None:
    """model.safetensors, or model-0000k-of-0000n.safetensors + index when over one shard.

    Each shard is written as soon as it is full; the count in the names is known only at the
    end, so shards are renamed then."""
    from safetensors.numpy import save_file

    # "pt": transformers refuses safetensors files that say they were written for another framework.
    metadata = {"format": "pt"}
    written: list[tuple[Path, list[str]]] = []
    shard: dict[str, np.ndarray] = {}
    total_bytes = 0

    def flush() -> None:
        path = out_dir / f"model-{len(written) + 1:05d}.safetensors.partial"
        save_file(shard, path, metadata=metadata)
        written.append((path, list(shard)))
        shard.clear()

    for name, array in tensors:
        if shard and sum(a.nbytes for a in shard.values()) + array.nbytes > max_shard_bytes:
            flush()
        shard[name] = array
        total_bytes += array.nbytes
    flush()
    if len(written) == 1:
        written[0][0].replace(out_dir / "model.safetensors")
        return
    weight_map = {}
    for k, (path, names) in enumerate(written, 1):
        file = f"model-{k:05d}-of-{len(written):05d}.safetensors"
        path.replace(out_dir / file)
        weight_map.update(dict.fromkeys(names, file))
    _write_json(out_dir / "model.safetensors.index.json",
                {"metadata": {"total_size": total_bytes}, "weight_map": weight_map})


def save_hf(out_dir: str | Path, config: ModelConfig, params: Params, *,
            dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
            bos_id: int | None = 1, eos_id: int | None = 2, progress: bool = False) -> None:
    """Writes config.json, generation_config.json and (sharded) model.safetensors.

    Shards are written one at a time, so the host holds at most one shard beyond `params`."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: choose one of {sorted(DTYPES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config.json",
                hf_config_from_model(config, bos_id=bos_id, eos_id=eos_id, dtype=dtype))
    _write_json(out_dir / "generation_config.json", {"bos_token_id": bos_id,
                                                     "eos_token_id": eos_id})
    tensors = ((name, array.astype(DTYPES[dtype]))
               for name, array in hf_tensors_from_params(params, config, progress=progress))
    _write_shards(out_dir, tensors, max_shard_bytes)

# ---------------------------------------------------------------------------------------------
# Tokenizers


def save_tokenizer(out_dir: str | Path, tokenizer: Tokenizer) -> None:
    """A run's tokenizer as files AutoTokenizer loads: a sentencepiece model converted (below),
    a Hugging Face tokenizer.json as it came (with the pad token finetuning may have added)."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        save_hf_tokenizer(out_dir, tokenizer.model_proto)
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, content in tokenizer.files().items():
        (Path(out_dir) / name).write_bytes(content)


def save_hf_tokenizer(out_dir: str | Path, model_proto: bytes) -> None:
    """Writes an lmlib sentencepiece model as HF tokenizer files that encode text to the same ids.

    tokenizer.json follows the model's own normaliser settings (transformers builds it from the
    proto; its legacy mode keeps SentencePiece's dummy prefix even before a leading space).
    split_special_tokens: SentencePiece reads "<s>" in text as the characters, never as BOS;
    HF would otherwise turn text such as a literal "<s>" in a source file into the special id.
    tokenizer.model is the original, for tools that read sentencepiece (llama.cpp, slow HF).
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    spec = proto.trainer_spec
    specials = {"unk_token": spec.unk_piece, "bos_token": spec.bos_piece,
                "eos_token": spec.eos_piece, "pad_token": spec.pad_piece}
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in specials.values()])
    # Documents are trained as BOS + text + EOS (lmlib.data.prepare); a prompt starts with BOS.
    bos = (spec.bos_piece, spec.bos_id)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos])
    out_dir = Path(out_dir)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, split_special_tokens=True,
                            **specials).save_pretrained(out_dir)
    # The generic class name that transformers 4 and 5 both load from tokenizer.json alone.
    config = json.loads((out_dir / "tokenizer_config.json").read_text())
    _write_json(out_dir / "tokenizer_config.json",
                {**config, "tokenizer_class": "PreTrainedTokenizerFast"})
    _write_json(out_dir / "special_tokens_map.json", specials)
    (out_dir / "tokenizer.model").write_bytes(model_proto)
