"""Multiple-choice evaluation the way lm-evaluation-harness scores it.

Each choice is scored by the log-likelihood of " " + choice after the context; the prediction is
the best choice (accuracy) or the best per UTF-8 byte of the choice (length-normalised
accuracy, lm-eval's acc_norm). Like lm-eval, the choice's tokens are those of the context and
choice encoded together minus those of the context alone, so the tokenizer sees natural text.

Task files are JSONL, one question per line, in any of three layouts:
    {"context": "...", "choices": ["...", ...], "label": 0}                  (lmlib)
    {"ctx": "...", "endings": ["...", ...], "label": "0"}                     (HellaSwag)
    {"question": "...", "choices": {"text": [...], "label": ["A", ...]}, "answerKey": "A"}  (ARC)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmlib.data.tokenizer import Tokenizer
from lmlib.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Question:
    context: str
    choices: tuple[str, ...]
    label: int


def _parse(record: dict) -> Question:
    if "context" in record:
        return Question(record["context"], tuple(record["choices"]), int(record["label"]))
    if "ctx" in record:
        return Question(record["ctx"], tuple(record["endings"]), int(record["label"]))
    if "question" in record:
        labels = record["choices"]["label"]
        return Question(record["question"], tuple(record["choices"]["text"]),
                        labels.index(record["answerKey"]))
    raise KeyError("no context/ctx/question field")


def read_task(path: str | Path) -> list[Question]:
    questions = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                question = _parse(json.loads(line))
                if not 0 <= question.label < len(question.choices):
                    raise ValueError(f"label {question.label} is not one of the "
                                     f"{len(question.choices)} choices")
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise ConfigError(f"{path}:{number}: {type(e).__name__}: {e}") from None
            questions.append(question)
    return questions


LoglikFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def make_loglik_fn(graphdef: nnx.GraphDef, params) -> LoglikFn:
    """(tokens (B, T), target mask (B, T)) -> summed log-probability of the masked next tokens."""

    @jax.jit
    def loglik(params, tokens_bt, scored_bt):
        model = nnx.merge(graphdef, params)
        positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        hidden = model(tokens_bt[:, :-1], positions_bt[:, :-1], jnp.ones_like(tokens_bt[:, :-1]))
        logprobs = jax.nn.log_softmax(model.logits(hidden).astype(jnp.float32), axis=-1)
        target = jnp.take_along_axis(logprobs, tokens_bt[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(target * scored_bt[:, 1:], axis=-1)

    return lambda tokens, scored: np.asarray(loglik(params, tokens, scored))


def evaluate_task(questions: list[Question], tokenizer: Tokenizer, loglik: LoglikFn,
                  batch_size: int = 32) -> dict[str, float]:
    """Accuracy and length-normalised accuracy over `questions`."""
    rows = []  # (tokens, number of context tokens, choice bytes) per (question, choice)
    for q in questions:
        context = tokenizer.with_bos(tokenizer.encode(q.context))
        for choice in q.choices:
            whole = tokenizer.with_bos(tokenizer.encode(q.context + " " + choice))
            rows.append((whole, len(context), len((" " + choice).encode())))
    # Pad to a multiple of 16 so a few lengths compile, not one per batch.
    width = -(-max(len(r[0]) for r in rows) // 16) * 16
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        tokens = np.zeros((batch_size, width), np.int32)
        scored = np.zeros((batch_size, width), np.float32)
        for i, (ids, context_len, _) in enumerate(chunk):
            tokens[i, :len(ids)] = ids
            scored[i, context_len:len(ids)] = 1.0
        scores.extend(loglik(tokens, scored)[:len(chunk)])
    correct = correct_norm = 0
    index = 0
    for q in questions:
        n = len(q.choices)
        logliks = np.asarray(scores[index:index + n])
        lengths = np.asarray([r[2] for r in rows[index:index + n]])
        correct += int(np.argmax(logliks) == q.label)
        correct_norm += int(np.argmax(logliks / lengths) == q.label)
        index += n
    return {"acc": correct / len(questions), "acc_norm": correct_norm / len(questions)}
