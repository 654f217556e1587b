"""Running one training job on a worker: claim it, train with live progress, register the result.

    run_training_job(job)   # what modeling.tasks.train_job calls; tests call it directly

The claim is a conditional UPDATE (queued → running), so a message delivered twice trains once.
While training, `JobReporter` (the trainer's ProgressReporter) writes step, metrics, a thinned
metric history and the log tail to the row at most every VEREDICTO_JOB_PROGRESS_SECONDS, and
answers `should_stop()` from the row's `cancel_requested`; the lifecycle's heartbeat
(jobs.services) touches `heartbeat_at` on its own so that one long step never looks like a dead
worker. Every write after the claim is guarded by `status=running`: once anyone else has decided
the job's fate (the scheduled sweep, say), the worker stops and leaves the row alone. A new
checkpoint is announced with modeling.signals.checkpoint_registered.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.metrics import finite_metrics
from jobs.services import Heartbeat, failure_reason, work_claim, work_finish
from modeling.models import (
    Checkpoint,
    CheckpointKind,
    CheckpointSource,
    JobKind,
    JobStatus,
    TrainingJob,
)

from .checkpoints import (
    TRAINER_CHECKPOINT_PREFIX,
    checkpoint_announce,
    checkpoint_describe,
    unique_checkpoint_name,
)

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 200
LOG_TAIL_CHARS = 20_000
HISTORY_POINTS = 500  # the chart needs no more; older points are thinned evenly


def models_dir() -> Path:
    return Path(settings.VEREDICTO_MODELS_DIR or Path(settings.MEDIA_ROOT) / "checkpoints")


def job_output_dir(job: TrainingJob) -> Path:
    return models_dir() / f"{job.pk}-{job.attempt}"


class JobReporter:
    """modeling.ml's ProgressReporter, writing to the job row (throttled)."""

    def __init__(self, job: TrainingJob, *, every: float, deadline: float | None):
        self.job_id = job.pk
        self.every = every
        self.deadline = deadline
        self.step = job.step
        self.total_steps = job.total_steps
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._stride = 1
        self._reports = 0
        self.lines: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.lines.extend(job.log_tail.splitlines())  # launch's notes (a loss fallback, say)
        self._last_write = -math.inf  # the first report is written at once
        self._last_poll = -math.inf
        self.cancelled = False  # cancel_requested was seen
        self.lost = False  # the row is no longer ours (failed by the stale check, say)
        self.timed_out = False

    # --- the ProgressReporter protocol ---

    def report(
        self,
        *,
        step: int,
        total_steps: int,
        metrics: dict[str, float],
        log_line: str | None = None,
    ) -> None:
        self.step, self.total_steps = int(step), int(total_steps)
        clean = finite_metrics(metrics or {})
        if clean:
            self.metrics = clean
            self._add_point({"step": self.step, **clean})
        if log_line:
            self.log(log_line)
        done = self.total_steps and self.step >= self.total_steps
        if done or time.monotonic() - self._last_write >= self.every:
            self.flush()

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
        now = time.monotonic()
        if not (self.cancelled or self.lost) and now - self._last_poll >= self.every:
            self._last_poll = now
            row = (
                TrainingJob.objects.filter(pk=self.job_id)
                .values_list("status", "cancel_requested")
                .first()
            )
            if row is None or row[0] != JobStatus.RUNNING:
                self.lost = True
            elif row[1]:
                self.cancelled = True
        return self.cancelled or self.lost or self.timed_out

    # --- helpers ---

    def log(self, line: str) -> None:
        for part in str(line).splitlines() or [""]:
            self.lines.append(part[:2000])

    def _add_point(self, point: dict[str, float]) -> None:
        if self.history and self.history[-1]["step"] == point["step"]:
            # The trainer reports its last step twice (logged, then saved): one point.
            self.history[-1] = {**self.history[-1], **point}
            return
        self._reports += 1
        if (self._reports - 1) % self._stride:
            return
        self.history.append(point)
        if len(self.history) > HISTORY_POINTS:
            self.history = self.history[::2]
            self._stride *= 2

    def log_tail(self) -> str:
        return "\n".join(self.lines)[-LOG_TAIL_CHARS:]

    def progress_fields(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "metrics": self.metrics,
            "metric_history": self.history,
            "log_tail": self.log_tail(),
        }

    def flush(self) -> None:
        self._last_write = time.monotonic()
        written = TrainingJob.objects.filter(pk=self.job_id, status=JobStatus.RUNNING).update(
            heartbeat_at=timezone.now(), **self.progress_fields()
        )
        if not written:
            self.lost = True


def latest_trainer_checkpoint(directory: Path) -> Path | None:
    """The Trainer's newest `checkpoint-<step>` folder in an output directory."""
    if not directory.is_dir():
        return None
    saves = [
        (int(entry.name.removeprefix(TRAINER_CHECKPOINT_PREFIX)), entry)
        for entry in directory.iterdir()
        if entry.is_dir()
        and entry.name.startswith(TRAINER_CHECKPOINT_PREFIX)
        and entry.name.removeprefix(TRAINER_CHECKPOINT_PREFIX).isdigit()
    ]
    return max(saves)[1] if saves else None


def _link_or_copy(source: str, target: str) -> None:
    # Hard links make resuming a multi-gigabyte run instant; the Trainer writes new files rather
    # than editing old ones, so sharing them with the previous attempt is safe.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare_resume(job: TrainingJob, output_dir: Path) -> Path | None:
    """Bring the previous attempt's last trainer checkpoint into this attempt's output dir, where
    `train(..., resume=True)` looks for it."""
    previous = job.previous_attempt
    if previous is None or not previous.output_dir:
        return None
    latest = latest_trainer_checkpoint(Path(previous.output_dir))
    if latest is None:
        return None
    target = output_dir / latest.name
    if not target.exists():
        shutil.copytree(latest, target, copy_function=_link_or_copy)
    return latest


def _register_output(job: TrainingJob, result) -> Checkpoint:
    path = Path(result.output_dir).resolve()
    facts = checkpoint_describe(path=path)
    parent = job.parent
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    return Checkpoint.objects.create(
        name=unique_checkpoint_name(stem=f"{parent.root().name}-{job.kind}-{job.pk}"),
        kind=CheckpointKind.REWARD if job.kind == JobKind.REWARD else CheckpointKind.POLICY,
        source=CheckpointSource.LOCAL,
        storage_path=str(path),
        tokenizer_path="" if has_tokenizer else parent.tokenizer_load_path(),
        is_adapter=facts.is_adapter,
        base_model=parent.root(),
        parent=parent,
        job=job,
        snapshot=job.snapshot,
        parameter_count=facts.parameter_count,
        size_bytes=facts.size_bytes,
        train_tokens=result.train_tokens or facts.train_tokens,
        metrics=finite_metrics(result.metrics or {}),
        created_by=job.launched_by,
    )


def _finish(job_id: int, status: str, reporter: JobReporter, error: str = "") -> TrainingJob:
    """Write the outcome unless someone else already decided it."""
    work_finish(TrainingJob, pk=job_id, status=status, error=error, **reporter.progress_fields())
    return TrainingJob.objects.get(pk=job_id)


@transaction.atomic
def _succeed(job_id: int, result, reporter: JobReporter) -> TrainingJob:
    # Lock the row so the stale check cannot fail the job while its checkpoint is registered.
    TrainingJob.objects.select_for_update().filter(pk=job_id).values_list("pk").get()
    job = TrainingJob.objects.select_related("parent__base_model", "snapshot").get(pk=job_id)
    if job.status != JobStatus.RUNNING:
        logger.warning("Job %s finished training but is already %s", job_id, job.status)
        return job
    if job.cancel_requested:
        # Cancelled after the last step: the user asked for no checkpoint, so none appears.
        return _finish(job_id, JobStatus.CANCELLED, reporter)
    reporter.step = max(reporter.step, result.steps)
    reporter.metrics = finite_metrics(result.metrics or {}) or reporter.metrics
    checkpoint = _register_output(job, result)
    reporter.log(
        f"Registered checkpoint {checkpoint.name} (#{checkpoint.pk}) at {result.output_dir}"
    )
    transaction.on_commit(lambda: checkpoint_announce(checkpoint=checkpoint, job=job))
    return _finish(job_id, JobStatus.SUCCEEDED, reporter)


def training_job_claim(*, job: TrainingJob, worker_host: str = "", backend: str = "") -> bool:
    """queued → running for one worker, with the output directory ready (and, for a re-run, the
    previous attempt's last trainer checkpoint in it). Files only: no torch in the worker."""
    output_dir = job_output_dir(job)
    if not work_claim(
        TrainingJob, pk=job.pk, worker_host=worker_host, backend=backend, output_dir=str(output_dir)
    ):
        return False
    job = TrainingJob.objects.select_related("previous_attempt").get(pk=job.pk)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        resumed = prepare_resume(job, output_dir)
    except OSError as exc:
        work_finish(TrainingJob, pk=job.pk, status=JobStatus.FAILED, error=failure_reason(exc))
        return False
    if resumed:
        TrainingJob.objects.filter(pk=job.pk).update(resumed_from=str(resumed))
    return True


def run_training_job(*, job: TrainingJob, worker_host: str = "") -> TrainingJob:
    """Claim and train `job` in this process (the demo loop, tests); returns the row as it
    ended. Never raises for a training failure: the reason is written to the row. Workers
    launch the same work in its own process instead (modeling.tasks.train_job)."""
    if not training_job_claim(job=job, worker_host=worker_host):
        return TrainingJob.objects.get(pk=job.pk)
    with Heartbeat(TrainingJob, job.pk):
        return training_job_execute(TrainingJob.objects.get(pk=job.pk))


def training_job_execute(job: TrainingJob) -> TrainingJob:
    """Train a claimed job: what jobs/entrypoint.py runs in each launched process. Only rank 0
    (the only rank of a one-process job) reports progress and registers the checkpoint; the
    others train their share and return."""
    from modeling.ml import parse_job_config, train
    from modeling.ml.distributed import per_process_batch

    job = TrainingJob.objects.select_related("parent", "snapshot", "reward_model").get(pk=job.pk)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    config = parse_job_config(job.kind, job.config)
    if world > 1:
        batch, accumulation = per_process_batch(
            batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            processes=world,
        )
        config = config.model_copy(
            update={"batch_size": batch, "gradient_accumulation_steps": accumulation}
        )
    reporter = JobReporter(
        job,
        every=settings.VEREDICTO_JOB_PROGRESS_SECONDS,
        deadline=time.monotonic() + job.time_limit_seconds,
    )
    try:
        if rank == 0:
            if job.resumed_from:
                reporter.log(f"Resuming from {job.resumed_from}")
            spread = f" over {world} processes" if world > 1 else ""
            reporter.log(
                f"Training {job.kind} from {job.parent.name} on {job.snapshot.name}{spread}"
            )
            reporter.flush()
        result = train(
            job.kind,
            config,
            model_path=job.parent.load_path(),
            dataset_dir=str(job.snapshot.path()),
            output_dir=job.output_dir,
            reward_model_path=job.reward_model.load_path() if job.reward_model else None,
            reporter=reporter if rank == 0 else None,
            resume=bool(job.resumed_from),
        )
    except SoftTimeLimitExceeded:
        reason = f"time limit of {job.time_limit_seconds} s exceeded"
        return _finish(job.pk, JobStatus.FAILED, reporter, reason)
    except Exception as exc:
        logger.exception("Training job %s failed", job.pk)
        if rank != 0:
            raise  # the launcher sees this rank fail; rank 0 writes the row
        reporter.log(traceback.format_exc())
        return _finish(job.pk, JobStatus.FAILED, reporter, failure_reason(exc))
    except BaseException:
        # Shutdown or interpreter exit: say so rather than wait for the sweep.
        if rank == 0:
            _finish(job.pk, JobStatus.FAILED, reporter, "the training process shut down")
        raise
    if rank != 0:
        return TrainingJob.objects.get(pk=job.pk)
    if result.stopped:
        if reporter.cancelled or reporter.lost:
            # _finish leaves a row that someone else already ended as it is.
            return _finish(job.pk, JobStatus.CANCELLED, reporter)
        reason = f"time limit of {job.time_limit_seconds} s exceeded"
        return _finish(job.pk, JobStatus.FAILED, reporter, reason)
    try:
        return _succeed(job.pk, result, reporter)
    except Exception as exc:
        logger.exception("Registering the output of job %s failed", job.pk)
        return _finish(job.pk, JobStatus.FAILED, reporter, failure_reason(exc))
