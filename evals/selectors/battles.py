"""Reads for live arena battles (evals.services.battles): which arenas a person may battle in,
their own battles, and what a battle may say before and after its vote."""

from __future__ import annotations

import random
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from evals.models import Battle, LiveArena
from feedback.models import PairwiseJudgement, Project, Prompt
from feedback.selectors import projects_annotatable
from jobs.models import Status
from modeling.models import PlaygroundTurn


def arenas_open_for(*, user: AbstractBaseUser) -> QuerySet[LiveArena]:
    """Open live arenas in projects this person may annotate."""
    return (
        LiveArena.objects.filter(is_open=True, project__in=projects_annotatable(user=user))
        .select_related("project")
        .order_by("project__name")
    )


def arena_of(*, project: Project) -> LiveArena | None:
    return LiveArena.objects.filter(project=project).first()


def battle_of(*, battle_id: int, user: AbstractBaseUser) -> Battle | None:
    """The person's own battle with its replies (fresh: a page polls them while they grow)."""
    return (
        Battle.objects.select_related(
            "arena__project", "reply_a__checkpoint", "reply_b__checkpoint", "item"
        )
        .filter(pk=battle_id, annotator_id=user.pk)
        .first()
    )


def battle_prompt_pick(*, project: Project, seed: int | None = None) -> str:
    """A one-turn prompt of the project's to battle on, at random ("" when it has none)."""
    ids = list(Prompt.objects.filter(project=project, system="").values_list("pk", flat=True))
    picked = random.Random(seed).sample(ids, min(len(ids), 20))
    found = Prompt.objects.in_bulk(picked)  # one query for the 20, not one each
    for pk in picked:
        messages = found[pk].messages
        if len(messages) == 1 and messages[0]["role"] == "user":
            return messages[0]["content"]
    return ""


def battle_state(battle: Battle) -> dict[str, Any]:
    """What the battle says now. Model names only once the vote is in: before, the replies are
    "A" and "B" and nothing else about them (not even which checkpoint's row they are)."""
    return {
        "id": battle.pk,
        "project_id": battle.arena.project_id,
        "prompt": battle.prompt,
        "ready": battle.is_answered,
        "failed": battle.has_failed,
        "voted": battle.is_voted,
        "item_id": battle.item_id,
        "choice": _choice(battle),
        "replies": [
            _reply_state(side, reply, reveal=battle.is_voted)
            for side, reply in (("a", battle.reply_a), ("b", battle.reply_b))
        ],
    }


def _reply_state(side: str, reply: PlaygroundTurn, *, reveal: bool) -> dict[str, Any]:
    failed = reply.is_finished and reply.status != Status.SUCCEEDED
    return {
        "side": side,
        "status": reply.status,
        "text": reply.reply,
        # A worker's error may name the checkpoint's path: before the vote, only that it failed.
        "error": (reply.error if reveal else "This model could not reply.") if failed else "",
        "model": reply.checkpoint.display_name if reveal else None,
        "checkpoint_id": reply.checkpoint_id if reveal else None,
    }


def _choice(battle: Battle) -> str | None:
    if battle.item_id is None:
        return None
    votes = PairwiseJudgement.objects.filter(
        item_id=battle.item_id, annotator_id=battle.annotator_id
    )
    return votes.values_list("choice", flat=True).first()
