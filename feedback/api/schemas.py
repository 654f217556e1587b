"""What the annotation API reads and writes."""

from datetime import datetime
from typing import Any, ClassVar, Literal, Self

from ninja import Field, Schema

from feedback.models import (
    DatasetSnapshot,
    Demonstration,
    Item,
    PairwiseJudgement,
    RankingJudgement,
    TaskKind,
)
from feedback.views.data import DOWNLOADS


class Message(Schema):
    role: str
    content: str


class ProjectOut(Schema):
    id: int
    name: str
    description: str
    task_kinds: list[str]
    overlap: int
    lease_seconds: int
    label_schema: list[dict[str, Any]]
    is_active: bool
    guidelines: str


class TaskCompletionOut(Schema):
    """A reply as an annotator sees it: no model name or source before the vote (blind)."""

    id: int
    text: str


class CompletionOut(TaskCompletionOut):
    model_name: str
    source: str


class TaskItemOut(Schema):
    id: int
    kind: str
    system: str
    messages: list[Message]
    completions: list[TaskCompletionOut]
    submitted_count: int
    completion_schema: ClassVar[type[Schema]] = TaskCompletionOut

    @classmethod
    def build(cls, item: Item, completions: list) -> Self:
        return cls(
            id=item.pk,
            kind=item.kind,
            system=item.prompt.system,
            messages=item.prompt.messages,
            completions=[cls.completion_schema.from_orm(c) for c in completions],
            submitted_count=item.submitted_count,
        )


class ItemOut(TaskItemOut):
    """An item as the data endpoints show it to admins, with who wrote each reply."""

    completions: list[CompletionOut]
    completion_schema: ClassVar[type[Schema]] = CompletionOut


class DraftOut(Schema):
    id: int
    text: str
    model_name: str = Field(description="The model that wrote the draft, to say so on screen.")


class AIVoteOut(Schema):
    voter: str = Field(description="The AI annotator (a reward model), never a person.")
    choice: str = Field(description="Canonical a, b, tie or both_bad.")
    preferred_completion_id: int | None = Field(description="The reply it preferred, if any.")
    strength: str


class AssignmentOut(Schema):
    id: int
    status: str
    expires_at: datetime
    item: TaskItemOut = Field(
        description="Completions in the order this annotator should see them, without who "
        "wrote them: votes are blind."
    )
    draft: DraftOut | None = Field(
        default=None,
        description="Demonstrations: a model's draft to start the editor from (say it is the "
        "model's and let the annotator edit it); null when there is none. Submitting records "
        "it and how much was changed.",
    )
    ai_votes: list[AIVoteOut] = Field(
        default=[],
        description="Comparisons in projects that show AI votes (show_ai_votes): how AI "
        "annotators voted on this pair; empty otherwise.",
    )


class DemonstrationIn(Schema):
    text: str
    labels: dict[str, Any] = {}
    seconds_spent: float | None = None
    draft_id: int | None = Field(
        default=None,
        description="The draft the editor started from (the task's `draft.id`); default: the "
        "task's current draft, if it has one.",
    )


class PairwiseIn(Schema):
    choice: Literal["a", "b", "tie", "both_bad"] = Field(
        description="Canonical: a is the item's first completion, b its second."
    )
    strength: Literal["", "slight", "clear", "strong"] = ""
    rationale: str = ""
    labels: dict[str, Any] = {}
    seconds_spent: float | None = None


class RankingIn(Schema):
    ranking: list[list[int]] = Field(
        description="Best-first groups of completion ids; a group is a tie."
    )
    rationale: str = ""
    labels: dict[str, Any] = {}
    seconds_spent: float | None = None


class SkipIn(Schema):
    reason: str = ""


class JudgementOut(Schema):
    id: int
    kind: str
    item_id: int
    assignment_id: int
    annotator: str = Field(
        description='Username of who judged; an imported label says "imported from <source>".'
    )
    origin: str
    created_at: datetime
    updated_at: datetime
    labels: dict[str, Any]
    seconds_spent: float | None
    data: dict[str, Any]
    revealed_models: dict[str, str] | None = Field(
        default=None,
        description="Arena projects (reveal_models): who wrote reply a and reply b, given once "
        "the pairwise vote is in; null otherwise.",
    )


class ImportOut(Schema):
    id: int
    project_id: int
    original_name: str
    status: str
    phase: str
    rows_done: int
    rows_total: int | None
    report: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None


class SnapshotIn(Schema):
    kind: Literal["sft", "preference", "prompts"]
    name: str = ""
    policy: dict[str, Any] = Field(
        {},
        description="Options, defaults filled in; an unknown key or an out-of-range value is a "
        "422. All kinds: test_fraction [0, 1), include_imported, include_simulated, include_ai, "
        "include_gold (judgements on gold items; default false). SFT and preference: "
        "min_annotator_agreement, min_gold_accuracy (0..1 or null), exclude_flagged. "
        "Preference: aggregation (majority|dawid_skene|all), min_agreement (majority), "
        "min_posterior (dawid_skene; 0..1 or null), min_item_agreement (0..1 or null), "
        "keep_ties. SFT: statuses, format (messages|prompt_completion).",
    )


class SnapshotOut(Schema):
    id: int
    project_id: int
    name: str
    kind: str
    status: str
    policy: dict[str, Any]
    stats: dict[str, Any] = Field(
        description="What the filters did: dropped counts, annotators left out with reasons, "
        "annotators kept for want of a figure, adjudicated pairs."
    )
    content_hash: str
    row_counts: dict[str, int]
    error: str
    created_at: datetime
    files: list[str]

    @staticmethod
    def build(snapshot: DatasetSnapshot) -> "SnapshotOut":
        files = [n for n in DOWNLOADS if snapshot.is_ready and (snapshot.path() / n).is_file()]
        return SnapshotOut(
            **{f: getattr(snapshot, f) for f in SnapshotOut.model_fields if f != "files"},
            files=files,
        )


_JUDGEMENT_MODELS = {
    TaskKind.DEMONSTRATION: Demonstration,
    TaskKind.PAIRWISE: PairwiseJudgement,
    TaskKind.RANKING: RankingJudgement,
}
_JUDGEMENT_DATA = {
    TaskKind.DEMONSTRATION: ("text", "status", "draft_id", "draft_edit_distance"),
    TaskKind.PAIRWISE: ("choice", "strength", "shown_left", "rationale"),
    TaskKind.RANKING: ("ranking", "rationale"),
}


def _judgement_out(judgement) -> JudgementOut:
    kind = next(k for k, m in _JUDGEMENT_MODELS.items() if isinstance(judgement, m))
    return JudgementOut(
        id=judgement.pk,
        kind=kind,
        item_id=judgement.item_id,
        assignment_id=judgement.assignment_id,
        annotator=judgement.credited_to,
        origin=judgement.origin,
        created_at=judgement.created_at,
        updated_at=judgement.updated_at,
        labels=judgement.labels,
        seconds_spent=judgement.seconds_spent,
        data={field: getattr(judgement, field) for field in _JUDGEMENT_DATA[kind]},
    )
