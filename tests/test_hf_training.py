"""Training from and to Hugging Face through the real CLI: continued pretraining starts at
transformers' loss, and the export during training loads in transformers with the same logits."""

import numpy as np
import pytest
import torch
import transformers
from array_record.python.array_record_data_source import ArrayRecordDataSource

import lmlib
from lmlib import experiment, hf
from lmlib.data.pretrain import PretrainData, prepare_data
from lmlib.train.params import load_hf_params
from lmlib.train.run import Run
from conftest import byte_level_bpe, run_cli, train_losses


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random HF Llama with the demo's tokenizer, so the demo's prepared data fits it."""
    directory = tmp_path_factory.mktemp("hf_llama")
    config = transformers.LlamaConfig(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    hf.save_hf_tokenizer(directory, prepare_data(PretrainData()).tokenizer.model_proto)
    return directory


def hf_loss(model, batch) -> float:
    """transformers' mean token loss of a packed lmlib batch, one document segment at a time."""
    loss_sum = weight_sum = 0.0
    for tokens, targets, weights, segments in zip(batch["tokens"], batch["targets"],
                                                  batch["weights"], batch["segment_ids"]):
        for segment in np.unique(segments):
            where = segments == segment
            with torch.no_grad():
                logits = model(torch.tensor(tokens[where][None])).logits[0].double()
            token_losses = torch.nn.functional.cross_entropy(
                logits, torch.tensor(targets[where]).long(), reduction="none").numpy()
            loss_sum += float((token_losses * weights[where]).sum())
            weight_sum += float(weights[where].sum())
    return loss_sum / weight_sum


def test_continued_pretraining_starts_at_transformers_loss_and_exports(hf_dir, tmp_path):
    overrides = [f"init_from={hf_dir}", "trainer.num_train_steps=1", "trainer.batch_size=4",
                 "trainer.precision=p=f32,c=f32", "trainer.eval_batches=1",
                 "trainer.hf_export.every_steps=1", "trainer.hf_export.dtype=float32"]
    out = run_cli("--exp=ContinuePretraining", *(f"--set={o}" for o in overrides),
                  f"--workdir={tmp_path}").stdout
    assert "loading Hugging Face weights" in out

    # The first batch, rebuilt from the same resolved config.
    config = experiment.with_tokenizer(experiment.resolve("ContinuePretraining", overrides))
    assert config.model.hidden_dim == 64 and config.data.tokenizer.path.endswith("tokenizer.model")
    trainer = Run(config)
    batch = next(trainer.train_iterator())
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert train_losses(tmp_path)[1] == pytest.approx(hf_loss(model, batch), abs=1e-4)

    # The export after step 1 is the trained model, as transformers sees it.
    exported = tmp_path / "hf" / "step_000001"
    trained = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    tokens = batch["tokens"][:2, :16]
    with torch.no_grad():
        theirs = trained(torch.tensor(tokens).long()).logits.numpy()
    ours = lmlib.load_model(tmp_path).logits(tokens)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    text = "def f(x):\n    return x\n"
    assert (tokenizer.encode(text, add_special_tokens=False)
            == trainer.data.tokenizer.encode(text))


def test_a_larger_vocabulary_grows_the_embedding_with_the_mean_row(hf_dir):
    config = experiment.resolve("ContinuePretraining", [f"init_from={hf_dir}",
                                                        "model.vocab_size=4098"])
    params = load_hf_params(Run(config), str(hf_dir))
    _, original = hf.load_hf(hf_dir)
    for name, axis in (("embed", 0), ("head", 1)):
        grown = np.asarray(params["embed"]["table"] if name == "embed" else params["head"])
        old = original["embed"]["table"] if name == "embed" else original["head"]
        assert grown.shape[axis] == 4098
        np.testing.assert_array_equal(np.take(grown, range(4096), axis=axis), old)
        np.testing.assert_allclose(np.take(grown, [4096, 4097], axis=axis),
                                   np.repeat(old.mean(axis=axis, keepdims=True), 2, axis=axis),
                                   rtol=1e-6)


def test_a_checkpoint_with_only_a_tokenizer_json_trains_and_exports_it(tmp_path):
    """Llama 3 style: byte-level BPE in tokenizer.json, BOS and EOS named by its config."""
    hf_dir = tmp_path / "llama3"
    tokenizer_json = byte_level_bpe(hf_dir, "<|begin_of_text|>")
    config = transformers.LlamaConfig(
        vocab_size=700, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(hf_dir)
    overrides = [f"init_from={hf_dir}", "trainer.num_train_steps=1", "trainer.batch_size=4",
                 "trainer.precision=p=f32,c=f32", "trainer.eval_batches=1",
                 "trainer.hf_export.every_steps=1", "trainer.hf_export.dtype=float32",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    workdir = tmp_path / "run"
    run_cli("--exp=ContinuePretraining", *(f"--set={o}" for o in overrides),
            f"--workdir={workdir}")

    resolved = experiment.with_tokenizer(experiment.resolve("ContinuePretraining", overrides))
    assert resolved.data.tokenizer.path == str(tokenizer_json)
    trainer = Run(resolved)
    batch = next(trainer.train_iterator())
    shard = ArrayRecordDataSource(trainer.data.shards("train")[:1])
    document = np.frombuffer(shard[0], np.int32)
    assert (document[0], document[-1]) == (0, 1)  # <|begin_of_text|> ... <|end_of_text|>
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert train_losses(workdir)[1] == pytest.approx(hf_loss(model, batch), abs=1e-4)

    exported = workdir / "hf" / "step_000001"
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|begin_of_text|>", "<|end_of_text|>")
    text = "def f(x):\n    return x  # Grüße\n"
    assert tokenizer.encode(text, add_special_tokens=False) == trainer.data.tokenizer.encode(text)
    assert (workdir / "tokenizer.json").exists()  # the run decodes on its own (tools/generate)


@pytest.fixture(scope="module")
def hf_dir_without_pad(tmp_path_factory):
    """A tiny random HF Llama whose sentencepiece tokenizer has no pad token (as Llama's)."""
    import io
    import json

    import sentencepiece as spm

    from lmlib.data import stdlib

    directory = tmp_path_factory.mktemp("hf_llama_no_pad")
    lines = [line for path in stdlib.stdlib_files("train")[:40]
             for line in stdlib.read_text(path).splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=512, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    hf.save_hf_tokenizer(directory, model.getvalue())
    records = [{"instruction": f"Reverse {w}.", "input": "", "output": w[::-1]}
               for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")]
    (directory / "alpaca_data.json").write_text(json.dumps(records * 4, indent=2))
    return directory


def test_alpaca_style_sft_from_hf_adds_a_pad_row_and_starts_at_transformers_loss(
        hf_dir_without_pad, tmp_path):
    overrides = [f"init_from={hf_dir_without_pad}",
                 f"data.train_urls={hf_dir_without_pad / 'alpaca_data.json'}",
                 f"data.validation_urls={hf_dir_without_pad / 'alpaca_data.json'}",
                 "data.preprocess=tatsu-lab/alpaca", "trainer.num_train_steps=1",
                 "trainer.batch_size=4", "trainer.precision=p=f32,c=f32",
                 "trainer.eval_batches=1", "trainer.hf_export.every_steps=1",
                 "trainer.hf_export.dtype=float32"]
    out = run_cli("--exp=FinetuneHF", *(f"--set={o}" for o in overrides),
                  f"--workdir={tmp_path}").stdout
    assert "model.vocab_size: 512 -> 513 (the tokenizer has no pad token" in out
    assert "resizing the vocabulary from 512 to 513" in out

    # transformers, with the row added the same way, gives the first step's loss on its batch.
    config = experiment.with_tokenizer(experiment.resolve("FinetuneHF", overrides))
    trainer = Run(config)
    batch = next(trainer.train_iterator())
    assert 0 < batch["weights"].sum() < (batch["segment_ids"] > 0).sum()  # responses only
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir_without_pad,
                                                              dtype=torch.float32)
    model.resize_token_embeddings(513, mean_resizing=False)
    with torch.no_grad():
        for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            table[512] = table[:512].mean(0)
    assert train_losses(tmp_path)[1] == pytest.approx(hf_loss(model, batch), abs=1e-4)

    # The export has the pad token at the new row.
    exported = tmp_path / "hf" / "step_000001"
    assert transformers.AutoConfig.from_pretrained(exported).vocab_size == 513
    assert transformers.AutoTokenizer.from_pretrained(exported).pad_token_id == 512
