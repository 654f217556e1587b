"""Evaluation screens: the dashboard (admins and reviewers), run pages, the comparison of two
checkpoints and the arena leaderboard. Only admins launch runs. Each view checks the method and
the role, calls one selector or service, renders.

Pages that list runs first fail the runs whose worker stopped beating (one indexed query).
"""

from __future__ import annotations

import csv

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.forms import add_service_errors
from core.roles import Role, has_role, role_required
from evals import selectors, services
from evals.forms import (
    BattleStartForm,
    BattleVoteForm,
    CompareForm,
    DashboardFilterForm,
    EvalRunForm,
    LiveArenaForm,
)
from evals.ml.lm_eval_adapter import shipped_lm_eval_task_names
from evals.ml.tasks import shipped_tasks
from evals.models import EvalRun, Suite
from evals.selectors import SUITE_DEFINITIONS
from feedback.models import Project
from modeling.models import Checkpoint

VIEWING = (Role.REVIEWER, Role.ADMIN)
# htmx targets that get their partial of the dashboard instead of the whole page.
DASHBOARD_PARTIALS = {"dashboard-results", "metric-chart"}


@require_GET
@role_required(*VIEWING)
def dashboard(request: HttpRequest) -> HttpResponse:
    target = request.htmx.target if request.htmx else None
    if target == "eval-runs":  # the recent-runs poll needs nothing else
        return render(request, "evals/dashboard.html#eval-runs", _recent_runs())
    form = DashboardFilterForm(request.GET)
    board = selectors.dashboard(**form.filters())
    # The chart shows the chosen metric, else the project's own (the demo's task score), else
    # the first column (a filter may have removed either).
    project = form.filters()["project"]
    project_metric = selectors.chart_metric_of(project=project) if project else ""
    metric = request.GET.get("metric", "")
    if board.column(metric) is None:
        metric = project_metric if board.column(project_metric) else ""
    if board.column(metric) is None:
        metric = board.columns[0].key if board.columns else ""
    context = {
        "form": form,
        "board": board,
        "metric": metric,
        "chart_project": project,
        "project_metric": project_metric,
        "series": board.series(metric),
        "arena": selectors.arena_projects(),
        "definitions": [(Suite(s).label, text) for s, text in SUITE_DEFINITIONS.items()],
        **_recent_runs(),
    }
    partial = f"#{target}" if target in DASHBOARD_PARTIALS else ""
    return render(request, "evals/dashboard.html" + partial, context)


@require_POST
@role_required(Role.ADMIN)
def chart_default(request: HttpRequest) -> HttpResponse:
    """Make the charted metric the one a project's dashboard opens on."""
    project = get_object_or_404(Project, pk=request.POST.get("project") or 0)
    metric = request.POST.get("metric", "")
    try:
        services.chart_default_set(project=project, metric=metric, set_by=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"The dashboard now opens {project.name} on this metric.")
    return redirect(reverse("evals:dashboard") + f"?project={project.pk}&metric={metric}")


@require_GET
@role_required(*VIEWING)
def dashboard_csv(request: HttpRequest) -> HttpResponse:
    board = selectors.dashboard(**DashboardFilterForm(request.GET).filters(), run_times=True)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="veredicto-evaluations.csv"'
    csv.writer(response).writerows(selectors.dashboard_csv_rows(board))
    return response


@require_GET
@role_required(*VIEWING)
def compare(request: HttpRequest) -> HttpResponse:
    form = CompareForm(request.GET or None)
    result = None
    if form.is_valid():
        result = selectors.comparison(form.cleaned_data["a"], form.cleaned_data["b"])
    return render(request, "evals/compare.html", {"form": form, "comparison": result})


@require_GET
@role_required(*VIEWING)
def checkpoint_evals(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    """The old address of a checkpoint's evaluations: they are a section of its one page now."""
    checkpoint = get_object_or_404(Checkpoint, pk=checkpoint_id)
    return redirect(_evaluations_url(checkpoint), permanent=True)


@require_GET
@role_required(*VIEWING)
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    try:
        run = selectors.run_detail(run_id=run_id)
    except EvalRun.DoesNotExist:
        raise Http404("No such evaluation run.") from None
    polling = request.htmx and request.htmx.target == "run-status"
    template = "evals/run_detail.html" + ("#run-status" if polling else "")
    context = {
        "run": run,
        "samples": selectors.run_samples(run=run),
        "definition": _definition(run),
    }
    return render(request, template, context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def run_new(request: HttpRequest) -> HttpResponse:
    form = EvalRunForm(
        request.POST or None, request.FILES or None, initial=request.GET.dict() or None
    )
    if request.method == "POST" and form.is_valid():
        try:
            run = _request_run(request, form)
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Evaluation run #{run.pk} is queued for a GPU worker.")
            return redirect("evals:eval-run", run_id=run.pk)
    status = 422 if form.is_bound else 200
    # Our shipped tasks, then the same multiple-choice tasks as lm-eval tasks (suite lm_eval).
    task_names = sorted(shipped_tasks()) + shipped_lm_eval_task_names()
    context = {"form": form, "task_names": task_names}
    return render(request, "evals/run_new.html", context, status=status)


@require_POST
@role_required(Role.ADMIN)
def run_rerun(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(EvalRun, pk=run_id)
    try:
        again = services.eval_run_rerun(run=run, requested_by=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("evals:eval-run", run_id=run.pk)
    messages.success(request, f"Run #{again.pk} repeats run #{run.pk}; both stay in the history.")
    return redirect("evals:eval-run", run_id=again.pk)


@require_POST
@role_required(Role.ADMIN)
def checkpoint_defaults(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(Checkpoint, pk=checkpoint_id)
    runs = services.eval_defaults_request(checkpoint=checkpoint, requested_by=request.user)
    if runs:
        messages.success(request, f"Queued {len(runs)} evaluation runs for a GPU worker.")
    else:
        messages.error(request, f"A {checkpoint.kind} model has no default evaluation.")
    return redirect(_evaluations_url(checkpoint))


@require_GET
@role_required(*VIEWING)
def leaderboard(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    board = selectors.arena_leaderboard(
        project=project,
        reference=request.GET.get("reference") or None,
        include_simulated=request.GET.get("simulated") == "1",
    )
    context = {"project": project, "board": board, "min_votes": selectors.MIN_ARENA_VOTES}
    return render(request, "evals/leaderboard.html", context)


# --- helpers -----------------------------------------------------------------------------------


def _request_run(request: HttpRequest, form: EvalRunForm) -> EvalRun:
    """Keep an uploaded task file (checked first), then ask for the run; a refused run takes
    its upload with it."""
    kwargs = form.request_kwargs()
    uploaded = form.cleaned_data.get("task_file")
    if uploaded is None:
        return services.eval_run_request(requested_by=request.user, **kwargs)
    path = services.eval_task_file_store(uploaded=uploaded, suite=kwargs["suite"])
    kwargs["params"]["task_path"] = str(path)
    try:
        return services.eval_run_request(requested_by=request.user, **kwargs)
    except ValidationError:
        services.eval_task_file_discard(path)
        raise


def _evaluations_url(checkpoint: Checkpoint) -> str:
    return reverse("modeling:checkpoint", args=[checkpoint.pk]) + "#evaluations"


def _recent_runs() -> dict:
    runs = selectors.runs_recent()
    return {"runs": runs, "any_active": any(run.is_active for run in runs)}


def _definition(run: EvalRun) -> str:
    return SUITE_DEFINITIONS.get(run.suite, "")


# --- live arena battles ------------------------------------------------------------------------

BATTLING = (Role.ANNOTATOR, Role.ADMIN)


@require_GET
@role_required(*BATTLING)
def arena(request: HttpRequest) -> HttpResponse:
    """The live arenas this person may battle in; admins also set them up from here."""
    setup = None
    if has_role(request.user, Role.ADMIN):
        setup = Project.objects.select_related("live_arena").order_by("name")
    context = {"arenas": selectors.arenas_open_for(user=request.user), "setup": setup}
    return render(request, "evals/arena.html", context)


@require_http_methods(["GET", "POST"])
@role_required(*BATTLING)
def battle_new(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    arena_settings = selectors.arena_of(project=project)
    if request.method == "GET":
        picked = selectors.battle_prompt_pick(project=project) if "pick" in request.GET else ""
        form = BattleStartForm(initial={"prompt": picked})
        context = {"project": project, "arena": arena_settings, "form": form}
        return render(request, "evals/battle_new.html", context)
    form = BattleStartForm(request.POST)
    if form.is_valid():
        try:
            battle = services.battle_start(
                project=project, annotator=request.user, prompt=form.cleaned_data["prompt"]
            )
        except ValidationError as exc:  # the filter's refusal, a closed arena: said in place
            add_service_errors(form, exc)
        else:
            return redirect("evals:battle", battle_id=battle.pk)
    context = {"project": project, "arena": arena_settings, "form": form}
    return render(request, "evals/battle_new.html", context, status=422)


@require_GET
@role_required(*BATTLING)
def battle(request: HttpRequest, battle_id: int) -> HttpResponse:
    found = _own_battle(request, battle_id)
    template = "evals/battle.html#battle-replies" if request.htmx else "evals/battle.html"
    return render(request, template, _battle_context(found, BattleVoteForm()))


@require_POST
@role_required(*BATTLING)
def battle_vote(request: HttpRequest, battle_id: int) -> HttpResponse:
    found = _own_battle(request, battle_id)
    form = BattleVoteForm(request.POST)
    if form.is_valid():
        try:
            services.battle_vote(battle_id=found.pk, annotator=request.user, **form.cleaned_data)
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            return redirect("evals:battle", battle_id=found.pk)
    found = _own_battle(request, battle_id)
    return render(request, "evals/battle.html", _battle_context(found, form), status=422)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def arena_settings(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    current = selectors.arena_of(project=project)
    if request.method == "GET":
        form = LiveArenaForm.for_arena(current)
        return render(request, "evals/arena_settings.html", {"project": project, "form": form})
    form = LiveArenaForm(request.POST)
    if form.is_valid():
        try:
            services.live_arena_update(
                project=project, updated_by=request.user, **form.update_kwargs()
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Live battles of {project.name} saved.")
            return redirect("evals:arena")
    context = {"project": project, "form": form}
    return render(request, "evals/arena_settings.html", context, status=422)


def _own_battle(request: HttpRequest, battle_id: int):
    found = selectors.battle_of(battle_id=battle_id, user=request.user)
    if found is None:  # someone else's or missing: the same answer
        raise Http404("No such battle of yours.")
    return found


def _battle_context(found, form: BattleVoteForm) -> dict:
    project = found.arena.project
    return {
        "battle": found,
        "state": selectors.battle_state(found),
        "project": project,
        "form": form,
        "strength_optional": project.strength_optional,
        "can_see_leaderboard": has_role(found.annotator, *VIEWING),
    }
