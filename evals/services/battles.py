"""Live arena battles, as Chatbot Arena runs them.

    live_arena_update(project=..., ...)          # an admin picks the checkpoints and the filter
    battle_start(project=..., annotator=..., prompt="...")  # two anonymous replies, queued
    battle_vote(battle_id=..., annotator=..., choice="a")   # the vote, then the names

An annotator types a prompt; two of the arena's checkpoints, drawn at random and put on random
sides, answer it. Each reply is a playground turn (modeling.services.playground): a GPU worker
samples it in its own process and writes the text into the row as it grows, and the battle page
polls the rows. The vote turns the battle into an ordinary pairwise item of the project (reply
A at position 0, each completion named after its checkpoint) with the voter's judgement, so the
leaderboard, the exports and the snapshots count it as they count any other. Names are shown
only after the vote, in the page and in the API alike.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.errors import NotYourTask, TaskUnavailable
from core.roles import Role, has_role
from core.text import clean_text
from evals.models import Battle, LiveArena
from feedback import services as feedback_services
from feedback.models import CompletionSource, Project, Prompt, TaskKind
from feedback.services.projects import prompt_hash
from feedback.services.queue import ensure_can_annotate
from jobs.models import Status
from modeling.models import Checkpoint, CheckpointKind
from modeling.sampling import SamplingParams
from modeling.services.playground import PLAYGROUND_MAX_NEW_TOKENS, reply_request

MAX_BLOCKED_TERMS = 200
MAX_TERM_CHARS = 100
MAX_PROMPT_CHARS = 20_000  # the most an admin may allow; each arena sets its own, lower limit


def live_arena_update(
    *,
    project: Project,
    updated_by: AbstractBaseUser,
    checkpoints: Iterable[Checkpoint],
    blocked_terms: Iterable[str] = (),
    is_open: bool = True,
    max_prompt_chars: int = 2000,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
) -> LiveArena:
    """Create or change a project's live battles. Every error is named by its form field."""
    if not has_role(updated_by, Role.ADMIN):
        raise NotYourTask("Only admins can set up live battles.")
    checkpoints = list(checkpoints)
    errors: dict[str, list[str]] = {}
    if TaskKind.PAIRWISE not in project.task_kinds:
        errors["__all__"] = [
            "A battle's vote is stored as a comparison: let this project collect pairwise tasks "
            "first (project settings)."
        ]
    replying = [c for c in checkpoints if c.kind == CheckpointKind.POLICY]
    if len(replying) != len(checkpoints):
        others = ", ".join(c.name for c in checkpoints if c.kind != CheckpointKind.POLICY)
        errors["checkpoints"] = [f"Only policy checkpoints can reply; not {others}."]
    elif is_open and len(checkpoints) < 2:
        errors["checkpoints"] = ["A battle needs two models: choose at least two checkpoints."]
    try:
        terms = _clean_terms(blocked_terms)
    except ValidationError as exc:
        errors["blocked_terms"] = exc.messages
    if not 1 <= max_prompt_chars <= MAX_PROMPT_CHARS:
        errors["max_prompt_chars"] = [f"Between 1 and {MAX_PROMPT_CHARS} characters."]
    try:
        SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature).clean(
            max_new_tokens=PLAYGROUND_MAX_NEW_TOKENS
        )
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        arena, _ = LiveArena.objects.update_or_create(
            project=project,
            defaults={
                "is_open": is_open,
                "blocked_terms": terms,
                "max_prompt_chars": max_prompt_chars,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
            },
        )
        arena.checkpoints.set(checkpoints)
    return arena


def _clean_terms(terms: Iterable[str]) -> list[str]:
    cleaned: list[str] = []
    for term in terms:
        term = " ".join(str(term).split())
        if not term or term.casefold() in (t.casefold() for t in cleaned):
            continue
        if len(term) > MAX_TERM_CHARS:
            raise ValidationError(f"A blocked term is at most {MAX_TERM_CHARS} characters.")
        cleaned.append(term)
    if len(cleaned) > MAX_BLOCKED_TERMS:
        raise ValidationError(f"At most {MAX_BLOCKED_TERMS} blocked terms.")
    return cleaned


def blocked_term_in(text: str, terms: Iterable[str]) -> str | None:
    """The first of `terms` that `text` holds as whole words, in any case; None if none."""
    for term in terms:
        words = r"\s+".join(re.escape(word) for word in term.split())
        if re.search(rf"(?<!\w){words}(?!\w)", text, flags=re.IGNORECASE):
            return term
    return None


def battle_start(*, project: Project, annotator: AbstractBaseUser, prompt: str) -> Battle:
    """Check the prompt against the arena's filter, draw two checkpoints and queue both
    replies. Nothing is generated for a prompt the filter refuses."""
    ensure_can_annotate(project, annotator)
    arena = LiveArena.objects.filter(project=project).first()
    if arena is None or not arena.is_open:
        raise TaskUnavailable("This project has no live battles open.", code="closed")
    prompt = prompt.strip()
    if not prompt:
        raise ValidationError({"prompt": "Type a prompt for the two models."})
    prompt = clean_text(prompt, field="prompt")
    if len(prompt) > arena.max_prompt_chars:
        raise ValidationError(
            {
                "prompt": f"A prompt here is at most {arena.max_prompt_chars} characters "
                f"(this one has {len(prompt)})."
            }
        )
    blocked = blocked_term_in(prompt, arena.blocked_terms)
    if blocked is not None:
        raise ValidationError(
            {
                "prompt": f"This project does not accept prompts about “{blocked}”: "
                "nothing was generated. Rephrase it or ask another."
            }
        )
    contenders = list(arena.checkpoints.filter(kind=CheckpointKind.POLICY))
    if len(contenders) < 2:
        raise TaskUnavailable(
            "This arena has fewer than two models to draw: ask an admin to add some.",
            code="closed",
        )
    draw = random.SystemRandom()
    model_a, model_b = draw.sample(contenders, 2)  # random models, on random sides
    messages = [{"role": "user", "content": prompt}]
    with transaction.atomic():
        _ensure_no_battle_in_flight(annotator)
        replies = [
            reply_request(
                checkpoint=model,
                messages=messages,
                sampling=SamplingParams(
                    max_new_tokens=arena.max_new_tokens,
                    temperature=arena.temperature,
                    top_p=1.0,
                    seed=draw.randrange(2**31),
                ),
                requested_by=annotator,
            )
            for model in (model_a, model_b)
        ]
        return Battle.objects.create(
            arena=arena, annotator=annotator, prompt=prompt, reply_a=replies[0], reply_b=replies[1]
        )


def _ensure_no_battle_in_flight(annotator: AbstractBaseUser) -> None:
    """One battle at a time per annotator while its replies are still being sampled: each
    battle takes two GPU replies, and without a limit one person pressing Start could fill the
    workers' queue for everyone. A finished battle need not be voted on first. The annotator's
    row is locked so that two tabs starting at once are counted one after the other."""
    list(get_user_model().objects.select_for_update().filter(pk=annotator.pk).values_list("pk"))
    busy = (Status.QUEUED, Status.RUNNING)
    if (
        Battle.objects.filter(annotator=annotator)
        .filter(Q(reply_a__status__in=busy) | Q(reply_b__status__in=busy))
        .exists()
    ):
        raise TaskUnavailable(
            "Your last battle is still being answered: start the next once both of its replies "
            "are in (you need not vote on it first).",
            code="busy",
        )


def battle_vote(
    *,
    battle_id: int,
    annotator: AbstractBaseUser,
    choice: str,
    strength: str = "",
    seconds_spent: float | None = None,
) -> Battle:
    """Store the vote as a pairwise item with its judgement; a second vote (a double click, a
    retried request) returns the battle as the first left it."""
    with transaction.atomic():
        battle = (
            Battle.objects.select_for_update(of=("self",))
            .select_related("arena__project", "reply_a__checkpoint", "reply_b__checkpoint")
            .filter(pk=battle_id)
            .first()
        )
        if battle is None or battle.annotator_id != annotator.pk:
            raise NotYourTask("This battle is not yours.")
        if battle.is_voted:
            return battle
        if not battle.is_answered:
            raise TaskUnavailable(
                "Both models must finish their replies before you vote.", code="not_ready"
            )
        project = battle.arena.project
        ensure_can_annotate(project, annotator)
        prompt = _prompt_for(project, battle.prompt)
        completions = [
            feedback_services.completion_create(
                prompt=prompt,
                text=reply.reply,
                model_name=reply.checkpoint.display_name,
                source=CompletionSource.CHECKPOINT,
                generation_params={
                    "checkpoint_id": reply.checkpoint_id,
                    "checkpoint_name": reply.checkpoint.display_name,
                    "battle": battle.pk,
                    **reply.sampling,
                },
            )
            for reply in battle.replies
        ]
        item = feedback_services.item_create(
            project=project, kind=TaskKind.PAIRWISE, prompt=prompt, completions=completions
        )
        item.metadata = {"live_battle": battle.pk}
        item.save(update_fields=["metadata"])
        feedback_services.pairwise_vote_record(
            item=item,
            annotator=annotator,
            choice=choice,
            strength=strength,
            seconds_spent=seconds_spent,
        )
        battle.item = item
        battle.voted_at = timezone.now()
        battle.save(update_fields=["item", "voted_at"])
    return battle


def _prompt_for(project: Project, text: str) -> Prompt:
    """The project's prompt with this text: battles on the same question share it."""
    system, messages = feedback_services.clean_messages([{"role": "user", "content": text}], "")
    existing = Prompt.objects.filter(project=project, content_hash=prompt_hash(system, messages))
    return existing.first() or feedback_services.prompt_create(
        project=project, messages=messages, source="live battle"
    )
