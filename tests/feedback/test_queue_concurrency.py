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


@pytest.mark.django_db(transaction=True)
def test_sixteen_annotators_fill_the_queue_exactly_once():
    project = ProjectFactory(overlap=OVERLAP, task_kinds=[TaskKind.PAIRWISE])
    for _ in range(ITEMS):
        make_item(project, TaskKind.PAIRWISE)
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

    assert not errors, errors[:5]
    assert PairwiseJudgement.objects.count() == ITEMS * OVERLAP
    assert sum(done.values()) == ITEMS * OVERLAP
    per_item = Counter(PairwiseJudgement.objects.values_list("item_id", flat=True))
    assert set(per_item.values()) == {OVERLAP}
    pairs = list(PairwiseJudgement.objects.values_list("item_id", "annotator_id"))
    assert len(pairs) == len(set(pairs)), "an annotator judged an item twice"
    assert set(Item.objects.values_list("submitted_count", flat=True)) == {OVERLAP}
    assert not Assignment.objects.filter(status=AssignmentStatus.LEASED).exists()
