"""Supervised finetuning: the Alpaca prompts, loss masks, packed vs padded rows, bad records, and
the tiny SFT experiments through the real CLI."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import read_metrics, run_cli, train_losses
from lmlib.data import sources, stdlib, supervised
from lmlib.data.supervised import SupervisedData, example_rows, tokenize_example, truncate
from lmlib.data.tokenizer import load_tokenizer
from lmlib.errors import ConfigError
from lmlib.experiment import resolve, with_tokenizer
from lmlib.models import LlamaConfig
from lmlib.train.step import StepConfig, loss_sums

# tatsu-lab/stanford_alpaca, train.py, PROMPT_DICT (copied verbatim, not from lmlib).
ORIGINAL_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ORIGINAL_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def test_alpaca_template_is_the_original_character_for_character():
    with_input = {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}
    no_input = {"instruction": "Name a color.", "input": "", "output": "Blue"}
    assert supervised.TEMPLATES["alpaca"](with_input) == ORIGINAL_PROMPT_INPUT.format_map(with_input)
    assert supervised.TEMPLATES["alpaca"](no_input) == ORIGINAL_PROMPT_NO_INPUT.format_map(no_input)
    assert supervised.find_preprocessor("tatsu-lab/alpaca")(no_input) == {
        "prompt": ORIGINAL_PROMPT_NO_INPUT.format_map(no_input), "response": "Blue"}


@pytest.fixture(scope="module")
def tokenizer():
    return supervised.sft_tokenizer(SupervisedData(source="stdlib"))


@pytest.fixture(scope="module")
def examples(tokenizer):
    """Tokenized signature -> docstring examples of varied lengths, each at most 64 tokens."""
    counts = supervised.Counts()
    records = [r for _, _, r in stdlib.stdlib_docstring_records("eval")][:40]
    tokenized = (tokenize_example(tokenizer, {"prompt": r["input"], "response": r["output"]})
                 for r in records)
    return [e for e in (truncate(e, 64, counts) for e in tokenized) if e is not None]


def test_prompt_tokens_are_masked_and_the_response_with_eos_is_learned(tokenizer):
    example = {"prompt": "### Instruction:\nSay hi.\n\n### Response:", "response": " Hi there"}
    tokens = tokenize_example(tokenizer, example)
    masked = tokens["tokens"][tokens["loss_mask"] == 1]
    assert tokens["tokens"][0] == tokenizer.bos_id and masked[-1] == tokenizer.eos_id
    assert tokenizer.decode(masked[:-1]).strip() == "Hi there"
    assert tokenizer.decode(tokens["tokens"][tokens["loss_mask"] == 0][1:]) == example["prompt"]


def test_truncation_cuts_the_response_end_and_drops_prompts_that_fill_the_row(tokenizer):
    counts = supervised.Counts()
    example = tokenize_example(tokenizer, {"prompt": "p " * 10, "response": "r " * 50})
    cut = truncate(example, 30, counts)
    assert len(cut["tokens"]) == 30 and cut["loss_mask"][-1] == 1
    np.testing.assert_array_equal(cut["tokens"], example["tokens"][:30])
    assert truncate(tokenize_example(tokenizer, {"prompt": "p " * 40, "response": "r"}), 30,
                    counts) is None
    assert (counts.truncated, counts.dropped, counts.examples) == (1, 1, 1)


def rows(examples, layout, pad_id, batch_size=4):
    dataset = example_rows(examples, seq_len=63, batch_size=batch_size, seed=0, shuffle=False,
                           repeat=False, layout=layout, pad_id=pad_id)
    return [{k: jnp.asarray(v) for k, v in batch.items()} for batch in dataset]


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=4097, hidden_dim=32, num_layers=2, num_heads=4,
                         num_kv_heads=2, mlp_dim=64, seq_len=63)
    return config.make(nnx.Rngs(0))


def per_example_losses(model, batches) -> dict[tuple, float]:
    """Summed response loss of each example, keyed by the example's input tokens."""
    losses = {}
    for batch in batches:
        hidden = model(batch["tokens"], batch["positions"], batch["segment_ids"])
        logits = model.logits(hidden).astype(jnp.float32)
        token_loss = (jax.nn.logsumexp(logits, -1)
                      - jnp.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0])
        token_loss = np.asarray(token_loss * batch["weights"])
        for row in range(len(token_loss)):
            segments = np.asarray(batch["segment_ids"][row])
            for segment in set(segments) - {0}:
                where = segments == segment
                key = tuple(np.asarray(batch["tokens"][row])[where])
                losses[key] = float(token_loss[row][where].sum())
    return losses


def test_packed_and_padded_rows_give_the_same_per_example_losses(model, examples, tokenizer):
    packed = rows(examples, "packed", tokenizer.pad_id)
    padded = rows(examples, "padded", tokenizer.pad_id)
    # Packing holds the same examples in fewer rows.
    assert sum(len(b["tokens"]) for b in packed) < sum(len(b["tokens"]) for b in padded)
    assert all((np.asarray(b["segment_ids"]).max(axis=1) <= 1).all() for b in padded)
    packed_losses = per_example_losses(model, packed)
    padded_losses = per_example_losses(model, padded)
    common = set(packed_losses) & set(padded_losses)  # drop_remainder differs between layouts
    assert len(common) >= 20
    for key in common:
        assert packed_losses[key] == pytest.approx(padded_losses[key], rel=1e-5, abs=1e-5)


def test_two_processes_read_disjoint_halves_of_the_one_process_batches(examples, tokenizer):
    def first_batches(**process):
        dataset = example_rows(examples, seq_len=63, batch_size=4 // process["process_count"],
                               seed=0, shuffle=True, repeat=True, layout="packed",
                               pad_id=tokenizer.pad_id, **process)
        iterator = iter(dataset)
        return [next(iterator)["tokens"] for _ in range(3)]

    whole = first_batches(process_index=0, process_count=1)
    halves = [first_batches(process_index=i, process_count=2) for i in (0, 1)]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]), batch)


def test_prompt_targets_never_weigh_in_and_an_all_prompt_batch_contributes_zero(
        model, examples, tokenizer):
    batch = rows(examples, "packed", tokenizer.pad_id)[0]
    graphdef, params = nnx.split(model)
    config = StepConfig(compute_dtype=jnp.float32, num_microbatches=1, loss_chunk_len=0)

    def loss(b):
        return loss_sums(params, graphdef, b, config)

    total, weight = loss(batch)
    assert weight == batch["weights"].sum() > 0
    # Other targets where the weight is 0 (prompt, padding, across examples): the same loss.
    rng = np.random.default_rng(0)
    noise = jnp.asarray(rng.integers(0, 4096, batch["targets"].shape), jnp.int32)
    changed = {**batch, "targets": jnp.where(batch["weights"] > 0, batch["targets"], noise)}
    assert loss(changed)[0] == total
    # A batch whose responses are all masked: zero loss, zero weight, zero gradient.
    masked = {**batch, "weights": jnp.zeros_like(batch["weights"])}
    assert loss(masked) == (0, 0)
    grads = jax.grad(lambda p: loss_sums(p, graphdef, masked, config)[0])(params)
    assert all((np.asarray(g) == 0).all() for g in jax.tree.leaves(grads))


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("line, reason", [
    ('{"prompt": "a"}', "no 'response' field"),
    ('{"prompt": "a", "response": 3}', "'response' is int, not a string"),
    ('{"prompt": "a", "response": ', "not valid JSON"),
    ('["a", "b"]', "a JSON list, not an object"),
])
def test_bad_records_name_file_and_line_or_are_counted(tmp_path, line, reason):
    good = '{"prompt": "a", "response": "b"}'
    path = write_jsonl(tmp_path / "sft.jsonl", [good, line, good])
    with pytest.raises(sources.DataError, match=f"{path}:2: {reason}"):
        supervised.read_examples(SupervisedData(train_urls=str(path),
                                                validation_fraction=0), "train")
    examples, skipped = supervised.read_examples(
        SupervisedData(train_urls=str(path), validation_fraction=0, on_error="skip"), "train")
    assert len(examples) == 2 and skipped.counts == {str(path): 1}
    assert path.read_text().splitlines()[1] == line  # the input is untouched


def test_alpaca_json_array_file_reads_with_the_registered_preprocessor(tmp_path):
    records = [{"instruction": f"Count to {i}.", "input": "", "output": str(i)} for i in range(5)]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(records, indent=4))
    config = SupervisedData(train_urls=str(path), preprocess="tatsu-lab/alpaca",
                            validation_fraction=0)
    examples, _ = supervised.read_examples(config, "train")
    assert [e["response"] for e in examples] == ["0", "1", "2", "3", "4"]
    assert examples[0]["prompt"] == ORIGINAL_PROMPT_NO_INPUT.format(instruction="Count to 0.")


def test_a_tokenizer_without_pad_gets_one_and_the_vocabulary_grows(tokenizer, tmp_path):
    from lmlib import hf

    hf.save_hf_tokenizer(tmp_path, tokenizer.model_proto)
    config_file = tmp_path / "tokenizer_config.json"  # as Llama's: no pad token
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "pad_token": None}))
    bare = load_tokenizer(tmp_path / "tokenizer.json")
    assert bare.pad_id is None
    config = with_tokenizer(resolve("JsonlAlpacaTiny", [
        f"data.tokenizer.path={tmp_path / 'tokenizer.json'}", f"data.train_urls={tmp_path}"]))
    assert config.model.vocab_size == bare.vocab_size + 1
    padded = supervised.with_pad(bare)
    assert padded.pad_id == bare.vocab_size and padded.vocab_size == bare.vocab_size + 1


SFT_RUN = ["--set=trainer.log_every=5", "--set=trainer.eval_every=10",
           "--set=trainer.eval_batches=2", "--set=trainer.precision=p=f32,c=f32",
           "--set=model.seq_len=128", "--set=model.num_layers=2", "--set=trainer.num_train_steps=30"]


def test_tiny_alpaca_through_the_cli_trains_and_its_response_eval_loss_falls(tmp_path):
    records = [r for split in ("train", "eval") for _, _, r in
               stdlib.stdlib_docstring_records(split)][:1500]
    data = tmp_path / "alpaca_data.jsonl"
    write_jsonl(data, [json.dumps(r) for r in records])
    out = run_cli("--exp=JsonlAlpacaTiny", *SFT_RUN, f"--set=data.train_urls={data}",
                  f"--workdir={tmp_path / 'run'}").stdout
    assert "holding out 5.00% of the train examples" in out
    evals = [m["eval/loss"] for m in read_metrics(tmp_path / "run") if "eval/loss" in m]
    assert len(evals) == 3 and evals == sorted(evals, reverse=True), evals
    assert evals[-1] < evals[0] - 0.1, evals


def test_stdlib_sft_demo_through_the_cli_resumes_exactly_and_a_bad_record_is_exit_2(tmp_path):
    demo = ["--exp=StdlibSFT", *SFT_RUN, "--set=trainer.num_train_steps=20",
            "--set=data.layout=padded", "--set=trainer.checkpoint.save_every_steps=10",
            f"--workdir={tmp_path / 'run'}"]
    run_cli(*demo)
    evals = [m["eval/loss"] for m in read_metrics(tmp_path / "run") if "eval/loss" in m]
    assert len(evals) == 2 and evals[-1] < evals[0], evals
    # Restarted from step 10, the packing iterator resumes where it was: the same losses.
    whole = train_losses(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "20")
    assert "resuming from" in run_cli(*demo).stdout
    assert train_losses(tmp_path / "run") == whole

    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"instruction": "x", "input": ""}'])
    result = run_cli("--exp=JsonlAlpacaTiny", f"--set=data.train_urls={bad}",
                     f"--workdir={tmp_path / 'bad'}", check=False)
    assert result.returncode == 2
    assert f"{bad}:1: no 'output' field" in result.stderr


def test_parquet_and_datasets_directories_give_the_same_examples_as_jsonl(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"instruction": f"Spell {w}.", "input": "", "output": " ".join(w)}
               for w in ("cat", "dog", "emu")]
    write_jsonl(tmp_path / "a.jsonl", [json.dumps(r) for r in records])
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "a.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "a_dataset"))
    read = {name: supervised.read_examples(SupervisedData(
        train_urls=str(tmp_path / name), preprocess="tatsu-lab/alpaca", validation_fraction=0),
        "train")[0] for name in ("a.jsonl", "a.parquet", "a_dataset")}
    assert read["a.jsonl"] == read["a.parquet"] == read["a_dataset"]
    assert [e["response"] for e in read["a.jsonl"]] == ["c a t", "d o g", "e m u"]


def question_answer(record: dict) -> dict:
    """A user's preprocessor, named as module:function."""
    return {"prompt": f"Q: {record['q']}\nA:", "response": f" {record['a']}"}


def test_a_preprocessor_given_as_module_function_maps_records(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ['{"q": "2+2?", "a": "4"}'])
    config = SupervisedData(train_urls=str(path), preprocess="test_supervised:question_answer",
                            validation_fraction=0)
    assert supervised.read_examples(config, "train")[0] == [{"prompt": "Q: 2+2?\nA:",
                                                             "response": " 4"}]
    with pytest.raises(ConfigError, match="data.preprocess='nope': not a registered"):
        SupervisedData(train_urls=str(path), preprocess="nope").validate()
