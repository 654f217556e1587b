"""Quality screens: the project report, and adjudication of split items (review: review.py)."""

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from core.roles import Role, role_required
from feedback.forms import RankingForm
from feedback.models import Item, PairwiseChoice, Project, TaskKind
from feedback.quality.reports import disagreement_items, plurality_share, project_quality
from feedback.services import review as review_services

from .review import REVIEWING

CHOICE_LABELS = {"a": "A", "b": "B", "tie": "tie", "both_bad": "both bad"}


@require_GET
@role_required(Role.ADMIN)
def quality(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    return render(request, "feedback/quality.html",
                  {"project": project, "report": project_quality(project)})  # fmt: skip


@require_GET
@role_required(*REVIEWING)
def disagreements(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    # Vote counts as (label, count) pairs, most common first: a template cannot read a
    # Counter's .items (it looks up the key "items" first, and a Counter answers 0).
    items = [
        (
            item,
            [(_answer_label(item, answer), n) for answer, n in votes.most_common()],
            plurality_share(votes.elements()),
        )
        for item, votes in disagreement_items(project)
    ]
    return render(request, "feedback/disagreements.html", {"project": project, "items": items})


def _answer_label(item: Item, answer) -> str:
    """ "A", "tie", … for a pairwise choice; "2 > 1 = 3" for a ranking, replies numbered as the
    adjudication page shows them."""
    if item.kind == TaskKind.PAIRWISE:
        return CHOICE_LABELS[answer]
    number = {ic.completion_id: ic.position + 1 for ic in item.item_completions.all()}
    return " > ".join(" = ".join(str(number[c]) for c in sorted(g, key=number.get)) for g in answer)


@require_http_methods(["GET", "POST"])
@role_required(*REVIEWING)
def adjudicate(request: HttpRequest, item_id: int) -> HttpResponse:
    items = Item.objects.select_related("prompt", "project").prefetch_related("item_completions")
    item = get_object_or_404(items, pk=item_id)
    completions = item.ordered_completions()
    ranks = RankingForm(request.POST or None, completions=completions)
    error = ""
    if request.method == "POST":
        try:
            review_services.item_adjudicate(
                item_id=item.pk,
                adjudicator=request.user,
                choice=request.POST.get("choice", ""),
                ranking=ranks.ranking() if ranks.is_valid() else None,
                note=request.POST.get("note", ""),
            )
        except ValidationError as exc:
            error = "; ".join(exc.messages)
        else:
            return redirect("feedback:disagreements", project_id=item.project_id)
    context = {
        "item": item,
        "prompt": item.prompt,
        "project": item.project,
        "completions": completions,
        "votes": _votes(item),
        "choices": PairwiseChoice.choices,
        "ranks": ranks if item.kind == TaskKind.RANKING else None,
        "error": error,
    }
    return render(request, "feedback/adjudicate.html", context, status=422 if error else 200)


def _votes(item: Item) -> list[tuple[str, str, str]]:
    """(annotator, answer, rationale) of every judgement on the item, oldest first."""
    if item.kind == TaskKind.RANKING:
        judgements = item.rankingjudgement_set.select_related("annotator").order_by("id")
        return [(j.annotator.username, _answer_label(item, j.ranking), j.rationale)
                for j in judgements]  # fmt: skip
    judgements = item.pairwisejudgement_set.select_related("annotator").order_by("id")
    return [
        (
            j.annotator.username,
            j.get_choice_display()
            + (f" ({j.get_strength_display().lower()})" if j.strength else ""),
            j.rationale,
        )
        for j in judgements
    ]
