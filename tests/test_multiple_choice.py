"""Multiple-choice accuracy equals a hand computation of each choice's log-likelihood with
transformers, through the real CLI's --mode=eval on an imported checkpoint."""

import json

import numpy as np
import pytest
import torch
import transformers

from lmlib import hf
from lmlib.data.pretrain import PretrainData, prepare_data
from conftest import run_cli

TASK = [  # context, choices, label: made up; a random model gets some right by chance
    ("def add(a, b):\n    return", ["a + b", "a - b", "None"], 0),
    ("import os\nprint(os.path.", ["join('a', 'b'))", "banana)", "exists('x'))"], 2),
    ("for i in range(10):", ["print(i)", "pass", "break", "yield i"], 1),
    ("class Stack:\n    def push(self, item):", ["self.items.append(item)", "return 1"], 0),
    ("x = [1, 2, 3]\ny = len(", ["x)", "y)", "3)"], 0),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    model.save_pretrained(root / "hf")
    tokenizer = prepare_data(PretrainData()).tokenizer
    hf.save_hf_tokenizer(root / "hf", tokenizer.model_proto)
    # The same questions in the lmlib layout and in HellaSwag's.
    (root / "lmlib.jsonl").write_text("".join(
        json.dumps({"context": c, "choices": ch, "label": l}) + "\n" for c, ch, l in TASK))
    (root / "hellaswag.jsonl").write_text("".join(
        json.dumps({"ctx": c, "endings": ch, "label": str(l)}) + "\n" for c, ch, l in TASK))
    return root, model.eval(), tokenizer


def hand_computed(model, tokenizer) -> dict[str, float]:
    correct = correct_norm = 0
    for context, choices, label in TASK:
        prefix = [tokenizer.bos_id, *tokenizer.encode(context)]
        logliks, lengths = [], []
        for choice in choices:
            ids = [tokenizer.bos_id, *tokenizer.encode(context + " " + choice)]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            logliks.append(sum(float(logprobs[i - 1, ids[i]]) for i in range(len(prefix),
                                                                             len(ids))))
            lengths.append(len((" " + choice).encode()))
        correct += int(np.argmax(logliks) == label)
        correct_norm += int(np.argmax(np.asarray(logliks) / lengths) == label)
    return {"acc": correct / len(TASK), "acc_norm": correct_norm / len(TASK)}


def test_accuracy_equals_a_hand_computation_with_transformers(setup):
    root, model, tokenizer = setup
    out = run_cli("--exp=ContinuePretraining", f"--set=init_from={root / 'hf'}",
                  "--set=trainer.eval_batches=1", "--set=trainer.batch_size=4",
                  f"--set=trainer.multiple_choice.tasks={root / 'lmlib.jsonl'},"
                  f"{root / 'hellaswag.jsonl'}", "--mode=eval").stdout
    expected = hand_computed(model, tokenizer)
    for task in ("lmlib", "hellaswag"):
        for metric in ("acc", "acc_norm"):
            line = next(l for l in out.splitlines() if l.startswith(f"mc/{task}/{metric} "))
            assert float(line.split()[1]) == pytest.approx(expected[metric]), line


def test_a_malformed_task_line_is_named(setup, tmp_path):
    root, _, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["b"], "label": 0}\n{"context": "a", "label": 0}\n')
    result = run_cli("--exp=ContinuePretraining", f"--set=init_from={root / 'hf'}",
                     "--set=trainer.eval_batches=1", "--set=trainer.batch_size=4",
                     f"--set=trainer.multiple_choice.tasks={bad}", "--mode=eval", check=False)
    assert result.returncode == 2
    assert f"{bad}:2: KeyError" in result.stderr
