"""Annotation data: projects, prompts, completions, work items, leases and judgements.

An `Item` is one unit of work (write a demonstration, compare two completions, rank N). An
`Assignment` is one annotator's slot on an item: it starts as a lease and ends submitted or
skipped. A judgement row hangs off exactly one assignment, which is what makes submits idempotent.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from jobs.models import BackgroundWork, Status

from . import validators


class TaskKind(models.TextChoices):
    DEMONSTRATION = "demonstration", "Write a demonstration"
    PAIRWISE = "pairwise", "Compare two completions"
    RANKING = "ranking", "Rank completions"


class Project(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.CharField(max_length=500, blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    task_kinds = models.JSONField(
        default=list,
        validators=[validators.validate_task_kinds],
        error_messages={"blank": validators.NO_TASK_KINDS},
        help_text="Which of demonstration / pairwise / ranking this project collects.",
    )
    overlap = models.PositiveSmallIntegerField(
        default=1,
        validators=[
            MinValueValidator(validators.MIN_OVERLAP, "Overlap is at least 1 annotator per item."),
            MaxValueValidator(validators.MAX_OVERLAP, "Overlap is at most 50 annotators per item."),
        ],
        help_text="How many different annotators judge each item (k).",
    )
    lease_seconds = models.PositiveIntegerField(
        default=1800,
        validators=[
            MinValueValidator(validators.MIN_LEASE_SECONDS, "A lease lasts at least 60 seconds."),
            MaxValueValidator(validators.MAX_LEASE_SECONDS, "A lease lasts at most a week."),
        ],
        help_text="How long a handed-out task stays reserved for its annotator (60 s to a week).",
    )
    label_schema = models.JSONField(
        default=list,
        blank=True,
        validators=[validators.validate_label_schema],
        help_text='Extra labels, e.g. [{"name": "helpfulness", "kind": "likert", "min": 1, '
        '"max": 7, "scope": "item"}, {"name": "unsafe", "kind": "flag"}, '
        '{"name": "note", "kind": "text"}]. A Likert "scope" is "item" or "reply".',
    )
    annotators = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="annotation_projects",
        help_text="Who may work on it. Empty means every annotator.",
    )
    is_active = models.BooleanField(default=True, help_text="Closed projects hand out no work.")
    gold_rate = models.FloatField(
        default=0.0,
        validators=[
            MinValueValidator(0.0, "The gold rate is a share from 0 to 0.5."),
            MaxValueValidator(validators.MAX_GOLD_RATE, "The gold rate is a share from 0 to 0.5."),
        ],
        help_text="Share of tasks that are gold items with known answers (0 to 0.5), unannounced.",
    )
    # Off by default: in ordinary preference collection, knowing which model wrote which reply
    # would colour an annotator's later votes. Arena projects turn it on, as Chatbot Arena does.
    reveal_models = models.BooleanField(
        default=False,
        help_text="Arena battles: after each comparison vote, tell the annotator which model "
        "wrote each side. Names are never shown before the vote.",
    )
    # Off by default: how much better a reply is feeds the strength-weighted agreement and the
    # exports' `strength`. An arena, where one click per battle is the point, turns it on.
    strength_optional = models.BooleanField(
        default=False,
        help_text="Pairwise: an A/B vote may leave out how much better (slightly, clearly, much), "
        "so one key or click casts it, as in Chatbot Arena.",
    )
    # Off by default: a model's vote seen before one's own anchors it, and the point of human
    # labels is an opinion the model did not already have.
    show_ai_votes = models.BooleanField(
        default=False,
        help_text="Comparisons: show annotators how AI annotators (reward models) voted on the "
        "same pair. Their votes are never counted as human work either way.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def votes_in_one_key(self) -> bool:
        """A comparison is cast by its first key: no strength asked for, no label required."""
        return self.strength_optional and not any(
            spec.get("required") for spec in self.label_schema
        )

    def clean(self) -> None:
        """Normalise what the field validators accepted (they run first, in full_clean)."""
        self.name = validators.normalise_name(self.name or "")
        if not self.name:
            raise ValidationError({"name": "A project needs a name."})
        # A bad schema is already reported by the field's validator.
        with suppress(ValidationError):
            self.label_schema = validators.normalise_label_schema(self.label_schema)


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    TEST = "test", "Test"


class Prompt(models.Model):
    """A conversation waiting for its next assistant turn: [{role, content}, ...]."""

    # Indexed by prompt_unique_per_project, which starts with it: a second index on the column
    # would only slow imports down.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="prompts", db_index=False
    )
    system = models.TextField(blank=True)
    messages = models.JSONField()
    content_hash = models.CharField(max_length=64)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    tags = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=200, blank=True)
    external_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "content_hash"], name="prompt_unique_per_project"
            )
        ]

    def __str__(self) -> str:
        return self.preview

    @property
    def preview(self) -> str:
        last = self.messages[-1]["content"] if self.messages else ""
        return last[:80]

    def conversation(self) -> list[dict[str, str]]:
        """The system text (if any) and the messages: what a model is asked."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + list(self.messages)


class CompletionSource(models.TextChoices):
    HUMAN = "human", "Human"
    MODEL = "model", "External model"
    CHECKPOINT = "checkpoint", "Checkpoint"


class Completion(models.Model):
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="completions")
    text = models.TextField()
    source = models.CharField(
        max_length=16, choices=CompletionSource.choices, default=CompletionSource.MODEL
    )
    model_name = models.CharField(max_length=200, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    generation_params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.model_name or self.source}: {self.text[:60]}"


class Item(models.Model):
    # Indexed by item_queue_order, which starts with it.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="items", db_index=False
    )
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="items")
    completions = models.ManyToManyField(
        Completion, through="ItemCompletion", related_name="items", blank=True
    )
    # Denormalised so the queue can find open items without counting rows per request.
    submitted_count = models.PositiveSmallIntegerField(default=0)
    # Which open items the queue starts first (higher first; ties by id, the order they came
    # in). Set by active sampling (loop.active) from a reward-model ensemble's doubt; 0 for all
    # items otherwise, which is the plain first-come order.
    priority = models.FloatField(default=0.0)
    # Content hash of the imported row that made this item: re-importing a file adds nothing.
    import_key = models.CharField(max_length=64, blank=True, default="")
    # Gold items have a known answer; they are mixed into the queue to measure annotators and
    # never exported as ordinary labels. Every annotator may get each gold item once.
    is_gold = models.BooleanField(default=False)
    gold_answer = models.JSONField(default=dict, blank=True)
    # The other keys of the imported row that made this item (UltraFeedback's scores, a
    # prompt_id...), kept as they were.
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # The queue's ORDER BY (-submitted_count, -priority, id) within a project: the next
        # open item is the first index entry that passes the filters, not a sort of the whole
        # project.
        indexes = [
            models.Index(
                fields=["project", "-submitted_count", "-priority", "id"], name="item_queue_order"
            )
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "import_key"],
                condition=~Q(import_key=""),
                name="item_import_key_once_per_project",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    def ordered_completions(self) -> list[Completion]:
        return [ic.completion for ic in self.item_completions.all()]


class ItemCompletion(models.Model):
    """Position 0 is canonical side A, 1 is B; display order is randomised per annotator."""

    # Indexed by itemcompletion_position, which starts with it.
    item = models.ForeignKey(
        Item, on_delete=models.CASCADE, related_name="item_completions", db_index=False
    )
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE)
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["item", "position"], name="itemcompletion_position"),
            models.UniqueConstraint(fields=["item", "completion"], name="itemcompletion_once"),
        ]

    def __str__(self) -> str:
        return f"{self.item} #{self.position}: completion {self.completion_id}"


class AssignmentStatus(models.TextChoices):
    LEASED = "leased", "Leased"
    SUBMITTED = "submitted", "Submitted"
    SKIPPED = "skipped", "Skipped"
    # The slot an imported label hangs off: held by the imported-labels owner, it is no
    # annotator's work and is not one of the item's `overlap` slots (the queue counts only
    # submitted and live leased ones).
    IMPORTED = "imported", "Imported label"
    # The slot an AI annotator's vote hangs off: like an imported label, it is not one of the
    # item's `overlap` slots and does not count in `submitted_count`, so the queue still hands
    # the item to as many people as the project asks for.
    AI = "ai", "AI vote"


def _fill_projects(assignments: list[Assignment]) -> None:
    """Each assignment that names no project takes its item's: from the item already loaded,
    else from one query for all of them (not one per assignment)."""
    unloaded = []
    for assignment in assignments:
        if assignment.project_id is not None or assignment.item_id is None:
            continue
        if Assignment.item.is_cached(assignment):
            assignment.project_id = assignment.item.project_id
        else:
            unloaded.append(assignment)
    if unloaded:
        ids = {a.item_id for a in unloaded}
        projects = dict(Item.objects.filter(pk__in=ids).values_list("pk", "project_id"))
        for assignment in unloaded:
            assignment.project_id = projects.get(assignment.item_id)  # None: the insert fails


class AssignmentManager(models.Manager):
    def bulk_create(self, objs, *args, **kwargs):
        """As save() does: an assignment takes its item's project unless it names one."""
        objs = list(objs)
        _fill_projects(objs)
        return super().bulk_create(objs, *args, **kwargs)


class Assignment(models.Model):
    # item and annotator: each is the first column of an index below.
    item = models.ForeignKey(
        Item, on_delete=models.CASCADE, related_name="assignments", db_index=False
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="assignments",
        db_index=False,
    )
    # The item's project, copied (save() fills it in; bulk inserts name it): an annotator's work
    # in one project is an index range of its own, so what they did elsewhere costs nothing
    # (the task screen's progress; issue #19). An item never changes project.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="+", db_index=False, editable=False
    )
    status = models.CharField(
        max_length=12, choices=AssignmentStatus.choices, default=AssignmentStatus.LEASED
    )
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # Completion ids in the order this annotator sees them (sides/ranks are shuffled per person).
    display_order = models.JSONField(default=list, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)

    objects = AssignmentManager()

    class Meta:
        constraints = [
            # The database itself refuses a second slot for the same person on the same item.
            models.UniqueConstraint(fields=["item", "annotator"], name="assignment_once_per_item")
        ]
        indexes = [
            models.Index(fields=["item", "status", "expires_at"]),
            models.Index(fields=["annotator", "status"]),
            models.Index(
                fields=["annotator", "project", "status"], name="assignment_mine_by_project"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.annotator} on {self.item}"

    def save(self, *args, **kwargs) -> None:
        _fill_projects([self])
        super().save(*args, **kwargs)

    @property
    def is_live_lease(self) -> bool:
        return self.status == AssignmentStatus.LEASED and self.expires_at > timezone.now()

    @property
    def is_done(self) -> bool:
        return self.status == AssignmentStatus.SUBMITTED


def live_lease_q(prefix: str = "") -> Q:
    """Assignments holding a slot right now: submitted, or leased and not yet expired."""
    return Q(**{f"{prefix}status": AssignmentStatus.SUBMITTED}) | Q(
        **{f"{prefix}status": AssignmentStatus.LEASED, f"{prefix}expires_at__gt": timezone.now()}
    )


class Origin(models.TextChoices):
    HUMAN = "human", "Human annotator"
    IMPORTED = "imported", "Imported data"
    SIMULATED = "simulated", "Simulated annotator"
    AI = "ai", "AI annotator (a model)"


class JudgementStatus(models.TextChoices):
    """Where a judgement stands with review; every kind can be accepted or rejected."""

    SUBMITTED = "submitted", "Submitted"
    ACCEPTED = "accepted", "Accepted"
    REJECTED = "rejected", "Rejected"


# Demonstrations were reviewed first; their code and the SFT policy's `statuses` use this name.
DemonstrationStatus = JudgementStatus


class JudgementBase(models.Model):
    assignment = models.OneToOneField(Assignment, on_delete=models.CASCADE)
    item = models.ForeignKey(Item, on_delete=models.CASCADE)
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    # Exports leave out imported, simulated and AI labels unless asked: they are not human work.
    origin = models.CharField(max_length=12, choices=Origin.choices, default=Origin.HUMAN)
    source = models.CharField(max_length=200, blank=True, help_text="File or dataset it came from.")
    labels = models.JSONField(default=dict, blank=True)
    seconds_spent = models.FloatField(null=True, blank=True)
    # A reviewer's decision (feedback.services.review); snapshots leave rejected ones out.
    status = models.CharField(
        max_length=12, choices=JudgementStatus.choices, default=JudgementStatus.SUBMITTED
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True
        # The review queue: judgements waiting for review, oldest first, a page at a time.
        indexes = [models.Index(fields=["status", "updated_at"], name="%(class)s_review")]

    @property
    def credited_to(self) -> str:
        """Whose work the pages say this is: a person's, or for an imported label its source
        (its `annotator` is then the imported-labels owner, never the user who imported it)."""
        if self.origin == Origin.IMPORTED:
            return f"imported from {self.source}" if self.source else "imported"
        return self.annotator.get_username()


class DemonstrationDraft(models.Model):
    """A model's draft of a demonstration item's reply, written in the background (modeling's
    drafting runs) for an annotator to edit. The newest draft of an item is the one shown.

    `model_name` is what the task screen calls the model; `model_ref` says which registry entry
    wrote it ("checkpoint:12"): feedback sits below the model registry and stores its label,
    not a key into it."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="drafts")
    text = models.TextField()
    model_name = models.CharField(max_length=200)
    model_ref = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # One draft per item and model: drafting again with the same model adds nothing.
            models.UniqueConstraint(fields=["item", "model_ref"], name="draft_once_per_model")
        ]

    def __str__(self) -> str:
        return f"Draft by {self.model_name} for item {self.item_id}"


class Demonstration(JudgementBase):
    text = models.TextField()
    # The model's draft the annotator started from, and how much of it they changed: the
    # normalised Levenshtein distance from the draft to the text (0 kept as drafted, 1 nothing
    # kept). Both empty when the editor started empty.
    draft = models.ForeignKey(
        DemonstrationDraft, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    draft_edit_distance = models.FloatField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Demonstration by {self.annotator} on item {self.item_id}"


class PairwiseChoice(models.TextChoices):
    A = "a", "A is better"
    B = "b", "B is better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class Strength(models.TextChoices):
    SLIGHT = "slight", "Slightly"
    CLEAR = "clear", "Clearly"
    STRONG = "strong", "Much"


class PairwiseJudgement(JudgementBase):
    """`choice` is canonical (A = item position 0), whatever side it was shown on."""

    choice = models.CharField(max_length=10, choices=PairwiseChoice.choices)
    strength = models.CharField(max_length=8, choices=Strength.choices, blank=True)
    shown_left = models.CharField(max_length=1, choices=[("a", "A"), ("b", "B")])
    rationale = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.get_choice_display()} by {self.annotator} on item {self.item_id}"


class RankingJudgement(JudgementBase):
    """`ranking` is best-first groups of completion ids; ids in one group are tied."""

    ranking = models.JSONField()
    rationale = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"Ranking by {self.annotator} on item {self.item_id}"


# The judgement each kind of task produces.
JUDGEMENT_MODELS: dict[str, type[JudgementBase]] = {
    TaskKind.DEMONSTRATION: Demonstration,
    TaskKind.PAIRWISE: PairwiseJudgement,
    TaskKind.RANKING: RankingJudgement,
}


class JudgementRevision(models.Model):
    """The state of a judgement before an edit, so edits never erase what was first said."""

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="revisions")
    payload = models.JSONField()
    edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Revision of {self.assignment} at {self.created_at:%Y-%m-%d %H:%M}"


class SnapshotKind(models.TextChoices):
    SFT = "sft", "SFT demonstrations"
    PREFERENCE = "preference", "Preference pairs"
    PROMPTS = "prompts", "Prompts only"


class DatasetSnapshot(BackgroundWork):
    """An immutable export of a project's judgements under a named policy.

    Its files live in `directory` (relative to MEDIA_ROOT): `train.jsonl` and `test.jsonl` in the
    shapes TRL trainers load directly, plus Parquet copies and a `datasets.save_to_disk` folder.
    Training jobs only ever read snapshots, so every checkpoint can name the labels that made it.
    Building one is background work (jobs.models): queued, running, then succeeded (ready).
    """

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="snapshots")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=SnapshotKind.choices)
    policy = models.JSONField(default=dict, help_text="Filters and aggregation used.")
    content_hash = models.CharField(max_length=64, blank=True, help_text="sha256 of the rows.")
    directory = models.CharField(max_length=500, blank=True)
    row_counts = models.JSONField(default=dict, blank=True, help_text='{"train": n, "test": m}')
    stats = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()}, {self.content_hash[:8] or 'building'})"

    time_limit_seconds = 3600
    task_name = "feedback.tasks.build_snapshot"

    @property
    def is_ready(self) -> bool:
        return self.status == Status.SUCCEEDED

    @property
    def status_label(self) -> str:
        """What the pages say: a built snapshot is "Ready" to train on."""
        return "Ready" if self.is_ready else self.get_status_display()

    def path(self) -> Path:
        return Path(settings.MEDIA_ROOT) / self.directory


# Imports follow the lifecycle every kind of background work shares (jobs.models).
ImportStatus = Status


class DataImport(BackgroundWork):
    """One uploaded file on its way into a project; big files import in the background."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="imports")
    file = models.CharField(max_length=500, help_text="Path under MEDIA_ROOT.")
    original_name = models.CharField(max_length=300)
    options = models.JSONField(default=dict)
    phase = models.CharField(max_length=20, blank=True, help_text="validating or writing")
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    time_limit_seconds = 4 * 3600
    task_name = "feedback.tasks.run_import"

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.original_name} into {self.project} ({self.status})"

    @property
    def created_summary(self) -> str:
        """'3 prompts, 6 completions, …' (templates cannot iterate a dict with an "items" key)."""
        created = (self.report or {}).get("created", {})
        return ", ".join(f"{count} {what}" for what, count in created.items())


class ReviewDecision(models.TextChoices):
    ACCEPT = "accept", "Accepted"
    EDIT = "edit", "Accepted with edits"
    REJECT = "reject", "Rejected"


class Review(models.Model):
    """A reviewer's decision on a judgement of any kind, found through its assignment (one
    judgement per assignment); an edit (demonstrations only) keeps the text before and after."""

    assignment = models.ForeignKey(Assignment, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews_given"
    )
    decision = models.CharField(max_length=8, choices=ReviewDecision.choices)
    comment = models.TextField(blank=True)
    text_before = models.TextField(blank=True)
    text_after = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} by {self.reviewer} on {self.assignment}"


class Adjudication(models.Model):
    """The recorded answer for an item whose judgements split; the latest one counts."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="adjudications")
    adjudicator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    choice = models.CharField(max_length=10, choices=PairwiseChoice.choices, blank=True)
    ranking = models.JSONField(null=True, blank=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Adjudication of item {self.item_id} by {self.adjudicator}"
