"""Projects and the queue: lease a task, submit a judgement, skip."""

from typing import Literal

from django.http import Http404
from ninja import Router

from core.api import ERRORS
from core.idempotency import idempotent
from core.roles import Role, has_role
from feedback import selectors, services
from feedback.models import Assignment, Project

from .access import _project_for, _require
from .schemas import (
    AIVoteOut,
    AssignmentOut,
    DemonstrationIn,
    DraftOut,
    JudgementOut,
    PairwiseIn,
    ProjectOut,
    RankingIn,
    SkipIn,
    TaskItemOut,
    _judgement_out,
)

router = Router()


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
    draft = view.draft
    return AssignmentOut(
        id=assignment.pk,
        status=assignment.status,
        expires_at=assignment.expires_at,
        item=TaskItemOut.build(view.item, view.completions),
        draft=DraftOut(id=draft.pk, text=draft.text, model_name=draft.model_name)
        if draft
        else None,
        ai_votes=[
            AIVoteOut(
                voter=vote.voter,
                choice=vote.choice,
                preferred_completion_id=vote.preferred_id,
                strength=vote.strength,
            )
            for vote in view.ai_votes
        ],
    )


def _own_assignment(request, assignment_id: int) -> Assignment:
    """The caller's assignment with its item, project, prompt and canonical A, read once: the
    submit services take it as `loaded` rather than reading it again."""
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
@idempotent
def submit_demonstration(request, assignment_id: int, body: DemonstrationIn):
    assignment = _own_assignment(request, assignment_id)
    return _judgement_out(
        services.demonstration_submit(
            assignment_id=assignment_id, annotator=request.user, loaded=assignment, **body.dict()
        )
    )


@router.post(
    "/assignments/{assignment_id}/pairwise",
    response={200: JudgementOut, **ERRORS},
    tags=["annotation"],
)
@idempotent
def submit_pairwise(request, assignment_id: int, body: PairwiseIn):
    assignment = _own_assignment(request, assignment_id)
    judgement = services.pairwise_submit(
        assignment_id=assignment_id, annotator=request.user, loaded=assignment, **body.dict()
    )
    out = _judgement_out(judgement)
    if assignment.item.project.reveal_models:  # an arena: the vote is in, so names may be told
        out.revealed_models = selectors.pair_model_names(item=assignment.item)
    return out


@router.post(
    "/assignments/{assignment_id}/ranking",
    response={200: JudgementOut, **ERRORS},
    tags=["annotation"],
)
@idempotent
def submit_ranking(request, assignment_id: int, body: RankingIn):
    assignment = _own_assignment(request, assignment_id)
    return _judgement_out(
        services.ranking_submit(
            assignment_id=assignment_id, annotator=request.user, loaded=assignment, **body.dict()
        )
    )


@router.post(
    "/assignments/{assignment_id}/skip", response={204: None, **ERRORS}, tags=["annotation"]
)
@idempotent
def skip(request, assignment_id: int, body: SkipIn):
    _own_assignment(request, assignment_id)
    services.assignment_skip(
        assignment_id=assignment_id, annotator=request.user, reason=body.reason
    )
    return 204, None
