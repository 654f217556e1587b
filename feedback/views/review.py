"""Review screens: the queue of judgements of every kind (filters in the URL, paged, keys to move
and tick), one judgement's review page (a / r / e, j / k), and bulk accept, which first says
exactly what it will accept."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.errors import TaskUnavailable
from core.htmx import render_filtered
from core.roles import Role, role_required
from feedback import markdown, selectors
from feedback.models import JUDGEMENT_MODELS, Project, ReviewDecision, TaskKind
from feedback.selectors import review as review_selectors
from feedback.selectors.review import ReviewFilters
from feedback.services import review as review_services

REVIEWING = (Role.REVIEWER, Role.ADMIN)
# What the reviewer does (ReviewDecision's labels name the outcome, as the history shows it),
# and the key that does it on the review page.
DECISIONS = [
    (ReviewDecision.ACCEPT, "Accept as it is", "a"),
    (ReviewDecision.EDIT, "Accept with my edits", "e"),
    (ReviewDecision.REJECT, "Reject, with a comment", "r"),
]


@require_GET
@role_required(*REVIEWING)
def review_queue(request: HttpRequest) -> HttpResponse:
    filters = ReviewFilters.from_query(request.GET)
    page = review_selectors.review_queue_page(
        reviewer=request.user, filters=filters, number=_page_number(request.GET)
    )
    annotators = selectors.annotator_candidates().values_list("username", "username")
    selects = [
        ("project", "Project", Project.objects.values_list("pk", "name"), filters.project, "Any"),
        ("annotator", "Annotator", annotators, filters.annotator, "Anyone"),
        ("kind", "Kind", TaskKind.choices, filters.kind, "Every kind"),
        ("status", "Status", review_selectors.STATUS_CHOICES, filters.status, ""),
    ]
    context = {"filters": filters, "page": page, "query": filters.query(), "selects": selects}
    url = reverse("feedback:review-queue") + filters.query()
    return render_filtered(request, "feedback/review_queue.html", "queue", context, url)


@require_http_methods(["GET", "POST"])
@role_required(*REVIEWING)
def review_judgement(request: HttpRequest, kind: str, judgement_id: int) -> HttpResponse:
    detail = review_selectors.review_detail(kind=kind, judgement_id=judgement_id)
    if detail is None:
        raise Http404("No such judgement.")
    judgement = detail.judgement
    if judgement.annotator_id == request.user.pk:
        raise PermissionDenied("You cannot review your own work.")
    filters = ReviewFilters.from_query(request.GET)
    error = ""
    if request.method == "POST":
        try:
            review_services.judgement_review(
                kind=kind,
                judgement_id=judgement.pk,
                reviewer=request.user,
                decision=request.POST.get("decision", ""),
                comment=request.POST.get("comment", ""),
                edited_text=request.POST.get("text"),
            )
        except (ValidationError, TaskUnavailable) as exc:
            error = "; ".join(exc.messages)
        else:
            return redirect(_following(request, filters, judgement))
    near = {"reviewer": request.user, "filters": filters, "after": judgement}
    markdown.prefetch(detail.markdown_texts())  # everything the page renders, one round trip
    context = {
        "detail": detail,
        "judgement": judgement,
        "prompt": judgement.item.prompt,
        "project": judgement.item.project,
        "decisions": [
            d for d in DECISIONS if d[0] != ReviewDecision.EDIT or kind == "demonstration"
        ],
        "query": filters.query(),
        "next": review_selectors.review_queue_next(**near),
        "previous": review_selectors.review_queue_next(**near, backwards=True),
        "posted": request.POST if request.method == "POST" else {},
        "error": error,
    }
    return render(request, "feedback/review.html", context, status=422 if error else 200)


@require_POST
@role_required(*REVIEWING)
def review_accept(request: HttpRequest) -> HttpResponse:
    """Without `confirm`: the page that lists what would be accepted. With it: accept them."""
    selected = _refs(request.POST.getlist("selected"))
    back_to = QueryDict(request.POST.get("back", "").lstrip("?"))
    back = ReviewFilters.from_query(back_to).query()
    queue_url = reverse("feedback:review-queue") + back
    if not selected:
        messages.error(request, "Tick the judgements to accept first.")
        return redirect(queue_url)
    if request.POST.get("confirm") != "1":
        rows = review_selectors.queue_rows(selected)
        context = {"rows": rows, "back": back, "queue_url": queue_url}
        return render(request, "feedback/review_accept.html", context)
    try:
        accepted = review_services.judgements_accept(reviewer=request.user, selected=selected)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(queue_url)
    passed = len(selected) - accepted
    note = f" {passed} passed over: already reviewed, or your own." if passed else ""
    messages.success(request, f"Accepted {accepted} judgement{'s' if accepted != 1 else ''}.{note}")
    return redirect(queue_url)


def review_url(kind: str, judgement_id: int, query: str = "") -> str:
    return reverse("feedback:review-judgement", args=[kind, judgement_id]) + query


def _following(request: HttpRequest, filters: ReviewFilters, judgement) -> str:
    """After a decision: the next judgement in the queue, else its first, else the queue."""
    found = review_selectors.review_queue_next(
        reviewer=request.user, filters=filters, after=judgement
    ) or review_selectors.review_queue_next(reviewer=request.user, filters=filters)
    if found is None:
        return reverse("feedback:review-queue") + filters.query()
    return review_url(*found, filters.query())


def _refs(values: list[str]) -> list[tuple[str, int]]:
    """ "pairwise:12" -> ("pairwise", 12); anything else is dropped."""
    refs = []
    for value in values:
        kind, _, number = value.partition(":")
        if kind in JUDGEMENT_MODELS and number.isdigit() and 0 < int(number) < 2**63:
            refs.append((kind, int(number)))
    return refs


def _page_number(data: QueryDict) -> int:
    value = data.get("page", "")
    return min(int(value), 10**6) if value.isdigit() and int(value) > 0 else 1
