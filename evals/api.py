"""API endpoints for evaluation runs, results and the arena leaderboard, with the same role rules
as the dashboard: admins and reviewers read, only admins start runs (others get 403, anonymous
callers 401).

    GET  /api/evals/suites                        suites, their tasks and what each metric means
    GET  /api/evals/runs                          runs with their results (?checkpoint_id=,
                                                  ?suite=, ?status=), newest first
    POST /api/evals/runs                          start one suite on one checkpoint (admins)
    GET  /api/evals/runs/{id}                     one run: results and the samples it stored
    POST /api/evals/runs/{id}/rerun               the same inputs again, as a new run (admins)
    GET  /api/evals/checkpoints/{id}/results      the latest succeeded value of every metric
    GET  /api/projects/{id}/leaderboard           the arena: Bradley-Terry ratings, 95% CIs,
                                                  ranks, vote counts, online Elo
    POST /api/projects/{id}/battles               a live battle on your prompt (annotators)
    GET  /api/battles/{id}                        its replies as they are written; names
                                                  only after your vote
    POST /api/battles/{id}/vote                   your vote, answered with both names

A refused run (unknown suite or checkpoint, wrong kind of model, unknown params, ...) is a 4xx
whose details name each field, and neither writes a row nor queues a message.
"""

import math
from datetime import datetime
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.pagination import paginate

from core.api import ERRORS, Pagination, RowId, lookup  # one error shape for the whole API
from core.errors import PermissionDenied
from core.idempotency import idempotent
from core.roles import Role, has_role
from evals import selectors, services
from evals.models import EvalRun, RunStatus, Suite
from evals.services.runs import SUITE_PARAMS
from feedback.models import DatasetSnapshot, Project
from modeling.models import Checkpoint

router = Router(tags=["evaluation"])

VIEWING = (Role.ADMIN, Role.REVIEWER)
MAX_SAMPLES = 500


def _require(request: HttpRequest, *roles: Role) -> None:
    if not has_role(request.user, *roles):
        raise PermissionDenied("Your role does not allow this.")


# --- schemas -----------------------------------------------------------------------------------


class EvalResultOut(Schema):
    metric: str
    value: float
    stderr: float | None
    ci_low: float | None = Field(description="95% interval, lower end.")
    ci_high: float | None = Field(description="95% interval, upper end.")
    n: int | None = Field(description="Items the value rests on.")


class EvalRunOut(Schema):
    id: int
    checkpoint_id: int
    checkpoint: str
    suite: str
    task: str
    params: dict[str, Any]
    reference_id: int | None
    judge_id: int | None
    snapshot_id: int | None
    status: str
    host: str
    error: str
    summary: dict[str, Any]
    created_by: str | None
    triggered_by_job_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[EvalResultOut]

    @staticmethod
    def resolve_checkpoint(run: EvalRun) -> str:
        return run.checkpoint.name

    @staticmethod
    def resolve_host(run: EvalRun) -> str:
        # The API's name since the first version; the column is the shared lifecycle's.
        return run.worker_host

    @staticmethod
    def resolve_created_by(run: EvalRun) -> str | None:
        return run.created_by.get_username() if run.created_by else None

    @staticmethod
    def resolve_results(run: EvalRun) -> list:
        return list(run.results.all())


class EvalSampleOut(Schema):
    position: int
    prompt: str
    output: str
    target: str
    correct: bool | None
    reference_output: str


class EvalRunDetailOut(EvalRunOut):
    definition: str = Field(description="What the suite's metrics mean.")
    samples: list[EvalSampleOut] = Field(
        description=f"What the model said (generative suites), the first {MAX_SAMPLES}."
    )

    @staticmethod
    def resolve_definition(run: EvalRun) -> str:
        return selectors.SUITE_DEFINITIONS.get(run.suite, "")

    @staticmethod
    def resolve_samples(run: EvalRun) -> list:
        return selectors.run_samples(run=run, limit=MAX_SAMPLES)


class EvalRunIn(Schema):
    checkpoint_id: int
    suite: Suite
    task: str = Field(
        "",
        max_length=200,
        description="A shipped task, an lm-eval task, or empty for the suite's own data "
        "(GET /api/evals/suites lists them).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="limit, batch_size, max_new_tokens, temperature, top_p, seed, stride, "
        "task_path, include_path, num_fewshot (by suite: GET /api/evals/suites); unknown keys "
        "are refused.",
    )
    reference_id: int | None = Field(None, description="Win rate: the policy to beat.")
    judge_id: int | None = Field(None, description="Win rate: the reward model that judges.")
    snapshot_id: int | None = Field(None, description="Reward accuracy: a preference snapshot.")


class EvalSuiteOut(Schema):
    suite: str
    label: str
    tasks: list[str] = Field(description="Tasks it runs offline; lm_eval also takes any task.")
    params: list[str]
    definition: str


class LatestResultOut(EvalResultOut):
    suite: str
    task: str
    run_id: int
    finished_at: datetime | None
    lower_is_better: bool


class CheckpointResultsOut(Schema):
    checkpoint_id: int
    checkpoint: str
    kind: str
    results: list[LatestResultOut]


class LeaderboardRowOut(Schema):
    model: str
    checkpoint_id: int | None
    rating: float | None = Field(description="400·θ + 1000, the reference at 1000.")
    low: float | None = Field(description="Bootstrap 95% interval, lower end.")
    high: float | None
    rank: int = Field(description="1 + models whose lower bound is above this upper bound.")
    votes: int
    wins: int
    losses: int
    ties: int
    elo: float | None = Field(description="Online Elo (K=4, in vote order), for comparison.")
    is_reference: bool
    finite: bool = Field(description="False when the maximum-likelihood rating is unbounded.")
    enough: bool = Field(
        description="False: too few votes (or no finite rating) for the rating to mean much."
    )
    style_rating: float | None = Field(
        description="Bradley-Terry with style covariates (reply length, headers, lists, bold), "
        "lmarena's style control: the rating with style held equal."
    )
    style_low: float | None
    style_high: float | None
    vs_reference_battles: int = Field(description="Direct battles with the reference.")
    vs_reference_win_rate: float | None = Field(
        description="Share of those battles won (a tie half), when at least MIN_ARENA_VOTES."
    )
    vs_reference_lc_win_rate: float | None = Field(
        description="AlpacaEval 2's length-controlled win rate against the reference: the "
        "logistic regression of the outcome on tanh(length difference / its sd), at equal length."
    )
    vs_reference_low: float | None = Field(description="Its 95% bootstrap interval.")
    vs_reference_high: float | None
    group: int = Field(
        description="Models linked by votes share a scale; group 0 holds the reference. Other "
        "groups never met it and are anchored on their own reference: do not compare across."
    )


class LeaderboardOut(Schema):
    project_id: int
    reference: str | None
    unknown_reference: str = Field(description="A reference asked for that has no votes.")
    battles: int
    rounds: int
    definition: str
    rows: list[LeaderboardRowOut]


# --- suites and runs ---------------------------------------------------------------------------


@router.get("/evals/suites", response={200: list[EvalSuiteOut], **ERRORS})
def list_suites(request):
    _require(request, *VIEWING)
    return [
        EvalSuiteOut(
            suite=suite.value,
            label=suite.label,
            tasks=services.suite_tasks(suite),
            params=sorted(SUITE_PARAMS[suite]),
            definition=selectors.SUITE_DEFINITIONS[suite],
        )
        for suite in Suite
    ]


@router.get("/evals/runs", response={200: list[EvalRunOut], **ERRORS})
@paginate(Pagination)
def list_runs(
    request,
    checkpoint_id: RowId | None = None,
    suite: Suite | None = None,
    status: RunStatus | None = None,
):
    _require(request, *VIEWING)
    return selectors.eval_runs(checkpoint_id=checkpoint_id, suite=suite, status=status)


def _run_detail(run_id: int) -> EvalRun:
    try:
        return selectors.run_detail(run_id=run_id)
    except EvalRun.DoesNotExist:
        raise Http404 from None


@router.get("/evals/runs/{run_id}", response={200: EvalRunDetailOut, **ERRORS})
def get_run(request, run_id: int):
    _require(request, *VIEWING)
    return _run_detail(run_id)


@router.post(
    "/evals/runs",
    response={202: EvalRunDetailOut, **ERRORS},
    summary="Start an evaluation run; it is queued for a GPU worker when the request commits",
)
@idempotent
def start_run(request, body: EvalRunIn):
    _require(request, Role.ADMIN)
    missing: dict[str, str] = {}
    checkpoint = lookup(Checkpoint, body.checkpoint_id, "checkpoint_id", missing)
    reference = lookup(Checkpoint, body.reference_id, "reference_id", missing)
    judge = lookup(Checkpoint, body.judge_id, "judge_id", missing)
    snapshot = lookup(DatasetSnapshot, body.snapshot_id, "snapshot_id", missing)
    if missing:
        raise ValidationError(missing)
    run = services.eval_run_request(
        checkpoint=checkpoint,
        suite=body.suite,
        task=body.task,
        params=body.params,
        reference=reference,
        judge=judge,
        snapshot=snapshot,
        requested_by=request.user,
    )
    return Status(202, _run_detail(run.pk))


@router.post(
    "/evals/runs/{run_id}/rerun",
    response={202: EvalRunDetailOut, **ERRORS},
    summary="Run again with the same inputs; the old run and its results stay as history",
)
@idempotent
def rerun(request, run_id: int):
    _require(request, Role.ADMIN)
    run = get_object_or_404(EvalRun, pk=run_id)
    again = services.eval_run_rerun(run=run, requested_by=request.user)
    return Status(202, _run_detail(again.pk))


# --- results and the arena ---------------------------------------------------------------------


@router.get(
    "/evals/checkpoints/{checkpoint_id}/results",
    response={200: CheckpointResultsOut, **ERRORS},
    summary="The latest succeeded value of every (suite, task, metric) of one checkpoint",
)
def checkpoint_results(request, checkpoint_id: int):
    _require(request, *VIEWING)
    checkpoint = get_object_or_404(Checkpoint, pk=checkpoint_id)
    results = [
        LatestResultOut(
            suite=column.suite,
            task=column.task,
            metric=column.metric,
            value=cell.value,
            stderr=cell.stderr,
            ci_low=cell.low,
            ci_high=cell.high,
            n=cell.n,
            run_id=cell.run_id,
            finished_at=cell.finished_at,
            lower_is_better=column.lower_is_better,
        )
        for column, cell in selectors.checkpoint_metrics(checkpoint=checkpoint)
    ]
    return CheckpointResultsOut(
        checkpoint_id=checkpoint.pk,
        checkpoint=checkpoint.name,
        kind=checkpoint.kind,
        results=results,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity


@router.get(
    "/projects/{project_id}/leaderboard",
    response={200: LeaderboardOut, **ERRORS},
    summary="Arena leaderboard over the project's human votes, best first",
)
def leaderboard(
    request,
    project_id: int,
    reference: str = "",
    simulated: bool = False,
):
    """reference: the model rated 1000 (default: the first base checkpoint among the models);
    simulated: count simulated annotators' votes too (dry runs of the loop)."""
    _require(request, *VIEWING)
    project = get_object_or_404(Project, pk=project_id)
    board = selectors.arena_leaderboard(
        project=project, reference=reference or None, include_simulated=simulated
    )
    rows = [
        LeaderboardRowOut(
            **{key: row[key] for key in ("model", "checkpoint_id", "rank", "votes", "wins")},
            **{key: row[key] for key in ("losses", "ties", "is_reference", "finite")},
            **{key: row[key] for key in ("enough", "group")},
            **{key: _finite(row[key]) for key in ("rating", "low", "high", "elo")},
            **{key: _finite(row[key]) for key in ("style_rating", "style_low", "style_high")},
            **{key: row[key] for key in row if key.startswith("vs_reference_")},
        )
        for row in board.rows
    ]
    return LeaderboardOut(
        project_id=project.pk,
        reference=board.reference,
        unknown_reference=board.unknown_reference,
        battles=board.battles,
        rounds=selectors.ARENA_ROUNDS,
        definition=board.definition,
        rows=rows,
    )


# --- live arena battles ------------------------------------------------------------------------

BATTLING = (Role.ANNOTATOR, Role.ADMIN)


class BattleIn(Schema):
    prompt: str = Field(description="What the two models are asked.")


class BattleVoteIn(Schema):
    choice: Literal["a", "b", "tie", "both_bad"] = Field(
        description="a: model A's reply (replies[0]) is better; b: model B's."
    )
    strength: Literal["", "slight", "clear", "strong"] = ""
    seconds_spent: float | None = None


class BattleReplyOut(Schema):
    side: str
    status: str = Field(description="queued, running (text is the reply so far), succeeded...")
    text: str
    error: str
    model: str | None = Field(description="The checkpoint's name: null until you have voted.")
    checkpoint_id: int | None = Field(description="null until you have voted.")


class BattleOut(Schema):
    id: int
    project_id: int
    prompt: str
    ready: bool = Field(description="Both replies are written: you may vote.")
    failed: bool = Field(description="A model could not reply: this battle cannot be voted on.")
    voted: bool
    item_id: int | None = Field(description="The pairwise item the vote was stored as.")
    choice: str | None
    replies: list[BattleReplyOut]


def _own_battle(request: HttpRequest, battle_id: int):
    found = selectors.battle_of(battle_id=battle_id, user=request.user)
    if found is None:
        raise Http404
    return found


@router.post(
    "/projects/{project_id}/battles",
    response={201: BattleOut, **ERRORS},
    tags=["arena"],
    summary="Start a live battle: two anonymous models answer your prompt",
)
@idempotent
def battle_start(request, project_id: RowId, body: BattleIn):
    """Poll GET /api/battles/{id} for the replies as they are written; vote once `ready`."""
    _require(request, *BATTLING)
    project = get_object_or_404(Project, pk=project_id)
    started = services.battle_start(project=project, annotator=request.user, prompt=body.prompt)
    return Status(201, selectors.battle_state(_own_battle(request, started.pk)))


@router.get("/battles/{battle_id}", response={200: BattleOut, **ERRORS}, tags=["arena"])
def battle_get(request, battle_id: RowId):
    """One of your battles. Model names stay null until your vote is in."""
    _require(request, *BATTLING)
    return selectors.battle_state(_own_battle(request, battle_id))


@router.post("/battles/{battle_id}/vote", response={200: BattleOut, **ERRORS}, tags=["arena"])
@idempotent
def battle_vote(request, battle_id: RowId, body: BattleVoteIn):
    """Your vote; the answer names both models. Voting again returns the first vote's battle."""
    _require(request, *BATTLING)
    _own_battle(request, battle_id)
    services.battle_vote(battle_id=battle_id, annotator=request.user, **body.dict())
    return selectors.battle_state(_own_battle(request, battle_id))
