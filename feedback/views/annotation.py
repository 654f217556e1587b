"""Annotator and admin screens. Each view: check the method and role, call one service, render.

htmx requests get the `#workspace` partial of the same page template; plain requests get the full
page or a redirect, so everything works with JavaScript off.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from core.errors import NotYourTask, TaskUnavailable
from core.htmx import render_filtered
from core.roles import Role, has_role, role_required
from feedback import markdown, selectors, services
from feedback.forms import (
    DemonstrationForm,
    PairwiseForm,
    RankingForm,
    SkipForm,
    label_inputs,
    labels_from_post,
)
from feedback.models import (
    Assignment,
    AssignmentStatus,
    JudgementStatus,
    PairwiseChoice,
    Project,
    TaskKind,
)
from feedback.selectors import history as history_selectors
from feedback.selectors.history import HistoryFilters

ANNOTATING = (Role.ANNOTATOR, Role.ADMIN)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    projects = (
        selectors.projects_for_annotator(user=request.user)
        if has_role(request.user, *ANNOTATING)
        else []
    )
    admin_projects = Project.objects.all() if has_role(request.user, Role.ADMIN) else []
    # Reviewers browse every project's records; admins reach them from their own table.
    is_admin = has_role(request.user, Role.ADMIN)
    reviewer_projects = (
        Project.objects.all() if not is_admin and has_role(request.user, Role.REVIEWER) else []
    )
    context = {
        "projects": projects,
        "admin_projects": admin_projects,
        "reviewer_projects": reviewer_projects,
    }
    return render(request, "feedback/home.html", context)


@require_GET
def landing(request: HttpRequest) -> HttpResponse:
    """Where a login leads: a reviewer who does not annotate starts at the review queue."""
    if has_role(request.user, Role.REVIEWER) and not has_role(request.user, *ANNOTATING):
        return redirect("feedback:review-queue")
    return redirect("feedback:home")


@require_GET
@role_required(*ANNOTATING)
def work(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    try:
        assignment = services.task_next_for_annotator(project=project, annotator=request.user)
    except TaskUnavailable as exc:
        return render(request, "feedback/queue_empty.html", {"project": project,
                      "reason": exc.messages[0]}, status=409)  # fmt: skip
    if assignment is None:
        return _render_queue_empty(request, project)
    return redirect("feedback:task", assignment_id=assignment.pk)


@require_GET
@role_required(*ANNOTATING)
def task(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    if assignment.status == AssignmentStatus.SKIPPED:
        return redirect("feedback:work", project_id=assignment.item.project_id)
    view = selectors.task_view(assignment=assignment)
    return _render_task(request, view, _form_for(view, initial=True))


@require_POST
@role_required(*ANNOTATING)
def submit(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    view = selectors.task_view(assignment=assignment)
    already_submitted = assignment.status == AssignmentStatus.SUBMITTED
    if already_submitted and request.POST.get("edit") != "1":
        # A double click or a retried request: the first one counted, move on.
        return _next_task(request, assignment.item.project)
    editing = already_submitted
    form = _form_for(view, data=request.POST)
    if form.is_valid():
        try:
            _save(request, view, form, editing=editing)
        except ValidationError as exc:
            _add_errors(form, exc)
        else:
            if editing:
                messages.success(request, "Your changes are saved; the earlier version is kept.")
                if request.htmx:  # a whole new page, not a fragment for #workspace
                    return HttpResponseClientRedirect(reverse("feedback:history"))
                return redirect("feedback:history")
            revealed = _revealed(request, view)
            return _next_task(request, assignment.item.project, revealed=revealed)
    return _render_task(request, view, form, status=422, resubmitted=True)


def _revealed(request: HttpRequest, view: selectors.TaskView) -> list[str]:
    """Arena projects: who wrote the left and the right reply, now that the vote is in. The
    htmx flow shows it above the next task; the plain flow as a message after the redirect."""
    if view.kind != TaskKind.PAIRWISE or not view.item.project.reveal_models:
        return []
    names = [c.model_name or c.get_source_display() for c in view.completions]
    if not request.htmx:
        messages.info(request, f"Your vote is in: left was {names[0]}, right was {names[1]}.")
    return names


@require_POST
@role_required(*ANNOTATING)
def skip(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    skip_form = SkipForm(request.POST)
    try:
        if not skip_form.is_valid():
            raise ValidationError(skip_form.errors["reason"])
        reason = skip_form.cleaned_data["reason"]
        services.assignment_skip(assignment_id=assignment.pk, annotator=request.user, reason=reason)
    except ValidationError as exc:
        view = selectors.task_view(assignment=assignment)
        return _render_task(
            request, view, _form_for(view, initial=True), status=422, skip_form=skip_form,
            skip_error=exc.messages[0],
        )  # fmt: skip
    return _next_task(request, assignment.item.project)


@require_GET
@role_required(*ANNOTATING)
def history(request: HttpRequest) -> HttpResponse:
    filters = HistoryFilters.from_query(request.GET)
    page = history_selectors.history_page(
        user=request.user, filters=filters, number=request.GET.get("page")
    )
    markdown.prefetch(text for row in page for text in row.markdown_texts())
    context = {"page": page, "filters": filters, "query": filters.query(),
               "selects": _history_selects(request, filters)}  # fmt: skip
    url = reverse("feedback:history") + filters.query()
    return render_filtered(request, "feedback/history.html", "results", context, url)


def _history_selects(request: HttpRequest, filters: HistoryFilters) -> list[tuple]:
    """The filter form's drop-downs: (parameter, title, options, chosen, blank choice)."""
    projects = history_selectors.history_projects(user=request.user).values_list("pk", "name")
    statuses = [("submitted", "Waiting for review"), *JudgementStatus.choices[1:]]
    return [
        ("project", "Project", projects, filters.project, "Any"),
        ("kind", "Kind", TaskKind.choices, filters.kind, "Every kind"),
        ("status", "Status", statuses, filters.status, "Any"),
    ]


@require_GET
@role_required(Role.ADMIN)
def progress(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    stats = selectors.project_progress(project=project)
    return render(request, "feedback/progress.html", {"project": project, "stats": stats})


@require_POST
@role_required(Role.ANNOTATOR, Role.REVIEWER, Role.ADMIN)  # those who write markdown
def markdown_preview(request: HttpRequest) -> HttpResponse:
    # `?field=guidelines`: the project page previews its guidelines through the same endpoint.
    field = request.GET.get("field", "text")
    text = request.POST.get(field, "")[: settings.VEREDICTO_MAX_TEXT_CHARS]
    return HttpResponse(markdown.render_markdown(text))


# --- helpers -----------------------------------------------------------------------------------


def _own_assignment(request: HttpRequest, assignment_id: int) -> Assignment:
    # Someone else's task id is a 404, indistinguishable from one that does not exist.
    assignment = selectors.assignment_for_user(assignment_id=assignment_id, user=request.user)
    if assignment is None:
        raise Http404("No such task.")
    return assignment


def _form_for(view: selectors.TaskView, *, data=None, initial: bool = False) -> forms.Form:
    judgement = view.judgement
    if view.kind == TaskKind.DEMONSTRATION:
        start = None
        if judgement and initial:
            start = {"text": judgement.text}
        elif initial and view.draft is not None:  # the editor starts from a model's draft
            start = {"text": view.draft.text, "draft_id": view.draft.pk}
        return DemonstrationForm(data, initial=start)
    if view.kind == TaskKind.PAIRWISE:
        start = None
        if judgement and initial:
            start = {
                "side": _display_side(view, judgement.choice),
                "strength": judgement.strength,
                "rationale": judgement.rationale,
            }
        return PairwiseForm(data, initial=start)
    start = None
    if judgement and initial:
        start = {
            f"rank_{cid}": rank
            for rank, group in enumerate(judgement.ranking, start=1)
            for cid in group
        }
    return RankingForm(data, initial=start, completions=view.completions)


def _display_side(view: selectors.TaskView, choice: str) -> str:
    if choice not in (PairwiseChoice.A, PairwiseChoice.B):
        return choice
    left_is_a = view.judgement.shown_left == "a"
    return "left" if (choice == PairwiseChoice.A) == left_is_a else "right"


def _seconds(request: HttpRequest, form: forms.Form, assignment: Assignment) -> float:
    """The browser's timer when it sent one; the lease age otherwise (JavaScript off)."""
    sent = form.cleaned_data.get("seconds_spent")
    if sent is not None:
        return sent
    return (timezone.now() - assignment.leased_at).total_seconds()


def _save(request, view: selectors.TaskView, form: forms.Form, *, editing: bool) -> None:
    assignment = view.assignment
    labels = labels_from_post(assignment.item.project.label_schema, request.POST)
    if view.kind == TaskKind.DEMONSTRATION:
        fields = {"text": form.cleaned_data["text"]}
        if not editing:
            fields["draft_id"] = form.cleaned_data["draft_id"]
    elif view.kind == TaskKind.PAIRWISE:
        a_id = selectors.canonical_a_id(assignment)
        fields = {
            "choice": form.canonical_choice(assignment.display_order, a_id),
            "strength": form.cleaned_data["strength"],
            "rationale": form.cleaned_data["rationale"],
        }
    else:
        fields = {"ranking": form.ranking(), "rationale": form.cleaned_data["rationale"]}
    if editing:
        services.judgement_edit(
            assignment_id=assignment.pk,
            annotator=request.user,
            changes={**fields, "labels": labels},
        )
        return
    submit = {
        TaskKind.DEMONSTRATION: services.demonstration_submit,
        TaskKind.PAIRWISE: services.pairwise_submit,
        TaskKind.RANKING: services.ranking_submit,
    }[view.kind]
    submit(
        assignment_id=assignment.pk,
        annotator=request.user,
        labels=labels,
        seconds_spent=_seconds(request, form, assignment),
        loaded=assignment,
        **fields,
    )


def _add_errors(form: forms.Form, exc: ValidationError) -> None:
    if isinstance(exc, TaskUnavailable) or not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.message_dict.items():
        shown = field in form.fields and not form.fields[field].widget.is_hidden
        form.add_error(field if shown else None, errors)  # a hidden input shows no errors


def _next_task(request: HttpRequest, project: Project, revealed: list[str] = ()) -> HttpResponse:
    if not request.htmx:
        return redirect("feedback:work", project_id=project.pk)
    try:
        assignment = services.task_next_for_annotator(project=project, annotator=request.user)
    except (TaskUnavailable, NotYourTask):
        assignment = None
    if assignment is None:
        response = _render_queue_empty(request, project, revealed=revealed)
        response["HX-Push-Url"] = reverse("feedback:work", args=[project.pk])
        return response
    view = selectors.task_view(assignment=assignment)
    response = _render_task(request, view, _form_for(view, initial=True), revealed=revealed)
    response["HX-Push-Url"] = reverse("feedback:task", args=[assignment.pk])
    return response


def _render_task(
    request,
    view: selectors.TaskView,
    form: forms.Form,
    status: int = 200,
    resubmitted: bool = False,
    skip_form: SkipForm | None = None,
    skip_error: str = "",
    revealed: list[str] = (),
):
    """`resubmitted`: the same task shown again with the annotator's answers and errors.
    `revealed`: the models behind the previous task's two sides (arena projects)."""
    project = view.item.project
    template = f"feedback/task_{view.kind}.html"
    if request.htmx:
        template += "#workspace"
    if resubmitted:
        label_values = labels_from_post(project.label_schema, request.POST)
    else:
        label_values = view.judgement.labels if view.judgement else {}
    # Everything the screen renders as markdown, in one cache round trip.
    prompt = view.item.prompt
    markdown.prefetch(
        [project.guidelines, prompt.system, *(m["content"] for m in prompt.messages)]
        + [c.text for c in view.completions]
    )
    context = {
        "view": view,
        "form": form,
        "project": project,
        "prompt": prompt,
        "label_inputs": label_inputs(project.label_schema, label_values, _reply_names(view)),
        "progress": selectors.annotator_progress(project=project, annotator=request.user),
        "editing": view.assignment.status == AssignmentStatus.SUBMITTED,
        "lease_expired": view.assignment.status == AssignmentStatus.LEASED
        and view.assignment.expires_at <= timezone.now(),
        "skip_form": skip_form or SkipForm(),
        "skip_error": skip_error,
        "revealed": revealed,
    }
    return render(request, template, context, status=status)


def _reply_names(view: selectors.TaskView) -> list[tuple[int, str]]:
    """What the task screen calls each reply, in the order this annotator sees them."""
    if view.kind == TaskKind.PAIRWISE:
        return [(c.pk, side) for c, side in zip(view.completions, ("left", "right"), strict=False)]
    return [(c.pk, f"reply {n}") for n, c in enumerate(view.completions, start=1)]


def _render_queue_empty(
    request: HttpRequest, project: Project, revealed: list[str] = ()
) -> HttpResponse:
    template = "feedback/queue_empty.html" + ("#workspace" if request.htmx else "")
    return render(request, template, {"project": project, "revealed": revealed})
