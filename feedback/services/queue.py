"""The task queue: hand each annotator an item that still needs judgements, under a lease.

Invariants (tested on PostgreSQL with 16 concurrent workers):
- an item never holds more than `project.overlap` slots (submitted + unexpired leases);
- an annotator holds at most one slot per item (also a unique constraint);
- two annotators asking at once never get the same last slot.

How: the candidate item row is locked (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent
annotators fan out over different items instead of queueing on one), and its slots are counted
again *after* the lock is held, in a new statement, so the count sees every committed lease. On
SQLite, `transaction_mode=IMMEDIATE` serialises the whole read-check-insert instead.
"""

from __future__ import annotations

import hashlib
import random
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from feedback.errors import NotYourTask, TaskUnavailable
from feedback.models import Assignment, AssignmentStatus, Item, Project, live_lease_q
from feedback.roles import Role, has_role
from feedback.selectors import member_or_open_q, prefetch_completions

# How many candidates to lock before giving up; a failed try means a racing annotator filled the
# slot between the candidate query's snapshot and our lock.
_MAX_CANDIDATES = 8


def ensure_can_annotate(project: Project, annotator: AbstractBaseUser) -> None:
    if not has_role(annotator, Role.ANNOTATOR, Role.ADMIN):
        raise NotYourTask("Only annotators can take tasks.")
    if not project.is_active:
        raise TaskUnavailable("This project is closed.", code="closed")
    if has_role(annotator, Role.ADMIN):
        return
    # One query on every call, members list or not: this runs before each task is handed out.
    if not Project.objects.filter(member_or_open_q(annotator), pk=project.pk).exists():
        raise NotYourTask("You are not an annotator on this project.")


def slots_taken(item: Item, *, excluding: AbstractBaseUser | None = None) -> int:
    taken = Assignment.objects.filter(live_lease_q(), item=item)
    if excluding is not None:
        taken = taken.exclude(annotator=excluding)
    return taken.count()


def _open_items(project: Project, annotator: AbstractBaseUser, kind: str | None) -> QuerySet:
    # Items this person already finished or skipped are never offered again; an own expired
    # lease is fine (the row is reused).
    finished_by_me = Assignment.objects.filter(item=OuterRef("pk"), annotator=annotator).exclude(
        status=AssignmentStatus.LEASED
    )
    others_slots = (
        Assignment.objects.filter(live_lease_q(), item=OuterRef("pk"))
        .exclude(annotator=annotator)
        .order_by()
        .values("item")
        .annotate(n=Count("pk"))
        .values("n")
    )
    items = (
        Item.objects.filter(project=project, is_gold=False, submitted_count__lt=project.overlap)
        .exclude(Exists(finished_by_me))
        .annotate(others_slots=Coalesce(Subquery(others_slots), 0))
        .filter(others_slots__lt=project.overlap)
    )
    if kind:
        items = items.filter(kind=kind)
    # Finish items that are already partly judged first, so complete items accumulate.
    return items.order_by("-submitted_count", "id")


def _gold_turn(project: Project, annotator: AbstractBaseUser) -> bool:
    """Whether this annotator's next task is a gold item: a hash of (project, annotator, how
    many tasks they have had) against the rate, so the mix is exact over time, reproducible,
    and not something an annotator can see coming."""
    if project.gold_rate <= 0:
        return False
    served = Assignment.objects.filter(item__project=project, annotator=annotator).count()
    digest = hashlib.sha256(f"{project.pk}:{annotator.pk}:{served}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x1_0000_0000 < project.gold_rate


def _open_gold(project: Project, annotator: AbstractBaseUser, kind: str | None) -> QuerySet:
    seen = Assignment.objects.filter(item=OuterRef("pk"), annotator=annotator)
    gold = Item.objects.filter(project=project, is_gold=True).exclude(Exists(seen))
    return (gold.filter(kind=kind) if kind else gold).order_by("id")


_RENEWED_FIELDS = ["status", "leased_at", "expires_at", "display_order", "finished_at"]


def _lease(item: Item, annotator: AbstractBaseUser, project: Project, now) -> Assignment:
    # The completions are loaded once, with their text: the shuffle needs their ids and the
    # task screen that follows shows them.
    item.project = project
    prefetch_completions(item)
    assignment = Assignment(
        item=item,
        annotator=annotator,
        status=AssignmentStatus.LEASED,
        leased_at=now,
        expires_at=now + timedelta(seconds=project.lease_seconds),
        display_order=_display_order(item, annotator),
        finished_at=None,
    )
    # Only the annotator's own expired lease can already exist (the candidate query excludes
    # finished rows): an upsert renews it in place, one statement in either case.
    Assignment.objects.bulk_create(
        [assignment],
        update_conflicts=True,
        unique_fields=["item", "annotator"],
        update_fields=_RENEWED_FIELDS,
    )
    return assignment


def _lock_next(items: QuerySet, *, wait: bool) -> Item | None:
    if connection.features.has_select_for_update_skip_locked:
        items = items.select_for_update(skip_locked=not wait, of=("self",))
    return items.first()


def _display_order(item: Item, annotator: AbstractBaseUser) -> list[int]:
    """Sides and ranking order are shuffled per annotator, stably, to cancel position bias."""
    ids = [ic.completion_id for ic in item.item_completions.all()]  # prefetched, by position
    random.Random(f"{item.pk}:{annotator.pk}").shuffle(ids)
    return ids


def task_next_for_annotator(
    *, project: Project, annotator: AbstractBaseUser, kind: str | None = None
) -> Assignment | None:
    """The annotator's current lease in this project, or a new one; None when nothing is left."""
    ensure_can_annotate(project, annotator)
    now = timezone.now()
    current = (
        Assignment.objects.filter(
            item__project=project,
            annotator=annotator,
            status=AssignmentStatus.LEASED,
            expires_at__gt=now,
        )
        .select_related("item__prompt")
        .order_by("leased_at")
        .first()
    )
    if current is not None and (kind is None or current.item.kind == kind):
        current.item.project = project
        return current

    open_items = _open_items(project, annotator, kind).select_related("prompt")
    tried: list[int] = []
    wait = not connection.features.has_select_for_update_skip_locked
    with transaction.atomic():
        for _ in range(_MAX_CANDIDATES):
            item = _lock_next(open_items.exclude(pk__in=tried), wait=wait)
            if item is None:
                if wait:
                    return None
                # Every open item is locked by a racing annotator this instant: wait for one
                # rather than report an empty queue that is not empty.
                wait = True
                continue
            tried.append(item.pk)
            # Counted after the row lock is held, in a new statement: sees every lease
            # committed before it.
            if slots_taken(item, excluding=annotator) >= project.overlap:
                continue
            # Gold is only mixed into real work: it is served in place of a regular item.
            if _gold_turn(project, annotator):
                gold = _open_gold(project, annotator, kind).select_related("prompt").first()
                if gold is not None:
                    return _lease(gold, annotator, project, now)
            return _lease(item, annotator, project, now)
    return None
