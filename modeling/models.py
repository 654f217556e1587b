"""The model registry and training jobs.

A `Checkpoint` is anything transformers can load: a base model registered from a directory (or a
hub id on hosts with hub access), or the output of a `TrainingJob`. A base model is simply a
checkpoint without a parent or a job. Every trained checkpoint names its parent, the job and the
dataset snapshot that made it, so its lineage reads back to the human labels behind it.

A `TrainingJob` row is the whole life of one attempt: validated config, progress written by the
worker while it trains, a heartbeat, the outcome. A re-run is a new row pointing at the attempt it
repeats.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

from feedback.models import DatasetSnapshot, Project, SnapshotKind
from jobs.models import HARD_LIMIT_GRACE_SECONDS, BackgroundWork, Status


class CheckpointKind(models.TextChoices):
    POLICY = "policy", "Policy (causal LM)"
    REWARD = "reward", "Reward model"
    VALUE = "value", "Value model"


class CheckpointSource(models.TextChoices):
    LOCAL = "local", "Local directory"
    HUB = "hub", "Hugging Face Hub id"


class JobKind(models.TextChoices):
    SFT = "sft", "SFT"
    REWARD = "reward", "Reward model"
    DPO = "dpo", "DPO"
    PPO = "ppo", "PPO"
    RLOO = "rloo", "RLOO"
    GRPO = "grpo", "GRPO"


# Which snapshot each kind trains on: demonstrations for SFT, preference pairs for the reward
# model and DPO, prompts only for the online methods (they sample and score their own replies).
SNAPSHOT_KIND_FOR_JOB = {
    JobKind.SFT: SnapshotKind.SFT,
    JobKind.REWARD: SnapshotKind.PREFERENCE,
    JobKind.DPO: SnapshotKind.PREFERENCE,
    JobKind.PPO: SnapshotKind.PROMPTS,
    JobKind.RLOO: SnapshotKind.PROMPTS,
    JobKind.GRPO: SnapshotKind.PROMPTS,
}
JOBS_NEEDING_REWARD_MODEL = frozenset({JobKind.PPO, JobKind.RLOO, JobKind.GRPO})


# Training jobs follow the lifecycle every kind of background work shares (jobs.models).
JobStatus = Status


class Checkpoint(models.Model):
    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=12, choices=CheckpointKind.choices)
    source = models.CharField(
        max_length=8, choices=CheckpointSource.choices, default=CheckpointSource.LOCAL
    )
    storage_path = models.CharField(
        max_length=1000,
        help_text="Absolute directory with full weights or a LoRA adapter, or a hub id.",
    )
    tokenizer_path = models.CharField(
        max_length=1000, blank=True, help_text="Empty: the tokenizer lives with the weights."
    )
    is_adapter = models.BooleanField(
        default=False, help_text="A LoRA adapter, loaded on top of its base model."
    )
    base_model = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="derived",
        help_text="The root of the lineage; empty for a base model.",
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    job = models.OneToOneField(
        "TrainingJob",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="checkpoint",
    )
    snapshot = models.ForeignKey(
        DatasetSnapshot,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="checkpoints",
    )
    parameter_count = models.BigIntegerField(null=True, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    train_tokens = models.BigIntegerField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="Final training metrics.")
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        """What leaderboards and generated completions call this model."""
        return self.name

    @property
    def is_base(self) -> bool:
        return self.parent_id is None and self.job_id is None

    @property
    def is_local(self) -> bool:
        return self.source == CheckpointSource.LOCAL

    def load_path(self) -> str:
        """What to hand to `from_pretrained` (or the modeling.ml loaders)."""
        return self.storage_path

    def tokenizer_load_path(self) -> str:
        return self.tokenizer_path or self.storage_path

    def directory(self) -> Path | None:
        return Path(self.storage_path) if self.is_local else None

    def root(self) -> Checkpoint:
        return self.base_model or self


class TrainingJob(BackgroundWork):
    kind = models.CharField(max_length=8, choices=JobKind.choices)
    parent = models.ForeignKey(
        Checkpoint,
        on_delete=models.PROTECT,
        related_name="jobs",
        help_text="The checkpoint training starts from (a base model or an earlier run).",
    )
    snapshot = models.ForeignKey(
        DatasetSnapshot, on_delete=models.PROTECT, related_name="training_jobs"
    )
    reward_model = models.ForeignKey(
        Checkpoint,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="scored_jobs",
        help_text="PPO, RLOO and GRPO score their samples with it.",
    )
    config = models.JSONField(help_text="Validated by modeling.ml.parse_job_config.")
    time_limit_seconds = models.PositiveIntegerField()

    attempt = models.PositiveSmallIntegerField(default=1)
    # One-to-one: a double-clicked "Re-run" can never start two new attempts of the same job.
    previous_attempt = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="next_attempt"
    )
    resumed_from = models.CharField(
        max_length=1000, blank=True, help_text="Trainer checkpoint this attempt continued from."
    )
    output_dir = models.CharField(max_length=1000, blank=True)

    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True, help_text="Latest reported metrics.")
    metric_history = models.JSONField(
        default=list, blank=True, help_text='[{"step": n, "loss": x, ...}], thinned when long.'
    )
    log_tail = models.TextField(blank=True)

    cancel_requested = models.BooleanField(default=False)

    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    entrypoint = "modeling.services.runner.training_job_execute"
    task_name = "modeling.tasks.train_job"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} job #{self.pk}"

    def task_options(self) -> dict:
        limit = self.time_limit_seconds
        return {"soft_time_limit": limit, "time_limit": limit + HARD_LIMIT_GRACE_SECONDS}

    def distributed(self):
        from modeling.ml.distributed import DistributedConfig  # plain pydantic, no torch

        return DistributedConfig.model_validate((self.config or {}).get("distributed") or {})

    def launch_processes(self) -> int:
        return self.distributed().processes

    def launch_accelerate_config(self) -> Path | None:
        distributed = self.distributed()
        return distributed.accelerate_config() if distributed.launches_several else None

    def stop_requested(self) -> bool:
        return self.cancel_requested

    @property
    def can_rerun(self) -> bool:
        return self.status in (JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def result(self) -> Checkpoint | None:
        """The checkpoint this job produced, if it succeeded."""
        try:
            return self.checkpoint
        except Checkpoint.DoesNotExist:
            return None

    @property
    def progress_percent(self) -> int:
        if not self.total_steps:
            return 0
        return min(100, round(100 * self.step / self.total_steps))

    @property
    def elapsed_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def eta_seconds(self) -> float | None:
        """Remaining time at the average pace so far; None until a step has finished."""
        elapsed = self.elapsed_seconds
        if self.status != JobStatus.RUNNING or not elapsed or not self.step or not self.total_steps:
            return None
        return elapsed / self.step * max(0, self.total_steps - self.step)


class PlaygroundTurn(BackgroundWork):
    """One message typed into a checkpoint's playground and the checkpoint's reply to it.

    A conversation is a chain of turns (`previous`); each turn keeps the whole conversation it
    sent (`messages`, user and assistant alternating, the new user message last), so one row is
    enough to show it and to continue it. The reply is sampled by a GPU worker with the shared
    lifecycle (jobs.models), never in the web process.
    """

    # CASCADE, unlike the lineage's PROTECT: a playground chat is scratch work, not a record a
    # checkpoint must keep.
    checkpoint = models.ForeignKey(
        Checkpoint, on_delete=models.CASCADE, related_name="playground_turns"
    )
    previous = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    system = models.TextField(blank=True, help_text="The system prompt, if any.")
    messages = models.JSONField(help_text='[{"role": "user", "content": "…"}, …]')
    sampling = models.JSONField(help_text="max_new_tokens, temperature, top_p, seed")
    reply = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    # One reply on a model that fits one worker: minutes at most, even on a CPU.
    time_limit_seconds = 15 * 60
    entrypoint = "modeling.services.playground.playground_turn_execute"
    task_name = "modeling.tasks.playground_reply"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["checkpoint", "requested_by", "-created_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
        ]

    def __str__(self) -> str:
        return f"Playground turn #{self.pk} on {self.checkpoint}"

    def conversation(self) -> list[dict[str, str]]:
        """What the model reads: the system prompt, then the messages."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + list(self.messages)

    @property
    def prompt(self) -> str:
        """The message this turn asked the model to answer."""
        return self.messages[-1]["content"] if self.messages else ""

    @property
    def user_turns(self) -> int:
        return sum(1 for message in self.messages if message.get("role") == "user")


class ProjectDrafter(models.Model):
    """The project setting that names the checkpoint drafting its demonstrations: its drafting
    runs (AssistRun) write a draft per open demonstration item, and the task screen pre-fills
    the editor with it. Kept here, beside the registry it points into: feedback sits below
    modeling and stores only the drafts themselves."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="drafter")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="+")
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    set_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.checkpoint} drafts for {self.project}"


class AIAnnotator(models.Model):
    """The account a reward checkpoint votes as: a user without a role or a usable password
    (nobody logs in as it and the queue never serves it), so that its votes have an annotator
    like anyone's, and the quality page measures it as a person."""

    checkpoint = models.OneToOneField(
        Checkpoint, on_delete=models.PROTECT, related_name="ai_annotator"
    )
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ai_annotator"
    )

    def __str__(self) -> str:
        return f"AI annotator {self.user} ({self.checkpoint})"


class AssistKind(models.TextChoices):
    DRAFTS = "drafts", "Draft demonstrations"
    VOTES = "votes", "AI pre-votes on comparisons"


class AssistRun(BackgroundWork):
    """One batch of AI help for a project, on a GPU worker with the shared lifecycle: drafts
    from the project's drafting checkpoint for its open demonstration items, or a reward
    checkpoint's votes on its comparisons (modeling.services.assist). Both skip what the model
    already did, so a run delivered twice, or asked for again, does each item once."""

    kind = models.CharField(max_length=8, choices=AssistKind.choices)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="+")
    max_items = models.PositiveIntegerField()
    sampling = models.JSONField(
        default=dict, blank=True, help_text="Drafts: max_new_tokens, temperature, top_p, seed"
    )
    outcome = models.JSONField(default=dict, blank=True, help_text="drafted / voted, skipped, …")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    time_limit_seconds = 2 * 3600
    entrypoint = "modeling.services.assist.assist_run_execute"
    task_name = "modeling.tasks.assist_run"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} by {self.checkpoint} for {self.project} (#{self.pk})"
