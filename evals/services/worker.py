"""Running one evaluation on a GPU worker: claim it, evaluate, store the numbers and samples.

    run_eval(run)   # what evals.tasks.run_eval calls; tests call it directly

Runs follow the shared lifecycle (jobs.services): the claim is a conditional UPDATE (queued →
running), so a message delivered twice evaluates once; a heartbeat keeps `heartbeat_at` fresh,
and the scheduled sweep fails a run whose worker went silent or restarted. Every write after
the claim is guarded by status=running: once someone else has decided a run's fate, the worker
leaves the row alone.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.utils import timezone

from core.text import storable_text
from evals.ml.stats import mean_stderr, wilson_interval
from evals.models import (
    EvalResult,
    EvalRun,
    EvalSample,
    RunStatus,
    Suite,
)
from jobs.services import Heartbeat, failure_reason, work_claim, work_finish
from modeling.models import Checkpoint

from .suites import (
    EvalInputError,
    Metric,
    Outcome,
    evaluate,
    mean_metric,
)

logger = logging.getLogger(__name__)

MAX_SAMPLE_CHARS = 20_000


def _finish(run_id: int, status: str, *, error: str = "", summary=None) -> EvalRun:
    """Write the outcome unless someone else already decided it (the sweep, say)."""
    fields: dict[str, Any] = {} if summary is None else {"summary": summary}
    work_finish(EvalRun, pk=run_id, status=status, error=error, **fields)
    return EvalRun.objects.get(pk=run_id)


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@transaction.atomic
def _succeed(run_id: int, outcome: Outcome) -> EvalRun:
    run = EvalRun.objects.select_for_update().get(pk=run_id)
    if run.status != RunStatus.RUNNING:
        logger.warning("Eval run %s finished but is already %s", run_id, run.status)
        return run
    summary = dict(outcome.summary)
    results = []
    for metric in outcome.metrics:
        if _finite(metric.value) is None:
            # A diverged model can give an infinite perplexity; say so rather than store it.
            summary.setdefault("not_finite", []).append(metric.name)
            continue
        results.append(
            EvalResult(
                run=run,
                metric=metric.name,
                value=metric.value,
                stderr=_finite(metric.stderr),
                ci_low=_finite(metric.low),
                ci_high=_finite(metric.high),
                n=metric.n,
            )
        )
    EvalResult.objects.bulk_create(results)
    EvalSample.objects.bulk_create(
        EvalSample(
            run=run,
            position=sample["position"],
            prompt=_storable(sample["prompt"]),
            output=_storable(sample.get("output", "")),
            target=_storable(sample.get("target", "")),
            correct=sample.get("correct"),
            reference_output=_storable(sample.get("reference_output", "")),
        )
        for sample in outcome.samples
    )
    return _finish(run_id, RunStatus.SUCCEEDED, summary=summary)


def _storable(text: str) -> str:
    return storable_text(text, limit=MAX_SAMPLE_CHARS)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EvalInputError) else failure_reason(exc)


def run_eval(*, run: EvalRun, worker_host: str = "") -> EvalRun:
    """Claim and evaluate `run` in this process (the demo loop, tests); returns the row as it
    ended. Workers launch the same work in its own process (evals.tasks.run_eval)."""
    if not work_claim(EvalRun, pk=run.pk, worker_host=worker_host):
        return EvalRun.objects.get(pk=run.pk)
    with Heartbeat(EvalRun, run.pk):
        return eval_run_execute(run)


def eval_run_execute(run: EvalRun) -> EvalRun:
    """Evaluate a claimed run and store its numbers: what jobs/entrypoint.py runs. Never raises
    for an evaluation failure: the reason is written to the row."""
    run = EvalRun.objects.select_related("checkpoint", "reference", "judge", "snapshot").get(
        pk=run.pk
    )
    if int(os.environ.get("RANK", "0")) != 0:
        # A data-parallel lm-eval run: this rank scores its share; rank 0 stores the results.
        evaluate(run=run)
        return run
    try:
        outcome = evaluate(run=run)
    except SoftTimeLimitExceeded:
        return _finish(run.pk, RunStatus.FAILED, error="time limit exceeded")
    except Exception as exc:
        logger.warning("Eval run %s failed", run.pk, exc_info=True)
        return _finish(run.pk, RunStatus.FAILED, error=_reason(exc))
    except BaseException:
        # Shutdown or interpreter exit: say so rather than wait for the sweep.
        _finish(run.pk, RunStatus.FAILED, error="the evaluation process shut down")
        raise
    try:
        return _succeed(run.pk, outcome)
    except Exception as exc:
        logger.exception("Storing the results of eval run %s failed", run.pk)
        return _finish(run.pk, RunStatus.FAILED, error=failure_reason(exc))


def eval_run_record(
    *,
    checkpoint: Checkpoint,
    suite: str,
    task: str,
    outcome: Outcome,
    params: dict[str, Any] | None = None,
    host: str = "",
) -> EvalRun:
    """A measurement made elsewhere (the demo loop measures its policies in its own process),
    kept as a succeeded run like any other: on the dashboard, in Compare, in the history."""
    if suite not in Suite.values:
        raise ValueError(f"unknown suite {suite!r}")
    now = timezone.now()
    run = EvalRun.objects.create(
        checkpoint=checkpoint,
        suite=suite,
        task=task,
        params=params or {},
        status=RunStatus.RUNNING,
        worker_host=host,
        started_at=now,
        heartbeat_at=now,
        enqueued_at=now,  # nothing to send: the outbox sweep must leave it alone
    )
    return _succeed(run.pk, outcome)


def mean_of(name: str, values: list[float]) -> Metric:
    """A mean of per-prompt shares, ± 1.96 standard errors (clipped to [0, 1])."""
    return mean_metric(name, sum(values) / len(values), mean_stderr(values), len(values))


def proportion_metric(name: str, outcomes: list[bool]) -> Metric:
    """The share of True with its 95% Wilson interval."""
    n = len(outcomes)
    value = sum(outcomes) / n if n else 0.0
    low, high = wilson_interval(sum(outcomes), n) if n else (None, None)
    return Metric(name, value, low=low, high=high, n=n)
