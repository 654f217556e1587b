"""AI help with labelling: a checkpoint's drafts for demonstrations, a reward model's pre-votes.

    project_drafter_set(project=..., checkpoint=..., set_by=...)   # the project's drafting model
    assist_request(kind="drafts", project=..., requested_by=...)  # queue drafts (GPU worker)
    assist_request(kind="votes", project=..., checkpoint=rm, requested_by=...)  # queue pre-votes
    assist_run_execute(run)    # what the launched process runs: sample or score, then store

Models never write labels around feedback's rules: drafts and votes go through
feedback.services.assist, which keeps drafts per item and files votes as `origin=ai`, apart from
people's work (no overlap slot, no `submitted_count`, out of snapshots unless asked).

An AI vote turns the reward margin m = r(A) − r(B) into a choice and a strength on the
Bradley–Terry reading a reward model is trained under, P(A ≻ B) = σ(m): |m| < 0.1 (P < 0.525)
is a tie; below 1 (P < 0.73) slightly, below 2 (P < 0.88) clearly, else much better.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef

from core.roles import require_admin
from core.text import is_blank, storable_text
from feedback.models import (
    DemonstrationDraft,
    Item,
    PairwiseJudgement,
    Project,
    TaskKind,
)
from feedback.services.assist import ai_vote_submit, draft_store
from jobs.models import Status
from jobs.services import Heartbeat, failure_reason, work_claim, work_enqueue, work_finish
from modeling.models import (
    AIAnnotator,
    AssistKind,
    AssistRun,
    Checkpoint,
    CheckpointKind,
    ProjectDrafter,
)
from modeling.sampling import SamplingParams

logger = logging.getLogger(__name__)

MAX_ITEMS = 5000
# Margins at which a vote says "tie", "slightly" and "clearly" (above: "much"); see above.
TIE_MARGIN, SLIGHT_MARGIN, CLEAR_MARGIN = 0.1, 1.0, 2.0
AI_USERNAME_PREFIX = "ai-"


def model_ref(checkpoint: Checkpoint) -> str:
    """How a draft or a vote names the checkpoint behind it (feedback stores the label)."""
    return f"checkpoint:{checkpoint.pk}"


def project_drafter_set(
    *, project: Project, checkpoint: Checkpoint | None, set_by: AbstractBaseUser | None
) -> ProjectDrafter | None:
    """Name the checkpoint that drafts the project's demonstrations (None: no drafts)."""
    require_admin(set_by, "choose a project's drafting model")
    if checkpoint is None:
        ProjectDrafter.objects.filter(project=project).delete()
        return None
    _check(AssistKind.DRAFTS, project, checkpoint)
    drafter, _ = ProjectDrafter.objects.update_or_create(
        project=project, defaults={"checkpoint": checkpoint, "set_by": set_by}
    )
    return drafter


# What each kind of help needs: the checkpoint's kind and what only it can do, and the task
# kind the project must collect.
_NEEDS = {
    AssistKind.DRAFTS: (
        CheckpointKind.POLICY,
        "only a policy (a model that writes replies) can draft demonstrations",
        TaskKind.DEMONSTRATION,
        "demonstrations",
    ),
    AssistKind.VOTES: (
        CheckpointKind.REWARD,
        "only a reward model can vote on comparisons",
        TaskKind.PAIRWISE,
        "pairwise comparisons",
    ),
}


def _check(kind: str, project: Project, checkpoint: Checkpoint) -> None:
    checkpoint_kind, only, task_kind, tasks = _NEEDS[AssistKind(kind)]
    errors = {}
    if checkpoint.kind != checkpoint_kind:
        errors["checkpoint"] = f"{checkpoint.name} is a {checkpoint.kind} model; {only}."
    if task_kind not in project.task_kinds:
        errors["project"] = f"Project {project.name!r} does not collect {tasks}."
    if errors:
        raise ValidationError(errors)


def assist_request(
    *,
    kind: str,
    project: Project,
    requested_by: AbstractBaseUser | None,
    checkpoint: Checkpoint | None = None,
    max_items: int = 200,
    sampling: SamplingParams | None = None,
) -> AssistRun:
    """Record a run and queue it for a GPU worker. Drafts come from the project's drafting
    checkpoint (project_drafter_set); votes from `checkpoint`, a reward model."""
    require_admin(requested_by, "ask models for labelling help")
    if kind not in AssistKind.values:
        raise ValidationError({"kind": f"Kind is one of {', '.join(AssistKind.values)}."})
    if not 1 <= max_items <= MAX_ITEMS:
        raise ValidationError({"max_items": f"Between 1 and {MAX_ITEMS} items."})
    if kind == AssistKind.DRAFTS:
        drafter = ProjectDrafter.objects.filter(project=project).select_related("checkpoint")
        if checkpoint is None:
            found = drafter.first()
            if found is None:
                raise ValidationError(
                    {"checkpoint": "This project names no drafting model: choose one first."}
                )
            checkpoint = found.checkpoint
        _check(AssistKind.DRAFTS, project, checkpoint)
    else:
        if checkpoint is None:
            raise ValidationError({"checkpoint": "Choose the reward model that votes."})
        _check(AssistKind.VOTES, project, checkpoint)
    sampling = (sampling or SamplingParams()).clean()
    run = AssistRun.objects.create(
        kind=kind,
        project=project,
        checkpoint=checkpoint,
        max_items=max_items,
        sampling=asdict(sampling) if kind == AssistKind.DRAFTS else {},
        requested_by=requested_by,
    )
    work_enqueue(run)
    return run


def assist_run_run(*, run: AssistRun, worker_host: str = "") -> AssistRun:
    """Claim a queued run and do it in this process (tests, the management command); workers
    launch the same work in its own process (modeling.tasks.assist_run)."""
    if not work_claim(AssistRun, pk=run.pk, worker_host=worker_host):
        return AssistRun.objects.get(pk=run.pk)
    with Heartbeat(AssistRun, run.pk):
        return assist_run_execute(run)


def assist_run_execute(run: AssistRun) -> AssistRun:
    """Do a claimed run: what jobs/entrypoint.py runs. The outcome, or the reason there is
    none, is written to the row, never raised."""
    run = AssistRun.objects.select_related("project", "checkpoint").get(pk=run.pk)
    try:
        if run.kind == AssistKind.DRAFTS:
            outcome = drafts_generate(
                project=run.project,
                checkpoint=run.checkpoint,
                max_items=run.max_items,
                sampling=SamplingParams(**run.sampling),
            )
        else:
            outcome = ai_votes_cast(
                project=run.project, checkpoint=run.checkpoint, max_items=run.max_items
            )
    except Exception as exc:
        logger.warning("Assist run %s failed", run.pk, exc_info=True)
        work_finish(AssistRun, pk=run.pk, status=Status.FAILED, error=failure_reason(exc))
    else:
        work_finish(AssistRun, pk=run.pk, status=Status.SUCCEEDED, outcome=outcome)
    return AssistRun.objects.get(pk=run.pk)


def _conversation(item: Item) -> list[dict[str, str]]:
    prompt = item.prompt
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return system + list(prompt.messages)


def drafts_generate(
    *, project: Project, checkpoint: Checkpoint, max_items: int, sampling: SamplingParams
) -> dict[str, int]:
    """A draft from `checkpoint` for each open demonstration item (still short of its
    annotators, not gold) that has none from it yet, oldest first. Empty replies are counted
    and left undrafted: the annotator then sees the usual empty editor."""
    from modeling.ml import generate  # torch: only ever imported where the work runs

    _check(AssistKind.DRAFTS, project, checkpoint)
    ref = model_ref(checkpoint)
    drafted = DemonstrationDraft.objects.filter(item=OuterRef("pk"), model_ref=ref)
    items = list(
        Item.objects.filter(
            project=project,
            kind=TaskKind.DEMONSTRATION,
            is_gold=False,
            submitted_count__lt=project.overlap,
        )
        .exclude(Exists(drafted))
        .select_related("prompt")
        .order_by("id")[:max_items]
    )
    outcome = {"drafted": 0, "skipped_empty": 0}
    if not items:
        return outcome
    texts = generate(
        checkpoint.load_path(),
        [_conversation(item) for item in items],
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        seed=sampling.seed,
    )
    for item, (text,) in zip(items, texts, strict=True):
        text = storable_text(text)
        if is_blank(text):
            outcome["skipped_empty"] += 1
            continue
        draft_store(item=item, text=text, model_name=checkpoint.display_name, model_ref=ref)
        outcome["drafted"] += 1
    logger.info("Drafts by %s for %s: %s", checkpoint, project, outcome)
    return outcome


def ai_annotator_for(checkpoint: Checkpoint) -> AbstractBaseUser:
    """The account `checkpoint` votes as, made once: no role, no usable password, inactive,
    so it can neither log in nor be served tasks, nor be offered as a project member."""
    with transaction.atomic():
        found = AIAnnotator.objects.select_related("user").filter(checkpoint=checkpoint).first()
        if found is not None:
            return found.user
        username = f"{AI_USERNAME_PREFIX}{checkpoint.pk}-{checkpoint.name}"[:150]
        user = get_user_model()(username=username, first_name="AI annotator", is_active=False)
        user.set_unusable_password()
        user.save()
        AIAnnotator.objects.create(checkpoint=checkpoint, user=user)
        return user


def vote_from_margin(margin: float) -> tuple[str, str]:
    """(choice, strength) for the reward margin r(A) − r(B): see the module's docstring."""
    size = abs(margin)
    if size < TIE_MARGIN:
        return "tie", ""
    if size < SLIGHT_MARGIN:
        strength = "slight"
    elif size < CLEAR_MARGIN:
        strength = "clear"
    else:
        strength = "strong"
    return ("a" if margin > 0 else "b"), strength


def ai_votes_cast(*, project: Project, checkpoint: Checkpoint, max_items: int) -> dict[str, int]:
    """`checkpoint` (a reward model) votes on the project's pairwise items it has not voted on,
    oldest first, gold items included so that its gold accuracy reads as a person's."""
    import torch  # only ever imported where the work runs

    from modeling.ml import load_reward_model, load_tokenizer
    from modeling.ml.scoring import reward_scores

    _check(AssistKind.VOTES, project, checkpoint)
    voter = ai_annotator_for(checkpoint)
    voted = PairwiseJudgement.objects.filter(item=OuterRef("pk"), annotator=voter)
    items = list(
        Item.objects.filter(project=project, kind=TaskKind.PAIRWISE)
        .exclude(Exists(voted))
        .select_related("prompt", "project")
        .prefetch_related("item_completions__completion")
        .order_by("id")[:max_items]
    )
    outcome = {"voted": 0, "ties": 0}
    if not items:
        return outcome
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_reward_model(checkpoint.load_path(), device=device)
    tokenizer = load_tokenizer(checkpoint.tokenizer_load_path())
    rows = []
    for item in items:
        conversation = _conversation(item)
        for link in item.item_completions.all():  # by position: A, then B
            rows.append([*conversation, {"role": "assistant", "content": link.completion.text}])
    scores = reward_scores(model, tokenizer, rows)
    ref = model_ref(checkpoint)
    for n, item in enumerate(items):
        score_a, score_b = scores[2 * n], scores[2 * n + 1]
        choice, strength = vote_from_margin(score_a - score_b)
        ai_vote_submit(
            item=item,
            voter=voter,
            choice=choice,
            strength=strength,
            rationale=f"Reward {score_a:.4f} for A, {score_b:.4f} for B "
            f"(margin {score_a - score_b:+.4f}).",
            model_ref=ref,
        )
        outcome["voted"] += 1
        outcome["ties"] += choice == "tie"
    logger.info("AI votes by %s on %s: %s", checkpoint, project, outcome)
    return outcome
