"""Admin data screens: upload and import files, build and download dataset snapshots."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from core.roles import Role, role_required
from feedback import services
from feedback.forms import ImportForm, SnapshotForm
from feedback.models import DataImport, DatasetSnapshot, Project
from jobs.services import work_enqueue

_UPLOAD_SALT = "veredicto.upload"
DOWNLOADS = {
    "train.jsonl": "application/jsonl",
    "test.jsonl": "application/jsonl",
    "train.parquet": "application/vnd.apache.parquet",
    "test.parquet": "application/vnd.apache.parquet",
    "hf.tar": "application/x-tar",
    "manifest.json": "application/json",
}
# How the snapshot page names each policy option and each count in `DatasetSnapshot.stats`.
POLICY_LABELS = {
    "test_fraction": "Held-out share (by prompt hash)",
    "aggregation": "Aggregation",
    "min_agreement": "Majority: winner's least share",
    "min_posterior": "Dawid–Skene: label's least posterior",
    "min_item_agreement": "Min item agreement",
    "keep_ties": "Keep ties / both-bad",
    "statuses": "Review statuses",
    "format": "Format",
    "min_annotator_agreement": "Min annotator agreement",
    "min_gold_accuracy": "Min gold accuracy",
    "exclude_flagged": "Leave out flagged annotators",
    "include_imported": "Include imported judgements",
    "include_simulated": "Include simulated judgements",
    "include_ai": "Include AI annotators' votes",
    "include_gold": "Include judgements on gold items",
}
DROPPED_LABELS = {
    "gold_judgements": "judgements on gold items",
    "gold_prompts": "prompts of gold items",
    "excluded_annotator_judgements": "judgements by left-out annotators",
    "pairs_below_min_item_agreement": "pairs below the min item agreement",
    "pairs_below_min_agreement": "pairs whose majority was below its least share",
    "pairs_below_min_posterior": "pairs whose Dawid–Skene label was below its least posterior",
    "pairs_without_a_winner": "pairs without a winner (level votes, ties, both bad)",
    "tie_or_both_bad_judgements": "tie / both-bad judgements",
}


@require_GET
@role_required(Role.ADMIN)
def data_page(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    return render(request, "feedback/data.html", _data_context(project))


def _data_context(project: Project, **extra) -> dict:
    return {
        "project": project,
        "import_form": extra.pop("import_form", None) or ImportForm(),
        "snapshot_form": extra.pop("snapshot_form", None) or SnapshotForm(),
        "imports": project.imports.select_related("created_by")[:20],
        "snapshots": project.snapshots.select_related("created_by")[:50],
        **extra,
    }


@require_POST
@role_required(Role.ADMIN)
def import_preview(request: HttpRequest, project_id: int) -> HttpResponse:
    """Store the upload, show its first rows and detected shape, and ask for confirmation."""
    project = get_object_or_404(Project, pk=project_id)
    form = ImportForm(request.POST, request.FILES)
    preview = token = None
    if form.is_valid():
        uploaded = form.cleaned_data["file"]
        try:
            preview, path = services.imports.upload_preview(
                uploaded=uploaded, project=project, options=form.options()
            )
        except ValidationError as exc:
            form.add_error("file", exc.messages)
        else:
            if path is not None:  # only a file without errors in its preview may be imported
                relative = str(path.relative_to(Path(settings.MEDIA_ROOT)))
                token = signing.dumps([project.pk, relative, uploaded.name], salt=_UPLOAD_SALT)
    return _import_panel(request, project, form, preview, token)


def _import_panel(request, project, form, preview, token=None) -> HttpResponse:
    context = _data_context(project, import_form=form, preview=preview, upload_token=token)
    template = "feedback/data.html#import-panel" if request.htmx else "feedback/data.html"
    return render(request, template, context, status=200 if form.is_valid() else 422)


@require_POST
@role_required(Role.ADMIN)
def import_start(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    form = ImportForm(request.POST)
    form.fields["file"].required = False
    try:
        signed_project, relative, original = signing.loads(
            request.POST.get("upload_token", ""),
            salt=_UPLOAD_SALT,
            max_age=services.imports.UPLOAD_KEPT_SECONDS,
        )
    except signing.BadSignature:
        return HttpResponse("That upload is unknown or expired; upload the file again.", status=400)
    if not (Path(settings.MEDIA_ROOT) / relative).exists():
        return HttpResponse("That upload was imported already; upload the file again.", status=400)
    if signed_project != project.pk or not form.is_valid():
        return HttpResponse("The import options are invalid.", status=400)
    path = Path(settings.MEDIA_ROOT) / relative
    # Read again with the options given here, which need not be those previewed.
    if services.imports.import_preview(path=path, options=form.options())["errors"]:
        return HttpResponse(
            "The first rows of that file have errors with these options: preview it again.",
            status=422,
        )
    with transaction.atomic():
        data_import = services.imports.data_import_create(
            project=project,
            path=path,
            original_name=original,
            options=form.options(),
            user=request.user,
        )
        work_enqueue(data_import)  # sent on commit; the sweep resends if the broker was down
    return redirect("feedback:import-detail", import_id=data_import.pk)


@require_GET
@role_required(Role.ADMIN)
def import_detail(request: HttpRequest, import_id: int) -> HttpResponse:
    data_import = get_object_or_404(DataImport.objects.select_related("project"), pk=import_id)
    template = "feedback/import_detail.html"
    if request.htmx:
        template += "#import-status"
    return render(request, template, {"data_import": data_import, "project": data_import.project})


@require_POST
@role_required(Role.ADMIN)
def snapshot_create(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    form = SnapshotForm(request.POST)
    if form.is_valid():
        try:
            with transaction.atomic():
                snapshot = services.snapshot_request(
                    project=project,
                    kind=form.cleaned_data["kind"],
                    name=form.cleaned_data["name"],
                    created_by=request.user,
                    policy=form.policy(),
                )
                work_enqueue(snapshot)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect("feedback:snapshot-detail", snapshot_id=snapshot.pk)
    return render(
        request, "feedback/data.html", _data_context(project, snapshot_form=form), status=422
    )


@require_GET
@role_required(Role.ADMIN)
def snapshot_detail(request: HttpRequest, snapshot_id: int) -> HttpResponse:
    snapshot = get_object_or_404(DatasetSnapshot.objects.select_related("project"), pk=snapshot_id)
    template = "feedback/snapshot_detail.html"
    if request.htmx:
        template += "#snapshot-status"
    context = {"snapshot": snapshot, "project": snapshot.project, "downloads": list(DOWNLOADS)}
    return render(request, template, context | _policy_and_stats(snapshot))


def _policy_and_stats(snapshot: DatasetSnapshot) -> dict:
    """The policy and what its filters did, as labelled rows for the snapshot page."""
    stats = snapshot.stats
    return {
        "policy": _labelled(snapshot.policy, POLICY_LABELS),
        "dropped": _labelled(stats.get("dropped", {}), DROPPED_LABELS),
        "unmeasured": [
            (POLICY_LABELS.get(key, key).lower(), ", ".join(names))
            for key, names in sorted(stats.get("unmeasured_annotators", {}).items())
        ],
    }


def _labelled(values: dict, labels: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value shown) in the labels' order (jsonb does not keep the keys' order)."""
    return [(label, _shown(values[key])) for key, label in labels.items() if key in values]


def _shown(value) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


@require_GET
@role_required(Role.ADMIN)
def snapshot_download(request: HttpRequest, snapshot_id: int, filename: str) -> FileResponse:
    snapshot = get_object_or_404(DatasetSnapshot, pk=snapshot_id)
    if filename not in DOWNLOADS or not snapshot.is_ready:
        raise Http404("No such file.")
    path = snapshot.path() / filename
    if not path.is_file():
        raise Http404("This snapshot has no such file (an empty split has no Parquet file).")
    download_name = f"{snapshot.project.name}-{snapshot.kind}-{snapshot.pk}-{filename}"
    return FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=download_name.replace(" ", "_"),
        content_type=DOWNLOADS[filename],
    )
