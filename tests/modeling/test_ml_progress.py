"""ProgressCallback: throttling and cooperative stop, driven directly (no training)."""

import math
from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from jobs.metrics import finite_metrics
from modeling.ml.progress import ProgressCallback, TrainingCancelled


class RecordingReporter:
    def __init__(self, stop_after_reports: int | None = None):
        self.reports = []
        self.stop_after_reports = stop_after_reports

    def report(self, *, step, total_steps, metrics, log_line=None):
        self.reports.append(
            {"step": step, "total": total_steps, "metrics": metrics, "line": log_line}
        )

    def should_stop(self):
        return self.stop_after_reports is not None and len(self.reports) >= self.stop_after_reports


def run_steps(callback, steps, *, start=0):
    """What a Trainer does: on_train_begin, then one on_log per step (logging_steps=1)."""
    state = SimpleNamespace(global_step=start, max_steps=steps)
    control = TrainerControl()
    callback.on_train_begin(None, state, control)
    for step in range(start + 1, steps + 1):
        state.global_step = step
        callback.on_log(None, state, control, logs={"loss": 1.0 / step, "learning_rate": 1e-4})
        if control.should_training_stop:
            break
    # The end-of-training summary comes as one more log at the last step.
    callback.on_log(None, state, control, logs={"train_loss": 0.5, "train_runtime": 1.0})
    return control


def test_fast_steps_report_only_the_first_and_the_last():
    reporter = RecordingReporter()
    run_steps(ProgressCallback(reporter, min_interval_s=3600), 10)
    assert [r["step"] for r in reporter.reports] == [1, 10]
    assert reporter.reports[-1]["metrics"]["loss"] == pytest.approx(0.1)
    assert reporter.reports[-1]["line"].startswith("step 10/10 loss=0.1")


def test_slow_steps_report_every_step():
    reporter = RecordingReporter()
    run_steps(ProgressCallback(reporter, min_interval_s=0), 4)
    assert [r["step"] for r in reporter.reports] == [1, 2, 3, 4]


def test_after_a_resume_the_first_reported_step_is_the_first_new_one():
    reporter = RecordingReporter()
    run_steps(ProgressCallback(reporter, min_interval_s=3600), 10, start=6)
    assert [r["step"] for r in reporter.reports] == [7, 10]


def test_should_stop_ends_training_cooperatively_after_that_step():
    reporter = RecordingReporter(stop_after_reports=2)
    callback = ProgressCallback(reporter, min_interval_s=0)
    control = run_steps(callback, 10)
    assert control.should_training_stop and callback.stopped
    assert [r["step"] for r in reporter.reports] == [1, 2]


def test_hard_stop_raises_for_loops_that_ignore_the_control_flag():
    callback = ProgressCallback(RecordingReporter(stop_after_reports=1), hard_stop=True)
    with pytest.raises(TrainingCancelled):
        run_steps(callback, 10)
    assert callback.stopped


def test_metrics_keep_finite_numbers_only():
    logs = {"loss": 1, "nan": math.nan, "inf": math.inf, "flag": True, "name": "x", "lr": 1e-5}
    assert finite_metrics(logs) == {"loss": 1.0, "lr": 1e-5}
