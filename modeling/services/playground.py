"""The checkpoint page's playground: type a message, read the checkpoint's reply.

    playground_turn_request(...)   # checks the input, records a PlaygroundTurn, queues it
    playground_turn_execute(turn)  # what the launched process runs: sample the reply, store it

The web process never loads a model: modeling.tasks.playground_reply claims the turn on a GPU
worker and launches playground_turn_execute in its own process (jobs.backends), like training
and evaluation, and the page polls the turn until its reply is there. A conversation goes on by
asking with the previous turn: the new turn carries everything said so far.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from core.roles import Role, has_role
from core.text import clean_text, storable_text
from jobs.models import Status
from jobs.services import failure_reason, work_enqueue, work_finish
from modeling.models import Checkpoint, CheckpointKind, PlaygroundTurn
from modeling.sampling import SamplingParams

logger = logging.getLogger(__name__)

# Who may see a checkpoint's page, and so use its playground.
PLAYGROUND_ROLES = (Role.REVIEWER, Role.ADMIN)
# A playground reply is read by a person waiting for it: a page or two, not a novel.
PLAYGROUND_MAX_NEW_TOKENS = 1024
# User messages in one conversation; past this, start a new one (each turn re-reads them all).
PLAYGROUND_MAX_USER_TURNS = 20


def playground_turn_request(
    *,
    checkpoint: Checkpoint,
    prompt: str,
    system: str = "",
    sampling: SamplingParams,
    previous: PlaygroundTurn | None = None,
    requested_by: AbstractBaseUser,
) -> PlaygroundTurn:
    """Record a turn and queue it for a GPU worker. With `previous` (the requester's own turn
    on this checkpoint) the conversation goes on: after its reply if it has one, or in its place
    if it failed (the same question asked again, with other settings, say)."""
    if not has_role(requested_by, *PLAYGROUND_ROLES):
        raise PermissionDenied("Only admins and reviewers can use the playground.")
    errors: dict[str, list[str]] = {}
    if not prompt.strip():
        errors["prompt"] = ["Type a message for the model."]
    for field, text in (("prompt", prompt), ("system", system)):
        try:
            clean_text(text, field=field, allow_blank=True)  # no NUL, not over the limit
        except ValidationError as exc:
            errors.update(exc.message_dict)
    try:
        sampling.clean(max_new_tokens=PLAYGROUND_MAX_NEW_TOKENS)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if checkpoint.kind != CheckpointKind.POLICY:
        errors["__all__"] = [f"{checkpoint.name} is a {checkpoint.kind} model; it cannot reply."]
    try:
        before = _conversation_before(previous, checkpoint=checkpoint, user=requested_by)
    except ValidationError as exc:
        errors.setdefault("__all__", []).extend(exc.messages)
        before = []
    if sum(1 for m in before if m["role"] == "user") >= PLAYGROUND_MAX_USER_TURNS:
        errors.setdefault("__all__", []).append(
            f"This conversation has reached {PLAYGROUND_MAX_USER_TURNS} messages: start a new one."
        )
    if errors:
        raise ValidationError(errors)
    return reply_request(
        checkpoint=checkpoint,
        messages=[*before, {"role": "user", "content": prompt.strip()}],
        system=system.strip(),
        sampling=sampling,
        requested_by=requested_by,
        previous=previous,
    )


def reply_request(
    *,
    checkpoint: Checkpoint,
    messages: list[dict[str, str]],
    sampling: SamplingParams,
    requested_by: AbstractBaseUser,
    system: str = "",
    previous: PlaygroundTurn | None = None,
) -> PlaygroundTurn:
    """Queue a reply to a conversation its caller has already checked (the playground above,
    live arena battles in evals), to be sampled by a GPU worker and streamed into the row."""
    turn = PlaygroundTurn.objects.create(
        checkpoint=checkpoint,
        previous=previous,
        system=system,
        messages=messages,
        sampling=asdict(sampling),
        requested_by=requested_by,
    )
    work_enqueue(turn)
    return turn


def _conversation_before(
    previous: PlaygroundTurn | None, *, checkpoint: Checkpoint, user: AbstractBaseUser
) -> list[dict[str, str]]:
    """What was said before the new message."""
    if previous is None:
        return []
    if previous.checkpoint_id != checkpoint.pk or previous.requested_by_id != user.pk:
        raise ValidationError("That conversation is not one of yours on this checkpoint.")
    if previous.status == Status.SUCCEEDED:
        return [*previous.messages, {"role": "assistant", "content": previous.reply}]
    if previous.is_finished:  # failed or cancelled: its question is asked again
        return list(previous.messages[:-1])
    raise ValidationError("Wait for the reply before you send the next message.")


def playground_turn_execute(turn: PlaygroundTurn) -> PlaygroundTurn:
    """Sample the reply of a claimed turn: what jobs/entrypoint.py runs. The reply, or the
    reason there is none, is written to the row, never raised."""
    # torch: only ever imported in the launched process
    from modeling.ml import ReplyRefused, chat_reply

    turn = PlaygroundTurn.objects.select_related("checkpoint").get(pk=turn.pk)
    checkpoint = turn.checkpoint

    def show(text: str) -> None:
        """The reply so far, for the page polling the row; only while it runs, so a late
        write never covers the final text (or a cancellation)."""
        PlaygroundTurn.objects.filter(pk=turn.pk, status=Status.RUNNING).update(
            reply=storable_text(text), heartbeat_at=timezone.now()
        )

    try:
        reply = chat_reply(
            checkpoint.load_path(),
            turn.conversation(),
            tokenizer_path=checkpoint.tokenizer_load_path(),
            on_text=show,
            **asdict(SamplingParams(**turn.sampling)),
        )
    except Exception as exc:
        logger.warning("Playground turn %s failed", turn.pk, exc_info=True)
        reason = str(exc) if isinstance(exc, ReplyRefused) else failure_reason(exc)
        work_finish(PlaygroundTurn, pk=turn.pk, status=Status.FAILED, error=reason)
    else:
        work_finish(PlaygroundTurn, pk=turn.pk, status=Status.SUCCEEDED, reply=storable_text(reply))
    return PlaygroundTurn.objects.get(pk=turn.pk)
