"""Sampling: greedy decoding with the KV cache equals transformers' and an uncached argmax."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import torch
import transformers

from lmlib import hf
from lmlib.generate import Sampler, SamplingConfig

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [7, 2], [99, 14, 27, 51]]  # different lengths: left-padded

HF_CONFIGS = {
    "llama": transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "gpt2": transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                    n_positions=64),
}


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def models(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[request.param])
    theirs.save_pretrained(directory)
    return theirs.eval(), Sampler(*hf.load_hf(directory))


def test_greedy_generation_equals_transformers_for_left_padded_prompts(models):
    theirs, sampler = models
    new_tokens = 12
    ours = sampler.generate(PROMPTS, SamplingConfig(max_new_tokens=new_tokens))
    width = max(map(len, PROMPTS))
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        out = theirs.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=0, eos_token_id=None)
    assert ours == out[:, width:].tolist()


def test_cached_decoding_equals_uncached_argmax_at_every_step(models):
    _, sampler = models
    prompt = PROMPTS[0]
    generated = sampler.generate([prompt], SamplingConfig(max_new_tokens=8))[0]
    sequence = prompt + generated
    tokens = np.asarray([sequence[:-1]], np.int32)
    from lmlib.inference import LoadedModel

    logits = LoadedModel(sampler.config, sampler.params).logits(tokens)[0]
    expected = logits[len(prompt) - 1:].argmax(-1).tolist()
    assert generated == expected


def test_sampling_respects_eos_top_k_and_is_seeded(models):
    _, sampler = models
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=5, seed=3)
    first = sampler.generate(PROMPTS, sampling)
    assert first == sampler.generate(PROMPTS, sampling)  # same seed, same tokens
    assert all(0 <= t < sampler.config.vocab_size for row in first for t in row)
    eos = first[0][2]
    stopped = sampler.generate(PROMPTS, SamplingConfig(
        max_new_tokens=10, temperature=1.0, top_k=5, seed=3, eos_id=eos))
    assert stopped[0] == first[0][:first[0].index(eos) + 1]


def test_generate_tool_samples_a_trained_demo_run(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, TINY_RUN, run_cli
    from lmlib.data.tokenizer import load_tokenizer
    from lmlib.train.checkpoint import load_params

    out = run_cli(*TINY_RUN, "--set=trainer.num_train_steps=3", f"--workdir={tmp_path}",
                  "--set=trainer.samples.every_steps=3", "--set=trainer.samples.prompts=def |x =",
                  "--set=trainer.samples.max_new_tokens=4").stdout
    # Samples during training: console, samples.jsonl and TensorBoard's text tab.
    assert "sample 1 at step 3: 'x =" in out
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples] == [(3, "def "), (3, "x =")]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"samples/0", "samples/1"} <= set(events.Tags()["tensors"])
    tokenizer = load_tokenizer(tmp_path / "tokenizer.model")
    sampler = Sampler(*load_params(tmp_path))
    prompt = [tokenizer.bos_id, *tokenizer.encode("def read(path):\n")]
    completion = sampler.generate([prompt], SamplingConfig(
        max_new_tokens=20, temperature=1.0, seed=1))[0]
    assert len(completion) == 20 and all(0 <= t < tokenizer.vocab_size for t in completion)
    assert isinstance(tokenizer.decode(completion), str)

    result = subprocess.run(
        [sys.executable, "tools/generate.py", f"--checkpoint={tmp_path}",
         "--prompt=def read(path):", "--max_new_tokens=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("def read(path):")
    assert len(result.stdout) > len("def read(path):\n")  # the completion was printed


def test_samples_on_a_sharded_mesh_equal_those_on_one_device(tmp_path):
    from conftest import TINY_RUN, run_cli

    args = [*TINY_RUN, "--set=trainer.num_train_steps=2", "--set=trainer.samples.every_steps=2",
            "--set=trainer.samples.max_new_tokens=6"]
    run_cli(*args, f"--workdir={tmp_path / 'one'}")
    run_cli(*args, "--set=trainer.mesh.data=2", "--set=trainer.mesh.fsdp=2",
            "--set=trainer.mesh.tensor=2", f"--workdir={tmp_path / 'eight'}", devices=8)
    one, eight = ((tmp_path / d / "samples.jsonl").read_text() for d in ("one", "eight"))
    assert one == eight and one.count("\n") == 3  # the three default prompts
