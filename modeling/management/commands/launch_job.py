"""Launch a training job from the shell, through the same service as the Training page.

    python manage.py launch_job --kind dpo --parent tiny-sft-3 --snapshot 7 --config '{"epochs": 2}'

The job is queued for a `gpu` worker; `--wait` then follows it until it ends and exits non-zero
unless it succeeded (for scripts and CI pipelines). `--run-here` trains it in this process
instead (no worker needed), which is handy on a laptop.
"""

import json
import time

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from feedback.models import DatasetSnapshot
from modeling import selectors, services
from modeling.models import Checkpoint, JobKind, TrainingJob


class Command(BaseCommand):
    help = "Launch a training job (sft, reward, dpo, ppo, rloo, grpo) on a dataset snapshot."

    def add_arguments(self, parser):
        parser.add_argument("--kind", required=True, choices=JobKind.values)
        parser.add_argument("--parent", required=True, help="Checkpoint id or name to start from.")
        parser.add_argument("--snapshot", required=True, type=int, help="Dataset snapshot id.")
        parser.add_argument("--reward-model", help="Reward checkpoint id or name (ppo/rloo/grpo).")
        parser.add_argument("--config", default="{}", help="Job config as a JSON object.")
        parser.add_argument("--time-limit", type=int, help="Seconds (default from settings).")
        parser.add_argument("--user", help="Username recorded as the launcher (must be an admin).")
        parser.add_argument(
            "--run-here", action="store_true", help="Train in this process, not on a worker."
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Follow the queued job until it ends; exit non-zero unless it succeeded.",
        )

    def handle(self, *args, **options) -> None:
        try:
            config = json.loads(options["config"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not JSON: {exc}") from exc
        try:
            job = services.job_launch(
                kind=options["kind"],
                parent=_checkpoint(options["parent"], "--parent"),
                snapshot=_snapshot(options["snapshot"]),
                reward_model=_checkpoint(options["reward_model"], "--reward-model"),
                config=config,
                time_limit_seconds=options["time_limit"],
                launched_by=_user(options["user"]),
                enqueue=not options["run_here"],
            )
        except (ValidationError, PermissionDenied) as exc:
            messages = exc.messages if isinstance(exc, ValidationError) else [str(exc)]
            raise CommandError("\n".join(messages)) from exc
        if not options["run_here"]:
            self.stdout.write(f"Queued job #{job.pk} ({job.kind}) for a gpu worker.")
            if not options["wait"]:
                return
            job = self._follow(job)
        else:
            self.stdout.write(f"Running job #{job.pk} ({job.kind}) here…")
            job = services.run_training_job(job=job)
        if job.status != "succeeded":
            raise CommandError(f"Job #{job.pk} {job.status}: {job.error}")
        self.stdout.write(
            f"Job #{job.pk} succeeded: checkpoint {job.result.name} (#{job.result.pk})"
        )

    def _follow(self, job: TrainingJob, every: float = 2.0) -> TrainingJob:
        """Print the job's progress as it changes until it ends."""
        shown = None
        while True:
            job.refresh_from_db()
            state = (job.status, job.step, job.total_steps)
            if state != shown:
                self.stdout.write(f"#{job.pk} {job.status} step {job.step}/{job.total_steps}")
                shown = state
            if job.is_finished:
                return job
            time.sleep(every)


def _checkpoint(reference: str | None, option: str) -> Checkpoint | None:
    if not reference:
        return None
    try:
        return selectors.checkpoint_find(reference=reference)
    except Checkpoint.DoesNotExist:
        raise CommandError(f"{option}: no checkpoint with id or name {reference!r}.") from None


def _snapshot(snapshot_id: int) -> DatasetSnapshot:
    snapshot = DatasetSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        raise CommandError(f"--snapshot: no dataset snapshot #{snapshot_id}.")
    return snapshot


def _user(username: str | None):
    if not username:
        return None  # the operator at the shell
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"--user: no user {username!r}.")
    return user
