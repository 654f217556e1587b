"""Data in and out: items and judgements, imports, snapshots."""

from typing import Literal

from django.db import transaction
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from ninja import File, Form, Router
from ninja.files import UploadedFile
from ninja.pagination import paginate

from core.api import ERRORS, Pagination
from core.idempotency import idempotent
from core.roles import Role, has_role
from feedback import services
from feedback.models import (
    DataImport,
    DatasetSnapshot,
    Project,
)
from feedback.services.imports import ImportOptions
from feedback.views.data import DOWNLOADS
from jobs.services import work_enqueue

from .access import _project_for, _require
from .schemas import (
    _JUDGEMENT_MODELS,
    ImportOut,
    ItemOut,
    JudgementOut,
    SnapshotIn,
    SnapshotOut,
    _judgement_out,
)

router = Router()


# --- reading items and judgements --------------------------------------------------------------


@router.get("/projects/{project_id}/items", response={200: list[ItemOut], **ERRORS}, tags=["data"])
@paginate(Pagination)
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


@router.get(
    "/projects/{project_id}/judgements",
    response={200: list[JudgementOut], **ERRORS},
    tags=["data"],
    summary="Judgements: all of them for admins and reviewers, your own for annotators",
)
@paginate(Pagination)
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
@idempotent
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
        work_enqueue(data_import)  # sent on commit; the sweep resends if the broker was down
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
@idempotent
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
        work_enqueue(snapshot)
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
