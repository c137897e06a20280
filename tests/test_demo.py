"""The newcomer's first command, shortened: the demo learns, and its logs land where promised."""

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import read_metrics, run_cli


def test_demo_trains_to_a_lower_eval_loss_and_writes_its_logs(tmp_path):
    out = run_cli("--exp=StdlibLlama", "--set=trainer.num_train_steps=60",
                  "--set=trainer.eval_every=60", f"--workdir={tmp_path}").stdout
    metrics = read_metrics(tmp_path)
    first_loss = metrics[0]["train/loss"]
    final_eval = metrics[-1]["eval/loss"]
    assert metrics[0]["step"] == 1 and metrics[-1]["step"] == 60
    assert final_eval < first_loss - 2.0, (first_loss, final_eval)
    # Bits per byte = nats per token / ln 2 / bytes per token; this BPE packs ~3 bytes a token.
    tokens_per_byte = metrics[-1]["eval/bits_per_byte"] * math.log(2) / final_eval
    assert 1 / 4.5 < tokens_per_byte < 1 / 2.0

    # One compact console line per log interval: step, loss, tokens/s, MFU, ETA.
    line = next(l for l in out.splitlines() if l.startswith("step 10/60"))
    assert all(part in line for part in ("loss ", " tok/s", "MFU ", "ETA "))

    assert (tmp_path / "config.json").exists()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [m["step"] for m in metrics
                                                              if "train/loss" in m]
    assert events.Scalars("eval/loss")[-1].value == pytest.approx(final_eval, rel=1e-6)
