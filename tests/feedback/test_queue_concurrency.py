"""The queue under real concurrency: many annotators loop next-task + submit at once.

Runs on whatever database the suite uses: PostgreSQL under `make test` (row locks with
SKIP LOCKED), SQLite when run bare (IMMEDIATE transactions).
"""

import threading
from collections import Counter

import pytest
from django.db import close_old_connections, connection

from feedback import services
from feedback.models import Assignment, AssignmentStatus, Item, PairwiseJudgement, TaskKind
from tests.factories import ProjectFactory, annotator, make_item

WORKERS = 16
ITEMS = 200
OVERLAP = 3


def _work_queue(project, user, errors: list, done: Counter) -> None:
    try:
        while True:
            assignment = services.task_next_for_annotator(project=project, annotator=user)
            if assignment is None:
                return
            services.pairwise_submit(
                assignment_id=assignment.pk,
                annotator=user,
                choice="a" if assignment.pk % 2 else "tie",
                strength="clear",
            )
            done[user.username] += 1
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        close_old_connections()
        connection.close()


def _work_queue_together(project) -> tuple[list[str], Counter]:
    """WORKERS annotators, each in a thread of its own, work the queue until it is empty."""
    users = [annotator(f"worker{i}") for i in range(WORKERS)]
    errors: list[str] = []
    done: Counter = Counter()
    threads = [
        threading.Thread(target=_work_queue, args=(project, user, errors, done)) for user in users
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return errors, done


@pytest.mark.django_db(transaction=True)
def test_sixteen_annotators_fill_the_queue_exactly_once():
    project = ProjectFactory(overlap=OVERLAP, task_kinds=[TaskKind.PAIRWISE])
    for _ in range(ITEMS):
        make_item(project, TaskKind.PAIRWISE)
    errors, done = _work_queue_together(project)

    assert not errors, errors[:5]
    assert PairwiseJudgement.objects.count() == ITEMS * OVERLAP
    assert sum(done.values()) == ITEMS * OVERLAP
    per_item = Counter(PairwiseJudgement.objects.values_list("item_id", flat=True))
    assert set(per_item.values()) == {OVERLAP}
    pairs = list(PairwiseJudgement.objects.values_list("item_id", "annotator_id"))
    assert len(pairs) == len(set(pairs)), "an annotator judged an item twice"
    assert set(Item.objects.values_list("submitted_count", flat=True)) == {OVERLAP}
    assert not Assignment.objects.filter(status=AssignmentStatus.LEASED).exists()


@pytest.mark.django_db(transaction=True)
def test_a_late_submit_between_the_candidate_query_and_the_lease_is_never_undone(monkeypatch):
    """The race, forced: the queue picks an item whose lease of this annotator has expired; just
    before its lease statement runs, the annotator's late submit of that lease commits. The
    lease upsert must leave the submitted assignment alone (without its guard it turned it back
    into a lease, and the item could end with overlap + 1 judgements)."""
    from datetime import timedelta

    from django.utils import timezone

    from feedback.services import queue

    project = ProjectFactory(overlap=1, lease_seconds=60)
    item = make_item(project, TaskKind.PAIRWISE)
    worker = annotator("late")
    expired = Assignment.objects.create(
        item=item,
        annotator=worker,
        status=AssignmentStatus.LEASED,
        leased_at=timezone.now() - timedelta(minutes=5),
        expires_at=timezone.now() - timedelta(minutes=4),
    )
    take_slot = queue._take_slot

    def submit_lands_first(item, annotator, project, now, *, overlap):
        # The other request's commit, between this request's candidate query and its lease.
        Assignment.objects.filter(pk=expired.pk).update(
            status=AssignmentStatus.SUBMITTED, finished_at=timezone.now()
        )
        Item.objects.filter(pk=item.pk).update(submitted_count=1)
        return take_slot(item, annotator, project, now, overlap=overlap)

    monkeypatch.setattr(queue, "_take_slot", submit_lands_first)
    assert services.task_next_for_annotator(project=project, annotator=worker) is None
    expired.refresh_from_db()
    assert expired.status == AssignmentStatus.SUBMITTED


@pytest.mark.django_db(transaction=True)
def test_sixteen_annotators_take_prioritised_items_in_priority_order_exactly_once():
    """Active sampling's priorities under the same concurrency: the invariants hold, and items
    enter work in priority order, give or take the few a racing annotator skipped past while
    another held their row lock."""
    project = ProjectFactory(overlap=OVERLAP, task_kinds=[TaskKind.PAIRWISE])
    items = [make_item(project, TaskKind.PAIRWISE) for _ in range(ITEMS)]
    # A priority order unrelated to the id order.
    for n, item in enumerate(items):
        Item.objects.filter(pk=item.pk).update(priority=(n * 37 % ITEMS) / ITEMS)
    errors, _done = _work_queue_together(project)

    assert not errors, errors[:5]
    per_item = Counter(PairwiseJudgement.objects.values_list("item_id", flat=True))
    assert len(per_item) == ITEMS and set(per_item.values()) == {OVERLAP}
    pairs = list(PairwiseJudgement.objects.values_list("item_id", "annotator_id"))
    assert len(pairs) == len(set(pairs)), "an annotator judged an item twice"
    assert not Assignment.objects.filter(status=AssignmentStatus.LEASED).exists()
    first_lease: dict[int, int] = {}
    for item_id in Assignment.objects.order_by("id").values_list("item_id", flat=True):
        first_lease.setdefault(item_id, len(first_lease))
    by_priority = Item.objects.order_by("-priority", "id").values_list("pk", flat=True)
    displacement = [abs(first_lease[pk] - rank) for rank, pk in enumerate(by_priority)]
    # In id order the displacement would reach ~ITEMS; racing annotators move an item by at
    # most the number of them in flight.
    assert max(displacement) <= 2 * WORKERS, sorted(displacement)[-5:]
