"""Running one evaluation on a GPU worker: claim it, evaluate, store the numbers and samples.

    run_eval(run)   # what evals.tasks.run_eval calls; tests call it directly

The claim is a conditional UPDATE (queued → running), so a message delivered twice evaluates
once. While it evaluates, a heartbeat thread keeps `heartbeat_at` fresh; pages that list runs
fail the ones whose worker went silent (eval_runs_mark_stale), and a worker that restarts fails
the ones it left running (eval_runs_fail_orphaned). Every write after the claim is guarded by
status=running: once someone else has decided a run's fate, the worker leaves the row alone.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from evals.models import (
    EvalResult,
    EvalRun,
    EvalSample,
    RunStatus,
)
from modeling.services.heartbeat import RowHeartbeat
from modeling.services.runner import failure_reason

from .suites import (
    EvalInputError,
    Outcome,
    evaluate,
)

logger = logging.getLogger(__name__)

MAX_SAMPLE_CHARS = 20_000


def default_host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(RowHeartbeat):
    """Touches the running eval's `heartbeat_at`, so a run whose worker died is failed by
    eval_runs_mark_stale instead of staying `running`."""

    def __init__(self, run_id: int, interval: float):
        rows = EvalRun.objects.filter(pk=run_id, status=RunStatus.RUNNING)
        super().__init__(rows, interval=interval, name=f"heartbeat-eval-{run_id}")


def _finish(run_id: int, status: str, *, error: str = "", summary=None) -> EvalRun:
    """Write the outcome unless someone else already decided it (the stale check, say)."""
    fields: dict[str, Any] = {"status": status, "finished_at": timezone.now(), "error": error}
    if summary is not None:
        fields["summary"] = summary
    EvalRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(**fields)
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
    # PostgreSQL refuses NUL in text; a runaway generation should cost its tail, not the run.
    return str(text).replace("\x00", "")[:MAX_SAMPLE_CHARS]


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EvalInputError) else failure_reason(exc)


def run_eval(run: EvalRun, *, host: str = "") -> EvalRun:
    """Claim and evaluate `run`; returns the row as it ended. Never raises for an evaluation
    failure: the reason is written to the row."""
    now = timezone.now()
    claimed = EvalRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING,
        host=(host or default_host())[:255],
        started_at=now,
        heartbeat_at=now,
    )
    if not claimed:
        logger.info("Eval run %s was not queued any more (a repeated message?); skipping", run.pk)
        return EvalRun.objects.get(pk=run.pk)
    run = EvalRun.objects.select_related("checkpoint", "reference", "judge", "snapshot").get(
        pk=run.pk
    )
    with Heartbeat(run.pk, settings.VEREDICTO_JOB_HEARTBEAT_SECONDS):
        try:
            outcome = evaluate(run)
        except SoftTimeLimitExceeded:
            return _finish(run.pk, RunStatus.FAILED, error="time limit exceeded")
        except Exception as exc:
            logger.warning("Eval run %s failed", run.pk, exc_info=True)
            return _finish(run.pk, RunStatus.FAILED, error=_reason(exc))
        except BaseException:
            # Worker shutdown or interpreter exit: say so rather than wait for the stale check.
            _finish(run.pk, RunStatus.FAILED, error="the worker shut down during the evaluation")
            raise
    try:
        return _succeed(run.pk, outcome)
    except Exception as exc:
        logger.exception("Storing the results of eval run %s failed", run.pk)
        return _finish(run.pk, RunStatus.FAILED, error=failure_reason(exc))


# --- dead workers ------------------------------------------------------------------------------


def _fail_running(runs, *, reason: str, now: datetime) -> int:
    """Fail each running run, guarded by the heartbeat we read: a run that beat in between (or
    finished) is left alone."""
    failed = 0
    for pk, beat in runs.filter(status=RunStatus.RUNNING).values_list("pk", "heartbeat_at"):
        since = beat.isoformat(timespec="seconds") if beat else "the start"
        failed += EvalRun.objects.filter(pk=pk, status=RunStatus.RUNNING, heartbeat_at=beat).update(
            status=RunStatus.FAILED, finished_at=now, error=reason.format(since=since)
        )
    return failed


def eval_runs_mark_stale(*, now: datetime | None = None) -> int:
    """Running evaluations silent for longer than VEREDICTO_JOB_STALE_SECONDS (the GPU workers'
    shared heartbeat window) are failed. One indexed query when nothing is stale."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.VEREDICTO_JOB_STALE_SECONDS)
    stale = EvalRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff)
    return _fail_running(
        stale, reason="worker stopped responding (no heartbeat since {since})", now=now
    )


def eval_runs_fail_orphaned(*, host: str, started_before: datetime) -> int:
    """A worker that (re)starts is running nothing yet: runs it left `running` died with it."""
    orphans = EvalRun.objects.filter(host=host, started_at__lt=started_before)
    return _fail_running(
        orphans,
        reason=f"worker {host} restarted during the evaluation (last heartbeat {{since}})",
        now=timezone.now(),
    )
