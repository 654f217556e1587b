"""Evaluation runs and their results.

An `EvalRun` is one suite on one checkpoint, run once: what was asked (suite, task, params, the
models and data it compares against), where and when it ran, and how it ended. Its numbers are
`EvalResult` rows (one per metric, with standard error and a 95% interval where the metric has
one) and, for generative suites, `EvalSample` rows: what the model actually said.

Results are never overwritten: evaluating again makes a new run, and the dashboard reads the
latest succeeded run per (checkpoint, suite, task, metric) while the older ones stay as history.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

from feedback.models import DatasetSnapshot, Item, Project
from jobs.models import ACTIVE_STATUSES, BackgroundWork, Status
from modeling.models import Checkpoint, PlaygroundTurn, TrainingJob


class Suite(models.TextChoices):
    PERPLEXITY = "perplexity", "Perplexity (held-out text)"
    MULTIPLE_CHOICE = "multiple_choice", "Multiple choice"
    GENERATIVE = "generative", "Generative"
    REWARD_ACCURACY = "reward_accuracy", "Reward-model accuracy"
    WIN_RATE = "win_rate", "Win rate vs a reference (reward-model judged)"
    LM_EVAL = "lm_eval", "lm-evaluation-harness task"


# Suites that need a causal LM (a policy) and those that need a reward model.
POLICY_SUITES = frozenset(
    {Suite.PERPLEXITY, Suite.MULTIPLE_CHOICE, Suite.GENERATIVE, Suite.WIN_RATE, Suite.LM_EVAL}
)
REWARD_SUITES = frozenset({Suite.REWARD_ACCURACY})


# Evaluation runs follow the lifecycle every kind of background work shares (jobs.models).
RunStatus = Status
ACTIVE_RUN_STATUSES = ACTIVE_STATUSES


class EvalRun(BackgroundWork):
    # PROTECT, like the lineage: a checkpoint's evaluation history is not deleted in passing.
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="eval_runs")
    suite = models.CharField(max_length=20, choices=Suite.choices)
    task = models.CharField(
        max_length=200,
        help_text="Task name: a shipped task file, heldout_prose, heldout_preferences, "
        "snapshot-test or an lm-eval task.",
    )
    params = models.JSONField(default=dict, blank=True, help_text="limit, batch_size, …")
    # What the run compares against, by suite: the win rate's reference policy and its judge,
    # reward accuracy's preference snapshot (its test split).
    reference = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    judge = models.ForeignKey(
        Checkpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    snapshot = models.ForeignKey(
        DatasetSnapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="eval_runs"
    )

    summary = models.JSONField(
        default=dict, blank=True, help_text="Counts behind the metrics (tokens, wins, …)."
    )

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    triggered_by_job = models.ForeignKey(
        TrainingJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="eval_runs"
    )
    created_at = models.DateTimeField(default=timezone.now)

    # Generous for the shipped suites on a big model; the sweep fails a run past it.
    time_limit_seconds = 6 * 3600
    entrypoint = "evals.services.worker.eval_run_execute"
    task_name = "evals.tasks.run_eval"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["checkpoint", "suite", "task", "status"]),
            models.Index(fields=["status", "heartbeat_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.get_suite_display()} {self.task} on {self.checkpoint} (#{self.pk})"

    def launch_processes(self) -> int:
        return int((self.params or {}).get("processes") or 1)

    def launch_accelerate_config(self) -> Path | None:
        if self.launch_processes() == 1:
            return None
        from modeling.ml.distributed import ACCELERATE_CONFIGS  # plain paths, no torch

        return ACCELERATE_CONFIGS / "ddp.yaml"

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())


class EvalResult(models.Model):
    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="results")
    metric = models.CharField(max_length=100)
    value = models.FloatField()
    stderr = models.FloatField(null=True, blank=True)
    ci_low = models.FloatField(null=True, blank=True, help_text="95% interval, lower end")
    ci_high = models.FloatField(null=True, blank=True, help_text="95% interval, upper end")
    n = models.PositiveIntegerField(null=True, blank=True, help_text="Items it rests on.")

    class Meta:
        ordering = ["metric"]
        constraints = [
            models.UniqueConstraint(fields=["run", "metric"], name="evalresult_once_per_run")
        ]

    def __str__(self) -> str:
        return f"{self.metric} = {self.value:.4g} (run #{self.run_id})"


class EvalSample(models.Model):
    """One prompt of a generative suite and the model's answer (and, for a win rate, the
    reference model's answer to the same prompt)."""

    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="samples")
    position = models.PositiveIntegerField(help_text="Index of the item in the task.")
    prompt = models.TextField()
    output = models.TextField(blank=True)
    target = models.TextField(blank=True)
    correct = models.BooleanField(null=True, blank=True)
    reference_output = models.TextField(blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "position"], name="evalsample_once_per_run")
        ]

    def __str__(self) -> str:
        return f"Sample {self.position} of run #{self.run_id}"


class ProjectChart(models.Model):
    """The metric the dashboard charts first when it is filtered to a project (the demo project's
    is its task score); without one, the first column."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="chart")
    metric = models.CharField(max_length=400, help_text="A dashboard column: suite/task/metric.")

    def __str__(self) -> str:
        return f"{self.project}: {self.metric}"


class LiveArena(models.Model):
    """A project's live battles: an annotator types a prompt, two of `checkpoints` (drawn at
    random, sides shuffled) answer it, the annotator votes, and only then learns who was who.
    Admins set it up on the project's leaderboard page."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="live_arena")
    is_open = models.BooleanField(default=True, help_text="Closed: no new battles start.")
    checkpoints = models.ManyToManyField(
        Checkpoint, blank=True, related_name="live_arenas", help_text="Who may be drawn."
    )
    # The prompt filter a project may require before anything is generated: a prompt holding
    # one of these words or phrases (whole words, any case) is refused with the term it held.
    blocked_terms = models.JSONField(default=list, blank=True)
    max_prompt_chars = models.PositiveIntegerField(default=2000)
    max_new_tokens = models.PositiveSmallIntegerField(default=128)
    temperature = models.FloatField(default=0.7)

    def __str__(self) -> str:
        return f"Live battles of {self.project}"


class Battle(models.Model):
    """One live battle. Its replies are playground turns (modeling.PlaygroundTurn), sampled and
    streamed by GPU workers; the vote makes it an ordinary pairwise item of the project (reply
    A at position 0), with the voter's judgement, so the leaderboard, exports and snapshots
    count it like any other."""

    arena = models.ForeignKey(LiveArena, on_delete=models.CASCADE, related_name="battles")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="battles"
    )
    prompt = models.TextField()
    reply_a = models.OneToOneField(PlaygroundTurn, on_delete=models.CASCADE, related_name="+")
    reply_b = models.OneToOneField(PlaygroundTurn, on_delete=models.CASCADE, related_name="+")
    item = models.OneToOneField(
        Item, null=True, blank=True, on_delete=models.SET_NULL, related_name="battle"
    )
    created_at = models.DateTimeField(default=timezone.now)
    voted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["annotator", "created_at"])]

    def __str__(self) -> str:
        return f"Battle #{self.pk} in {self.arena.project}"

    @property
    def replies(self) -> tuple[PlaygroundTurn, PlaygroundTurn]:
        return self.reply_a, self.reply_b

    @property
    def is_answered(self) -> bool:
        """Both replies are written: the vote may be cast."""
        return all(reply.status == Status.SUCCEEDED for reply in self.replies)

    @property
    def has_failed(self) -> bool:
        return any(reply.is_finished and reply.status != Status.SUCCEEDED for reply in self.replies)

    @property
    def is_voted(self) -> bool:
        return self.voted_at is not None
