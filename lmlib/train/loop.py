"""The training loop: steps, logs, hooks and checkpoints, over the pieces a Run holds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import jax

from lmlib.errors import TrainingDiverged
from lmlib.hooks import Hook, check_hooks, make_hooks
from lmlib.train import checkpoint as ckpt
from lmlib.train import params
from lmlib.train.checkpoint import Checkpointer
from lmlib.train.metrics import MetricsLogger
from lmlib.train.preemption import Preemption
from lmlib.train.run import Run
from lmlib.train.state import TrainState, state_bytes


class Trainer:
    """Trains a Run to trainer.num_train_steps, calling its hooks when they are due.

    `hooks` makes them from the run (lmlib.hooks.make_hooks: those the config turns on), once
    the run is known to need training and its train split opens: each checks its own inputs
    then, still before anything compiles."""

    def __init__(self, run: Run, hooks: Callable[[Run], list[Hook]] = make_hooks):
        self.run, self.make_hooks = run, hooks

    def train(self) -> TrainState | None:
        """Trains to trainer.num_train_steps; None when the workdir's run is already there."""
        run, trainer = self.run, self.run.config.trainer
        total = trainer.num_train_steps
        # Everything that can be wrong is found before compiling: the workdir's run, the
        # checkpoint to load, the inputs (each hook checks its own as it is made), where the
        # checkpoints go.
        resume = params.resume_meta(run)
        if resume is not None and resume["step"] >= total:
            print(f"{run.workdir} is already trained to step {resume['step']} "
                  f"(trainer.num_train_steps={total}): nothing to do; raise "
                  "trainer.num_train_steps to train on", flush=True)
            return None
        if trainer.checkpoint.load_from and resume is None:
            params.check_params(run, trainer.checkpoint.load_from)
        check_hooks(run)  # task files and the like, before the data is prepared
        batches = run.train_iterator()
        hooks = self.make_hooks(run)
        if run.workdir:
            ckpt.check_writable(run.checkpoint_dir, state_bytes(run.layout))
        run.record_identity()
        start = time.monotonic()
        train_step = run.compile()
        print(f"compiled the train step in {time.monotonic() - start:.1f}s", flush=True)
        checkpointer = Checkpointer(run.checkpoint_dir, trainer.checkpoint) if run.workdir else None
        state = params.initial_state(run, resume, checkpointer, batches)
        first_step = int(state.step)
        saved_config = ckpt.config_json(run.config)
        model_type = type(run.config.model).__name__
        logger = MetricsLogger(run.workdir, total, resume_step=first_step)
        last_log_time, last_log_step = time.monotonic(), first_step
        try:
            with Preemption() as preemption:
                for step in range(first_step + 1, total + 1):
                    state, metrics = train_step(state, run.global_batch(next(batches)))
                    due = lambda every: step % every == 0 or step == total  # noqa: E731
                    logged = {}
                    if due(trainer.log_every) or step == 1:  # step 1 shows the starting loss
                        logged.update({f"train/{k}": float(v) for k, v in metrics.items()})
                        if not math.isfinite(logged["train/loss"]):
                            raise TrainingDiverged(
                                f"step {step}: the loss is {logged['train/loss']}; stopping "
                                "(lower optimizer.learning_rate?)")
                        now = time.monotonic()
                        seconds_per_step = (now - last_log_time) / (step - last_log_step)
                        last_log_time, last_log_step = now, step
                        logged.update(self.speed(seconds_per_step, total - step))
                    due_hooks = [hook for hook in hooks if due(hook.every_steps)]
                    # Read once: a SIGTERM landing later in this step must not skip the save.
                    preempted = preemption.reached(step)
                    save_now = step == total or preempted  # and confirm it before going on
                    save = checkpointer and (save_now or checkpointer.should_save(step))
                    if due_hooks or save:  # their time is not step time
                        jax.block_until_ready(state)
                        pause_start = time.monotonic()
                        for hook in due_hooks:
                            logged.update(hook(step, state, logger) or {})
                        if save:
                            (checkpointer.save_now if save_now else checkpointer.save)(
                                step, state, batches.get_state(), saved_config, model_type)
                        last_log_time += time.monotonic() - pause_start
                    # A failed save is found here, at the latest the step after it failed (with
                    # several processes at steps that log, where they agree on it together).
                    logs = due(trainer.log_every) or step == 1 or bool(due_hooks)
                    if checkpointer and (jax.process_count() == 1 or logs):
                        checkpointer.check()
                    if logged:
                        logger.write(step, logged)
                    if preempted:
                        saved = "saved a checkpoint" if checkpointer else "no workdir, nothing saved"
                        print(f"preempted: {saved} at step {step}; exiting", flush=True)
                        break
        finally:
            logger.close()
            if checkpointer:
                checkpointer.close()
        return state

    def speed(self, seconds_per_step: float, steps_left: int) -> dict[str, float]:
        """tokens/s, MFU (of every device's peak) and the time left, for the log line."""
        run = self.run
        return {"perf/tokens_per_sec": run.tokens_per_step / seconds_per_step,
                "perf/mfu": run.flops_per_step / seconds_per_step / run.peak_flops,
                "perf/eta_sec": seconds_per_step * steps_left}
