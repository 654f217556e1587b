"""The records browser: admins and reviewers find a project's items and open one in full; admins
change many at once. Every filter is a GET parameter, so a search is a link to share."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from core.roles import Role, role_required
from feedback.models import Item, Origin, Project, Split, TaskKind
from feedback.selectors import records as record_selectors
from feedback.services import records as record_services

READERS = (Role.ADMIN, Role.REVIEWER)
FILTERS = ("q", "split", "kind", "origin", "status", "annotator", "gold")
PAGING = ("page", "before", "after")


@require_GET
@role_required(*READERS)
def records(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    filters = record_selectors.RecordFilters.from_query(request.GET)
    paging = {name: request.GET.get(name) for name in PAGING}
    page = record_selectors.records_page(project=project, filters=filters, **paging)
    query = _query(request.GET, keep=FILTERS)
    url = reverse("feedback:records", args=[project.pk])
    context = {
        "project": project,
        "filters": filters,
        "page": page,
        "catching_up": bool(filters.q) and record_selectors.search_catching_up(),
        "query": query,
        "here": _query(request.GET),
        "records_url": url,
        "newer_url": _page_url(url, request.GET, page.newer),
        "older_url": _page_url(url, request.GET, page.older),
        "selects": _selects(project, filters),
        "split_choices": Split.choices,
    }
    template = "feedback/records.html" + ("#results" if request.htmx else "")
    return render(request, template, context)


@require_GET
@role_required(*READERS)
def record(request: HttpRequest, item_id: int) -> HttpResponse:
    item = get_object_or_404(Item.objects.select_related("project", "prompt"), pk=item_id)
    detail = record_selectors.record_detail(item=item)
    context = {"project": item.project, "detail": detail, "prompt": item.prompt,
               "back": _query(request.GET)}  # fmt: skip
    return render(request, "feedback/record.html", context)


@require_POST
@role_required(Role.ADMIN)
def records_bulk(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    action = request.POST.get("action")
    item_ids = [int(i) for i in request.POST.getlist("item") if i.isdigit()]
    filters = _query(QueryDict(request.POST.get("back", "").lstrip("?")))
    back = reverse("feedback:records", args=[project.pk]) + filters
    if action == "delete" and request.POST.get("confirm") != "1" and item_ids:
        items = Item.objects.filter(project=project, pk__in=item_ids).select_related("prompt")
        context = {"project": project, "items": items, "back": filters}
        return render(request, "feedback/records_delete.html", context)
    try:
        messages.success(request, _apply(request, project, action, item_ids))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect(back)


def _apply(request: HttpRequest, project: Project, action: str | None, item_ids: list[int]) -> str:
    who = {"project": project, "item_ids": item_ids, "admin": request.user}
    if action == "gold":
        marked, skipped = record_services.items_mark_gold(**who)
        return f"Marked {marked} gold; {skipped} had no agreed answer (or are demonstrations)."
    if action == "split":
        split = request.POST.get("split", "")
        moved = record_services.items_set_split(**who, split=split)
        return f"Moved {moved} prompt{'s' if moved != 1 else ''} to {split}."
    if action == "delete":
        return f"Deleted {record_services.items_delete(**who)} records."
    raise ValidationError("Choose an action.")


def _selects(project: Project, filters) -> list[tuple[str, str, list, str]]:
    """The filter form's drop-downs: (parameter, title, options, what is chosen now)."""
    annotators = record_selectors.record_annotators(project=project)
    options = [
        ("split", "Split", Split.choices),
        ("kind", "Kind", TaskKind.choices),
        ("origin", "Origin", Origin.choices),
        ("status", "Status", record_selectors.STATUSES),
        ("annotator", "Annotator", [(name, name) for name in annotators]),
        ("gold", "Gold", [("yes", "Gold only"), ("no", "Not gold")]),
    ]
    return [(name, title, choices, getattr(filters, name)) for name, title, choices in options]


def _query(data: QueryDict, keep: tuple[str, ...] = FILTERS + PAGING) -> str:
    """`?a=1&b=2` of the filters that are set (never a URL: links and redirects stay here)."""
    kept = QueryDict(mutable=True)
    for key in keep:
        if data.get(key):
            kept[key] = data[key]
    return f"?{kept.urlencode()}" if kept else ""


def _page_url(url: str, data: QueryDict, paging: dict[str, int] | None) -> str:
    """The link to another page of the same search: its filters, then where the page is."""
    if paging is None:
        return ""
    where = QueryDict(_query(data, keep=FILTERS).lstrip("?"), mutable=True)
    where.update({name: str(value) for name, value in paging.items()})
    return f"{url}?{where.urlencode()}"
