"""A run as a user meets it, through the real CLI: the resolved config, the run's identity on
resume, an eval loss that belongs to the data, and mistakes found before anything compiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_RUN, run_cli
from test_multiprocess import run_two_processes


def eval_loss(output: str) -> float:
    return float(re.search(r"^eval loss ([0-9.]+)", output, re.M)[1])


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def stdlib_texts(count: int) -> list[str]:
    from lmlib.data import stdlib

    return [stdlib.read_text(p) for p in stdlib.stdlib_files("train")[:count]]


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize("order", [1, -1])
def test_overrides_apply_in_any_order_then_the_tree_is_validated_once(order, tmp_path):
    data = write_jsonl(tmp_path / "x.jsonl", ["a"])
    overrides = ["--set=data.source=urls", f"--set=data.train_urls={data}"][::order]
    out = run_cli("--exp=StdlibLlama", *overrides, "--mode=show").stdout
    assert f"data.train_urls: {data}" in out and "data.source: urls" in out


def test_show_and_dry_run_read_no_weights_and_no_data(tmp_path):
    """The headline experiment's init_from is a hub id: offline, show and dry_run still work
    from shapes, and neither trains a tokenizer nor prepares data."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "LMLIB_CACHE": str(tmp_path / "cache")}
    out = run_cli("--exp=Llama7BAlpaca", "--mode=show", env=env).stdout
    assert "parameters: 6,738,415,616" in out and "read when training starts" in out
    small = ["--set=model.hidden_dim=128", "--set=model.mlp_dim=256", "--set=model.num_heads=4",
             "--set=model.num_layers=2", "--set=trainer.batch_size=8",
             "--set=trainer.microbatch_size=8", "--set=model.vocab_size=512"]
    out = run_cli("--exp=Llama7BAlpaca", "--mode=dry_run", *small, env=env).stdout
    assert "dry run: compiled one step" in out
    out = run_cli("--exp=StdlibLlama", "--mode=dry_run", *small, env=env).stdout
    assert "dry run: compiled one step" in out
    assert "tokenizer: training" not in out and "prepare:" not in out
    assert not (tmp_path / "cache").exists()


def test_an_imported_model_trains_on_sane_rows_and_keeps_its_context(tmp_path):
    """A Llama-3.1-style config.json (131,072 positions): rows of 4,096 tokens unless asked,
    show says so, and the export writes the model's own context back."""
    from lmlib import hf

    hf_config = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64,
                 "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "max_position_embeddings": 131072,
                 "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(hf_config))  # no weights at all
    config = hf.model_config_from_hf(hf_config)
    assert (config.seq_len, config.max_seq_len) == (4096, 131072)
    assert hf.hf_config_from_model(config)["max_position_embeddings"] == 131072
    out = run_cli("--exp=ContinuePretraining", f"--set=init_from={tmp_path}",
                  "--mode=show").stdout
    assert "model.seq_len: 4096" in out and "the model supports 131,072" in out


def test_a_brace_member_that_matches_nothing_is_an_error(tmp_path):
    from lmlib.data import sources
    from lmlib.errors import ConfigError

    write_jsonl(tmp_path / "web.000.jsonl", ["a"])
    with pytest.raises(ConfigError, match=r"no file matches '.*web\.001\.jsonl' \(a member of"):
        sources.expand_url(str(tmp_path / "web.{000..002}.jsonl"))


# ----------------------------------------------------------------------------- identity


JSONL_RUN = ["--exp=JsonlLlamaTiny", "--set=data.tokenizer.vocab_size=600",
             "--set=data.validation_fraction=0.2", "--set=model.vocab_size=600",
             "--set=model.seq_len=64", "--set=model.num_layers=1", "--set=trainer.batch_size=4",
             "--set=trainer.eval_batches=1", "--set=trainer.precision=p=f32,c=f32"]


def test_a_resumed_run_keeps_its_tokenizer_when_its_inputs_change(tmp_path):
    files = [write_jsonl(tmp_path / f"data/part{i}.jsonl", stdlib_texts(30)[i::3])
             for i in range(3)]
    workdir = tmp_path / "run"
    args = [*JSONL_RUN, f"--set=data.train_urls={tmp_path}/data/*.jsonl",
            f"--set=data.cache_dir={tmp_path / 'cache'}", f"--workdir={workdir}"]
    run_cli(*args, "--set=trainer.num_train_steps=2")
    tokenizer = (workdir / "tokenizer.model").read_bytes()
    identity = json.loads((workdir / "run.json").read_text())
    assert not (workdir / "samples.jsonl").exists()  # sampling is off

    with open(files[1], "a") as f:  # one more document: the cached tokenizer would change
        f.write(json.dumps({"text": "def added():\n    return 42\n"}) + "\n")
    out = run_cli(*args, "--set=trainer.num_train_steps=3").stdout
    assert "the inputs changed since this run started" in out and "resuming from" in out
    assert "tokenizer: training" not in out
    assert (workdir / "tokenizer.model").read_bytes() == tokenizer
    assert json.loads((workdir / "run.json").read_text()) == identity

    # Rerunning the finished run says so; another tokenizer is refused with the way on.
    out = run_cli(*args, "--set=trainer.num_train_steps=3").stdout
    assert "already trained to step 3" in out
    other = tmp_path / "other.model"
    from lmlib.data.tokenizer import train_sentencepiece

    train_sentencepiece(stdlib_texts(12), other, vocab_size=600)
    result = run_cli(*args, "--set=trainer.num_train_steps=4",
                     f"--set=data.tokenizer.path={other}", check=False)
    assert result.returncode == 2, result.stderr
    assert "never swaps its tokenizer" in result.stderr and "load_from=" in result.stderr
    assert "Traceback" not in result.stderr and "compiled" not in result.stdout


# ----------------------------------------------------------------------------- eval


EVAL = [*TINY_RUN, "--mode=eval", "--set=trainer.eval_batches=0"]


def test_eval_covers_the_whole_split_at_any_batch_size_and_process_count():
    losses = [eval_loss(run_cli(*EVAL, f"--set=trainer.batch_size={b}").stdout)
              for b in (8, 32)]
    two = eval_loss(run_two_processes(*EVAL, "--set=trainer.batch_size=8"))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert two == pytest.approx(losses[0], rel=1e-4)


def test_eval_mode_writes_its_own_records_not_the_runs(tmp_path):
    run_cli(*TINY_RUN, "--set=trainer.num_train_steps=2", f"--workdir={tmp_path}")
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    events = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    out = run_cli(*EVAL, f"--workdir={tmp_path}").stdout
    record = json.loads((tmp_path / "eval" / "step_000002.json").read_text())
    assert record["metrics"]["eval/loss"] == pytest.approx(eval_loss(out), abs=1e-4)
    assert list((tmp_path / "eval" / "tensorboard").iterdir())
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == events


# ----------------------------------------------------------------------------- early errors


def assert_refused_before_compiling(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "compiled" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_mistakes_are_found_before_compiling(tmp_path):
    missing = tmp_path / "arc.jsonl"
    for mode in ("train", "eval"):
        result = run_cli(*TINY_RUN, f"--mode={mode}", "--set=trainer.num_train_steps=20",
                         f"--set=trainer.multiple_choice.tasks={missing}",
                         "--set=trainer.multiple_choice.every_steps=10", check=False)
        assert_refused_before_compiling(result, f"no such file: {missing}")

    run_cli(*TINY_RUN, "--set=trainer.num_train_steps=1", f"--workdir={tmp_path / 'run'}")
    result = run_cli(*TINY_RUN, "--set=trainer.num_train_steps=2", "--set=optimizer.beta2=0.9",
                     f"--workdir={tmp_path / 'run'}", check=False)
    assert_refused_before_compiling(result, "optimizer.beta2 (saved 0.95, now 0.9)")
    assert "needs a new --workdir with --set trainer.checkpoint.load_from=" in result.stderr


@pytest.mark.parametrize("texts, message", [
    ([], "the train split has no documents"),
    (["def only():\n    return 1\n"], "the eval split is empty"),
])
def test_a_corpus_too_small_to_train_on_is_one_line(tmp_path, texts, message):
    from lmlib.data.tokenizer import train_sentencepiece

    train_sentencepiece(stdlib_texts(12), tmp_path / "t.model", vocab_size=600)
    data = write_jsonl(tmp_path / "tiny.jsonl", texts)
    result = run_cli(*JSONL_RUN, f"--set=data.train_urls={data}",
                     f"--set=data.tokenizer.path={tmp_path / 't.model'}",
                     f"--set=data.cache_dir={tmp_path / 'cache'}", f"--workdir={tmp_path / 'run'}",
                     check=False)
    assert_refused_before_compiling(result, message)


def test_train_tokenizer_without_transformers_writes_the_model_and_says_what_is_missing(tmp_path):
    """The base install has no transformers: tokenizer.json needs `lmlib[hf]`."""
    hide = tmp_path / "hide" / "transformers"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named "
                                      "'transformers'\", name='transformers')\n")
    data = write_jsonl(tmp_path / "d.jsonl", stdlib_texts(10))
    env = {**os.environ, "PYTHONPATH": str(hide.parent)}
    result = subprocess.run(
        [sys.executable, "tools/train_tokenizer.py", "--exp=JsonlLlamaTiny",
         f"--set=data.train_urls={data}", "--vocab_size=600", f"--out={tmp_path / 'tok'}"],
        cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tok" / "tokenizer.model").exists()
    assert not (tmp_path / "tok" / "tokenizer.json").exists()
    assert "pip install 'lmlib[hf]'" in result.stdout and "Traceback" not in result.stderr
