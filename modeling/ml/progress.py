"""Progress reporting and cooperative cancellation for training runs.

The job layer passes a ProgressReporter (it writes to the job row); ProgressCallback adapts it to
transformers' callback API. Reports are throttled: a fast job would otherwise write to the
database on every step.
"""

import math
import time
from typing import Protocol

from transformers import TrainerCallback

from jobs.metrics import finite_metrics


class ProgressReporter(Protocol):
    def report(
        self,
        *,
        step: int,
        total_steps: int,
        metrics: dict[str, float],
        log_line: str | None = None,
    ) -> None: ...

    def should_stop(self) -> bool: ...


class TrainingCancelled(Exception):
    """Raised from the callback for trainers whose loop ignores control.should_training_stop."""


class ProgressCallback(TrainerCallback):
    """Reports the first step, the last step, and at most one step per `min_interval_s` between.

    It reports from on_log, which every trainer we use calls once per step (train.py sets
    logging_steps=1), after that step's metrics exist. should_stop() is asked right after each
    report, so it is throttled too; when it says yes, training stops at the end of that step.
    `hard_stop` raises TrainingCancelled instead, for loops that ignore the control flag.
    """

    def __init__(
        self, reporter: "ProgressReporter", *, min_interval_s: float = 2.0, hard_stop=False
    ):
        self.reporter = reporter
        self.min_interval_s = min_interval_s
        self.hard_stop = hard_stop
        self.metrics: dict[str, float] = {}  # latest value of every numeric metric logged
        self.stopped = False
        self._first_step = 1
        self._last_report_at = -math.inf
        self._last_reported_step = -1

    def on_train_begin(self, args, state, control, **kwargs):
        # After a resume, the first step of this run is the one after the checkpoint.
        self._first_step = state.global_step + 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.metrics.update(finite_metrics(logs or {}))
        step, total = state.global_step, state.max_steps
        if step == self._last_reported_step:
            return  # the end-of-training summary log repeats the last step
        now = time.monotonic()
        due = now - self._last_report_at >= self.min_interval_s
        if not (step == self._first_step or step >= total or due):
            return
        self._last_report_at, self._last_reported_step = now, step
        self.reporter.report(
            step=step,
            total_steps=total,
            metrics=dict(self.metrics),
            log_line=log_line(step, total, self.metrics),
        )
        if step < total and self.reporter.should_stop():
            self.stopped = True
            control.should_training_stop = True
            if self.hard_stop:
                raise TrainingCancelled(f"cancelled at step {step}")


def log_line(step: int, total: int, metrics: dict[str, float]) -> str:
    shown = [
        f"{key}={metrics[key]:.4g}"
        for key in ("loss", "accuracy", "reward", "objective/rlhf_reward", "learning_rate")
        if key in metrics
    ]
    return " ".join([f"step {step}/{total}", *shown])
