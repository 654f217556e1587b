"""API endpoints for the annotation app. Every write goes through the same services as the UI,
and every endpoint applies the same role rules."""

from datetime import datetime
from typing import Any, Literal

from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, File, Form, Router, Schema
from ninja.files import UploadedFile
from ninja.pagination import LimitOffsetPagination, paginate

from core.api import ERRORS
from core.errors import PermissionDenied
from core.roles import Role, has_role
from feedback import selectors, services, tasks
from feedback.models import (
    Assignment,
    DataImport,
    DatasetSnapshot,
    Demonstration,
    Item,
    PairwiseJudgement,
    Project,
    RankingJudgement,
    TaskKind,
)
from feedback.services.imports import ImportOptions
from feedback.views.data import DOWNLOADS

router = Router()


def _require(request: HttpRequest, *roles: Role) -> None:
    if not has_role(request.user, *roles):
        raise PermissionDenied("Your role does not allow this.")


def _project_for(request: HttpRequest, project_id: int) -> Project:
    if has_role(request.user, Role.ADMIN, Role.REVIEWER):
        return get_object_or_404(Project, pk=project_id)
    return get_object_or_404(selectors.projects_for_annotator(user=request.user), pk=project_id)


# --- schemas -----------------------------------------------------------------------------------


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


class CompletionOut(Schema):
    id: int
    text: str
    model_name: str
    source: str


class ItemOut(Schema):
    id: int
    kind: str
    system: str
    messages: list[Message]
    completions: list[CompletionOut]
    submitted_count: int

    @staticmethod
    def build(item: Item, completions: list) -> "ItemOut":
        return ItemOut(
            id=item.pk,
            kind=item.kind,
            system=item.prompt.system,
            messages=item.prompt.messages,
            completions=[CompletionOut.from_orm(c) for c in completions],
            submitted_count=item.submitted_count,
        )


class AssignmentOut(Schema):
    id: int
    status: str
    expires_at: datetime
    item: ItemOut = Field(description="Completions in the order this annotator should see them.")


class DemonstrationIn(Schema):
    text: str
    labels: dict[str, Any] = {}
    seconds_spent: float | None = None


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
    annotator: str
    origin: str
    created_at: datetime
    updated_at: datetime
    labels: dict[str, Any]
    seconds_spent: float | None
    data: dict[str, Any]


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
        "422. All kinds: test_fraction [0, 1), include_imported, include_simulated, "
        "include_gold (judgements on gold items; default false). SFT and preference: "
        "min_annotator_agreement, min_gold_accuracy (0..1 or null), exclude_flagged. "
        "Preference: aggregation (majority|all), min_agreement, min_item_agreement (0..1 or "
        "null), keep_ties. SFT: statuses, format (messages|prompt_completion).",
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


# --- projects and the queue --------------------------------------------------------------------


@router.get("/projects", response=list[ProjectOut], tags=["projects"])
def list_projects(request):
    if has_role(request.user, Role.ADMIN, Role.REVIEWER):
        return Project.objects.order_by("name")
    return selectors.projects_for_annotator(user=request.user)


@router.get("/projects/{project_id}", response={200: ProjectOut, **ERRORS}, tags=["projects"])
def get_project(request, project_id: int):
    return _project_for(request, project_id)


@router.post(
    "/projects/{project_id}/next",
    response={200: AssignmentOut, 204: None, **ERRORS},
    tags=["annotation"],
    summary="Lease the next task (or get your current one); 204 when nothing is left",
)
def next_task(
    request, project_id: int, kind: Literal["demonstration", "pairwise", "ranking"] | None = None
):
    project = _project_for(request, project_id)
    assignment = services.task_next_for_annotator(
        project=project, annotator=request.user, kind=kind
    )
    if assignment is None:
        return 204, None
    return 200, _assignment_out(assignment)


def _assignment_out(assignment: Assignment) -> AssignmentOut:
    view = selectors.task_view(assignment=assignment)
    return AssignmentOut(
        id=assignment.pk,
        status=assignment.status,
        expires_at=assignment.expires_at,
        item=ItemOut.build(view.item, view.completions),
    )


def _own_assignment(request, assignment_id: int) -> Assignment:
    _require(request, Role.ANNOTATOR, Role.ADMIN)
    assignment = selectors.assignment_for_user(assignment_id=assignment_id, user=request.user)
    if assignment is None:
        raise Http404
    return assignment


@router.post(
    "/assignments/{assignment_id}/demonstration",
    response={200: JudgementOut, **ERRORS},
    tags=["annotation"],
)
def submit_demonstration(request, assignment_id: int, body: DemonstrationIn):
    _own_assignment(request, assignment_id)
    return _judgement_out(
        services.demonstration_submit(
            assignment_id=assignment_id, annotator=request.user, **body.dict()
        )
    )


@router.post(
    "/assignments/{assignment_id}/pairwise",
    response={200: JudgementOut, **ERRORS},
    tags=["annotation"],
)
def submit_pairwise(request, assignment_id: int, body: PairwiseIn):
    _own_assignment(request, assignment_id)
    return _judgement_out(
        services.pairwise_submit(assignment_id=assignment_id, annotator=request.user, **body.dict())
    )


@router.post(
    "/assignments/{assignment_id}/ranking",
    response={200: JudgementOut, **ERRORS},
    tags=["annotation"],
)
def submit_ranking(request, assignment_id: int, body: RankingIn):
    _own_assignment(request, assignment_id)
    return _judgement_out(
        services.ranking_submit(assignment_id=assignment_id, annotator=request.user, **body.dict())
    )


@router.post(
    "/assignments/{assignment_id}/skip", response={204: None, **ERRORS}, tags=["annotation"]
)
def skip(request, assignment_id: int, body: SkipIn):
    _own_assignment(request, assignment_id)
    services.assignment_skip(
        assignment_id=assignment_id, annotator=request.user, reason=body.reason
    )
    return 204, None


# --- reading items and judgements --------------------------------------------------------------


@router.get("/projects/{project_id}/items", response={200: list[ItemOut], **ERRORS}, tags=["data"])
@paginate(LimitOffsetPagination)
def list_items(
    request, project_id: int, kind: Literal["demonstration", "pairwise", "ranking"] | None = None
):
    _require(request, Role.ADMIN, Role.REVIEWER)
    project = _project_for(request, project_id)
    items = (
        project.items.select_related("prompt")
        .prefetch_related("item_completions__completion")
        .order_by("id")
    )
    if kind:
        items = items.filter(kind=kind)
    return _ItemPage(items)


class _ItemPage:
    """Sliced lazily by the paginator, then turned into schemas with their completions."""

    def __init__(self, queryset) -> None:
        self.queryset = queryset

    def count(self) -> int:
        return self.queryset.count()

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, window: slice) -> list[ItemOut]:
        return [
            ItemOut.build(item, [ic.completion for ic in item.item_completions.all()])
            for item in self.queryset[window]
        ]


_JUDGEMENT_MODELS = {
    TaskKind.DEMONSTRATION: Demonstration,
    TaskKind.PAIRWISE: PairwiseJudgement,
    TaskKind.RANKING: RankingJudgement,
}
_JUDGEMENT_DATA = {
    TaskKind.DEMONSTRATION: ("text", "status"),
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
        annotator=judgement.annotator.get_username(),
        origin=judgement.origin,
        created_at=judgement.created_at,
        updated_at=judgement.updated_at,
        labels=judgement.labels,
        seconds_spent=judgement.seconds_spent,
        data={field: getattr(judgement, field) for field in _JUDGEMENT_DATA[kind]},
    )


@router.get(
    "/projects/{project_id}/judgements",
    response={200: list[JudgementOut], **ERRORS},
    tags=["data"],
    summary="Judgements: all of them for admins and reviewers, your own for annotators",
)
@paginate(LimitOffsetPagination)
def list_judgements(
    request, project_id: int, kind: Literal["demonstration", "pairwise", "ranking"] = "pairwise"
):
    project = _project_for(request, project_id)
    judgements = (
        _JUDGEMENT_MODELS[kind].objects.filter(item__project=project).select_related("annotator")
    )
    if not has_role(request.user, Role.ADMIN, Role.REVIEWER):
        judgements = judgements.filter(annotator=request.user)
    return _JudgementPage(judgements.order_by("id"))


class _JudgementPage(_ItemPage):
    def __getitem__(self, window: slice) -> list[JudgementOut]:
        return [_judgement_out(j) for j in self.queryset[window]]


# --- imports -------------------------------------------------------------------------------------


@router.post(
    "/projects/{project_id}/imports",
    response={202: ImportOut, **ERRORS},
    tags=["data"],
    summary="Upload a file to import; it runs in the background (poll the import)",
)
def create_import(
    request,
    project_id: int,
    file: File[UploadedFile],
    shape: Form[Literal["auto", "prompts", "comparisons", "preference", "sft"]] = "auto",
    comparison_mode: Form[Literal["pairwise", "ranking"]] = "pairwise",
    pairing: Form[Literal["all_pairs", "adjacent", "first_vs_rest"]] = "all_pairs",
    source: Form[str] = "",
):
    _require(request, Role.ADMIN)
    project = get_object_or_404(Project, pk=project_id)
    options = ImportOptions(
        shape=shape, comparison_mode=comparison_mode, pairing=pairing, source=source[:200]
    )
    path = services.imports.upload_store(uploaded=file, project=project)
    with transaction.atomic():
        data_import = services.imports.data_import_create(
            project=project, path=path, original_name=file.name, options=options, user=request.user
        )
        transaction.on_commit(lambda: tasks.run_import.delay(data_import.pk))
    return 202, data_import


@router.get("/imports/{import_id}", response={200: ImportOut, **ERRORS}, tags=["data"])
def get_import(request, import_id: int):
    _require(request, Role.ADMIN)
    return get_object_or_404(DataImport, pk=import_id)


# --- snapshots -----------------------------------------------------------------------------------


@router.get(
    "/projects/{project_id}/snapshots", response={200: list[SnapshotOut], **ERRORS}, tags=["data"]
)
def list_snapshots(request, project_id: int):
    _require(request, Role.ADMIN)  # as the data pages (feedback/views/data.py)
    project = _project_for(request, project_id)
    return [SnapshotOut.build(s) for s in project.snapshots.all()[:200]]


@router.post(
    "/projects/{project_id}/snapshots",
    response={202: SnapshotOut, **ERRORS},
    tags=["data"],
    summary="Build a snapshot in the background (poll it until status is ready)",
)
def create_snapshot(request, project_id: int, body: SnapshotIn):
    _require(request, Role.ADMIN)
    project = get_object_or_404(Project, pk=project_id)
    with transaction.atomic():
        snapshot = services.snapshot_request(
            project=project,
            kind=body.kind,
            name=body.name,
            created_by=request.user,
            policy=body.policy,
        )
        transaction.on_commit(lambda: tasks.build_snapshot.delay(snapshot.pk))
    return 202, SnapshotOut.build(snapshot)


@router.get("/snapshots/{snapshot_id}", response={200: SnapshotOut, **ERRORS}, tags=["data"])
def get_snapshot(request, snapshot_id: int):
    _require(request, Role.ADMIN)  # as the data pages (feedback/views/data.py)
    return SnapshotOut.build(get_object_or_404(DatasetSnapshot, pk=snapshot_id))


@router.get(
    "/snapshots/{snapshot_id}/files/{filename}",
    response={200: None, **ERRORS},
    tags=["data"],
    summary="Download train.jsonl, test.jsonl, *.parquet, hf.tar or manifest.json",
)
def download_snapshot_file(request, snapshot_id: int, filename: str):
    _require(request, Role.ADMIN)  # as the data pages (feedback/views/data.py)
    snapshot = get_object_or_404(DatasetSnapshot, pk=snapshot_id)
    path = snapshot.path() / filename
    if filename not in DOWNLOADS or not snapshot.is_ready or not path.is_file():
        raise Http404
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename)
