"""The task queue: hand each annotator an item that still needs judgements, under a lease.

Invariants (tested on PostgreSQL with 16 concurrent workers):
- an item never holds more than `project.overlap` slots (submitted + unexpired leases);
- an annotator holds at most one slot per item (also a unique constraint);
- two annotators asking at once never get the same last slot.

How: the candidate item row is locked (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent
annotators fan out over different items instead of queueing on one), and its slots are counted
again *after* the lock is held, in a new statement, so the count sees every committed lease. On
SQLite, `transaction_mode=IMMEDIATE` serialises the whole read-check-insert instead.

Handing out a task is every judgement's second half, so its three statements are written in SQL
that PostgreSQL and SQLite both run (bench/annotation_load.py: building them with the ORM cost
more CPU than everything else in the request): one reads the annotator's standing (member? a
lease already?), one locks a candidate, and one counts the slots again and takes the lease only
if one is still free (an INSERT ... SELECT ... WHERE, upserting the annotator's own expired
lease).

Order: items already started come first (most submissions first), so an item reaches its
`overlap` judgements soon after it starts rather than leaving many half-judged ones (a half-judged
item is no label yet: agreement needs its overlap). Among items with as many submissions, the
higher `Item.priority` is served first (active sampling sets it; 0 for all otherwise), then the
oldest. So priority chooses which items enter work, and an item, once started, is finished
before a newer one of higher priority is begun. The `item_queue_order` index holds exactly this
order, so the candidate is an index walk that stops at the first entry passing the filters.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta
from functools import cache

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from core import rows
from core.errors import NotYourTask, TaskUnavailable
from core.roles import Role, has_role
from feedback.models import (
    Assignment,
    AssignmentStatus,
    Completion,
    Item,
    ItemCompletion,
    Project,
    Prompt,
    live_lease_q,
)
from feedback.selectors import member_or_open_q, prefetch_completions

# How many candidates to lock before giving up; a failed try means a racing annotator filled the
# slot between the candidate query's snapshot and our lock.
_MAX_CANDIDATES = 8

LEASED, SUBMITTED = AssignmentStatus.LEASED.value, AssignmentStatus.SUBMITTED.value


def ensure_can_annotate(project: Project, annotator: AbstractBaseUser) -> None:
    _ensure_role_and_open(project, annotator)
    if has_role(annotator, Role.ADMIN):
        return
    if not Project.objects.filter(member_or_open_q(annotator), pk=project.pk).exists():
        raise NotYourTask("You are not an annotator on this project.")


def _ensure_role_and_open(project: Project, annotator: AbstractBaseUser) -> None:
    if not has_role(annotator, Role.ANNOTATOR, Role.ADMIN):
        raise NotYourTask("Only annotators can take tasks.")
    if not project.is_active:
        raise TaskUnavailable("This project is closed.", code="closed")


def slots_taken(item: Item, *, excluding: AbstractBaseUser | None = None) -> int:
    taken = Assignment.objects.filter(live_lease_q(), item=item)
    if excluding is not None:
        taken = taken.exclude(annotator=excluding)
    return taken.count()


@cache
def _sql() -> dict[str, str]:
    """The queue's statements, with table names from the models. `{live}` is an assignment `a`
    holding a slot: submitted, or leased and not expired at the time given as its parameter."""
    names = {
        "item": Item._meta.db_table,
        "assignment": Assignment._meta.db_table,
        "members": Project.annotators.through._meta.db_table,
        "prompt": Prompt._meta.db_table,
        "link": ItemCompletion._meta.db_table,
        "completion": Completion._meta.db_table,
    }
    live = f"(a.status = '{SUBMITTED}' OR (a.status = '{LEASED}' AND a.expires_at > %s))"
    return {
        # params: admin?, project, user, project | annotator, project, now [, kind]
        "standing": """
            SELECT
              (%s OR EXISTS (SELECT 1 FROM {members} m WHERE m.project_id = %s AND m.user_id = %s)
                  OR NOT EXISTS (SELECT 1 FROM {members} m WHERE m.project_id = %s)),
              (SELECT a.id FROM {assignment} a JOIN {item} i ON i.id = a.item_id
                WHERE a.annotator_id = %s AND i.project_id = %s AND a.status = '{leased}'
                  AND a.expires_at > %s {kind}
                ORDER BY a.leased_at LIMIT 1)
        """.format(**names, leased=LEASED, kind="{kind}"),
        # params: project, is_gold, overlap, annotator, annotator, now, overlap [, kind]
        # [, tried...]. The candidate's row is locked; it comes back with its prompt and its
        # completions by position (one row each; one row without any for a demonstration).
        "candidate": """
            WITH candidate AS (
              SELECT i.id FROM {item} i
              WHERE i.project_id = %s AND i.is_gold = %s AND i.submitted_count < %s
                AND NOT EXISTS (SELECT 1 FROM {assignment} a
                                WHERE a.item_id = i.id AND a.annotator_id = %s
                                  AND a.status <> '{leased}')
                AND (SELECT COUNT(*) FROM {assignment} a
                     WHERE a.item_id = i.id AND a.annotator_id <> %s AND {live}) < %s
                {kind} {tried}
              ORDER BY i.submitted_count DESC, i.priority DESC, i.id
              LIMIT 1 {lock}
            )
            SELECT {item_columns}, {prompt_columns}, {link_columns}, {completion_columns}
            FROM candidate
            JOIN {item} i ON i.id = candidate.id
            JOIN {prompt} pr ON pr.id = i.prompt_id
            LEFT JOIN {link} ic ON ic.item_id = i.id
            LEFT JOIN {completion} c ON c.id = ic.completion_id
            ORDER BY ic.position
        """.format(
            **names,
            leased=LEASED,
            live=live,
            kind="{kind}",
            tried="{tried}",
            lock="{lock}",
            item_columns=rows.columns(Item, "i"),
            prompt_columns=rows.columns(Prompt, "pr"),
            link_columns=rows.columns(ItemCompletion, "ic"),
            completion_columns=rows.columns(Completion, "c"),
        ),
        # params: item, project, annotator, leased_at, expires_at, display_order, item,
        # annotator, now, overlap. Inserts nothing when the recount finds no free slot.
        "lease": """
            INSERT INTO {assignment}
              (item_id, project_id, annotator_id, status, leased_at, expires_at, display_order,
               finished_at, skip_reason)
            SELECT %s, %s, %s, '{leased}', %s, %s, %s, NULL, ''
            WHERE (SELECT COUNT(*) FROM {assignment} a
                   WHERE a.item_id = %s AND a.annotator_id <> %s AND {live}) < %s
            ON CONFLICT (item_id, annotator_id) DO UPDATE SET
              status = excluded.status, leased_at = excluded.leased_at,
              expires_at = excluded.expires_at, display_order = excluded.display_order,
              finished_at = NULL
            -- Only an expired lease is renewed: a submit (or skip) that committed after the
            -- candidate query is final. Returns no row then, like a taken slot.
            WHERE {assignment}.status = '{leased}'
            RETURNING id
        """.format(**names, leased=LEASED, live=live),
    }


def _standing(
    project: Project, annotator: AbstractBaseUser, kind: str | None, now: datetime
) -> tuple[bool, int | None]:
    """(may this person annotate the project, the id of their live lease in it, if any)."""
    sql = _sql()["standing"].format(kind="AND i.kind = %s" if kind else "")
    params = [has_role(annotator, Role.ADMIN), project.pk, annotator.pk, project.pk]
    params += [annotator.pk, project.pk, _db_time(now), *([kind] if kind else [])]
    ((allowed, current),) = rows.fetch(sql, params)
    return bool(allowed), current


def candidate_statement(
    project: Project,
    annotator: AbstractBaseUser,
    kind: str | None,
    tried: list[int],
    now: datetime,
    *,
    wait: bool,
) -> tuple[str, list]:
    """The candidate query and its parameters (also what the tests EXPLAIN: it must stay an
    index walk)."""
    lock = ""
    if connection.features.has_select_for_update_skip_locked:
        lock = "FOR UPDATE OF i" + ("" if wait else " SKIP LOCKED")
    sql = _sql()["candidate"].format(
        kind="AND i.kind = %s" if kind else "",
        tried=f"AND i.id NOT IN ({', '.join(['%s'] * len(tried))})" if tried else "",
        lock=lock,
    )
    params = [project.pk, False, project.overlap, annotator.pk, annotator.pk, _db_time(now)]
    params += [project.overlap, *([kind] if kind else []), *tried]
    return sql, params


def _lock_candidate(
    project: Project, annotator: AbstractBaseUser, kind: str | None, tried: list[int], now, *, wait
) -> Item | None:
    """The next open item, its row locked, with its prompt and completions loaded; None when
    there is none (or, without `wait`, when every open one is locked by someone else now)."""
    found = rows.fetch(*candidate_statement(project, annotator, kind, tried, now, wait=wait))
    if not found:
        return None
    parts = [rows.split(row, Item, Prompt, ItemCompletion, Completion) for row in found]
    item_values, prompt_values, *_ = parts[0]
    item = rows.instance(Item, item_values)
    item.project = project
    item.prompt = rows.instance(Prompt, prompt_values)
    links = []
    for _, _, link_values, completion_values, _ in parts:
        if link_values[0] is None:  # a demonstration: no completions
            continue
        link = rows.instance(ItemCompletion, link_values)
        link.completion = rows.instance(Completion, completion_values)
        links.append(link)
    rows.set_prefetched(item, "item_completions", links)
    return item


def _take_slot(
    item: Item, annotator: AbstractBaseUser, project: Project, now, *, overlap: int | None
) -> Assignment | None:
    """Lease `item` (its completions loaded, for the shuffle and the screen that follows) if,
    counted in this new statement, fewer than `overlap` others hold a slot; None otherwise.
    overlap=None: no limit (gold items)."""
    assignment = Assignment(
        item=item,
        project_id=item.project_id,
        annotator=annotator,
        status=LEASED,
        leased_at=now,
        expires_at=now + timedelta(seconds=project.lease_seconds),
        display_order=_display_order(item, annotator),
        finished_at=None,
    )
    limit = overlap if overlap is not None else 1 << 30
    params = [item.pk, item.project_id, annotator.pk, _db_time(assignment.leased_at)]
    params += [_db_time(assignment.expires_at)]
    params += [connection.ops.adapt_json_value(assignment.display_order, None)]
    params += [item.pk, annotator.pk, _db_time(now), limit]
    taken = rows.fetch(_sql()["lease"], params)
    if not taken:
        return None
    assignment.pk = taken[0][0]
    assignment._state.adding = False
    return assignment


def _db_time(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


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


def _display_order(item: Item, annotator: AbstractBaseUser) -> list[int]:
    """Sides and ranking order are shuffled per annotator, stably, to cancel position bias."""
    ids = [ic.completion_id for ic in item.item_completions.all()]  # prefetched, by position
    random.Random(f"{item.pk}:{annotator.pk}").shuffle(ids)
    return ids


def _loaded(item: Item, project: Project) -> Item:
    """The item with its completions, for the shuffle and the task screen."""
    item.project = project
    prefetch_completions(item)
    return item


def task_next_for_annotator(
    *, project: Project, annotator: AbstractBaseUser, kind: str | None = None
) -> Assignment | None:
    """The annotator's current lease in this project, or a new one; None when nothing is left."""
    _ensure_role_and_open(project, annotator)
    now = timezone.now()
    allowed, current_id = _standing(project, annotator, kind, now)
    if not allowed:
        raise NotYourTask("You are not an annotator on this project.")
    if current_id is not None:
        current = Assignment.objects.select_related("item__prompt").get(pk=current_id)
        current.item.project = project
        return current

    tried: list[int] = []
    wait = not connection.features.has_select_for_update_skip_locked
    with transaction.atomic():
        for _ in range(_MAX_CANDIDATES):
            item = _lock_candidate(project, annotator, kind, tried, now, wait=wait)
            if item is None:
                if wait:
                    return None
                # Every open item is locked by a racing annotator this instant: wait for one
                # rather than report an empty queue that is not empty.
                wait = True
                continue
            tried.append(item.pk)
            # Gold is only mixed into real work: it is served in place of a regular item.
            if _gold_turn(project, annotator):
                gold = _open_gold(project, annotator, kind).select_related("prompt").first()
                if gold is not None:
                    return _take_slot(_loaded(gold, project), annotator, project, now, overlap=None)
            assignment = _take_slot(item, annotator, project, now, overlap=project.overlap)
            if assignment is not None:
                return assignment
    return None
