"""Item.priority in the queue: higher priority enters work first, and everything else the queue
promises (overlap, leases, skips, gold, the index walk) still holds."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from feedback import services
from feedback.models import Assignment, Item, Prompt, TaskKind
from feedback.services.queue import candidate_statement
from tests.factories import ProjectFactory, make_item
from tests.factories import annotator as make_annotator

pytestmark = pytest.mark.django_db


def prioritised(project, priorities: list[float]) -> list[Item]:
    items = [make_item(project) for _ in priorities]
    for item, priority in zip(items, priorities, strict=True):
        Item.objects.filter(pk=item.pk).update(priority=priority)
    return items


def next_item_id(project, user, **kwargs) -> int | None:
    assignment = services.task_next_for_annotator(project=project, annotator=user, **kwargs)
    return None if assignment is None else assignment.item_id


def test_higher_priority_items_are_served_first_then_the_oldest(roles):
    project = ProjectFactory(overlap=1)
    low, high, zero, tied_old, tied_new = prioritised(project, [0.1, 0.9, 0.0, 0.5, 0.5])
    served = []
    for n in range(5):
        user = make_annotator(f"a{n}")
        served.append(next_item_id(project, user))
    assert served == [high.pk, tied_old.pk, tied_new.pk, low.pk, zero.pk]


def test_a_started_item_reaches_its_overlap_before_a_higher_priority_one_starts(roles):
    """Priority picks which item enters work; a half-judged item is no label yet, so it is
    finished first."""
    project = ProjectFactory(overlap=2)
    started, urgent = prioritised(project, [0.1, 0.2])
    first = make_annotator("first")
    assignment = services.task_next_for_annotator(project=project, annotator=first)
    assert assignment.item_id == urgent.pk
    services.pairwise_submit(
        assignment_id=assignment.pk, annotator=first, choice="a", strength="clear"
    )
    # `urgent` has one submission, `started` none: urgent is finished before started begins,
    # even once `started` is rescored above it.
    Item.objects.filter(pk=started.pk).update(priority=5.0)
    assert next_item_id(project, make_annotator("second")) == urgent.pk
    assert next_item_id(project, make_annotator("third")) == started.pk


def test_a_fully_leased_top_item_passes_the_turn_until_its_lease_expires(roles):
    project = ProjectFactory(overlap=1)
    top, second = prioritised(project, [2.0, 1.0])
    holder = services.task_next_for_annotator(project=project, annotator=make_annotator("h"))
    assert holder.item_id == top.pk
    assert next_item_id(project, make_annotator("b")) == second.pk
    Assignment.objects.filter(pk=holder.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert next_item_id(project, make_annotator("c")) == top.pk


def test_a_skipped_top_item_goes_to_the_next_annotator_not_back_to_the_skipper(roles):
    project = ProjectFactory(overlap=1)
    top, second = prioritised(project, [3.0, 1.0])
    skipper = make_annotator("skipper")
    assignment = services.task_next_for_annotator(project=project, annotator=skipper)
    assert assignment.item_id == top.pk
    services.assignment_skip(assignment_id=assignment.pk, annotator=skipper)
    assert next_item_id(project, skipper) == second.pk
    assert next_item_id(project, make_annotator("other")) == top.pk


def test_gold_is_still_mixed_in_whatever_the_priorities(roles):
    project = ProjectFactory(overlap=1, gold_rate=0.5)
    prioritised(project, [1.0] * 6)
    gold = make_item(project)
    Item.objects.filter(pk=gold.pk).update(is_gold=True, gold_answer={"choice": "a"}, priority=-1)
    user = make_annotator("gold")
    served = []
    while assignment := services.task_next_for_annotator(project=project, annotator=user):
        services.pairwise_submit(
            assignment_id=assignment.pk, annotator=user, choice="a", strength="clear"
        )
        served.append(assignment.item_id)
    assert gold.pk in served
    assert len(served) == 7


def test_kind_filter_and_priority_together(roles):
    project = ProjectFactory(overlap=1)
    ranking = make_item(project, TaskKind.RANKING)
    _low, high = prioritised(project, [0.0, 1.0])
    Item.objects.filter(pk=ranking.pk).update(priority=9.0)
    assert next_item_id(project, make_annotator("p"), kind=TaskKind.PAIRWISE) == high.pk


def _candidate_part(plan: str) -> str:
    """SQLite's plan of the CTE alone: the outer query sorts the one item's few completions."""
    return plan.split("SCAN candidate")[0]


def _plan(sql: str, params: list) -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE")
            cursor.execute("EXPLAIN " + sql, params)
        else:
            cursor.execute("ANALYZE")
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        return "\n".join(" ".join(str(col) for col in row) for row in cursor.fetchall())


@pytest.mark.parametrize("kind", [None, TaskKind.PAIRWISE])
def test_the_candidate_query_walks_the_queue_index_in_a_10k_item_project(roles, kind):
    project = ProjectFactory(overlap=3)
    other = ProjectFactory(overlap=3)
    prompt = Prompt.objects.create(project=project, messages=[{"role": "user", "content": "q"}])
    other_prompt = Prompt.objects.create(project=other, messages=[{"role": "user", "content": "q"}])
    Item.objects.bulk_create(
        Item(
            project=p,
            prompt=pr,
            kind=TaskKind.PAIRWISE,
            priority=(n * 7919 % 10_000) / 10_000,
            submitted_count=n % 3,
        )
        for p, pr in ((project, prompt), (other, other_prompt))
        for n in range(10_000)
    )
    user = make_annotator("explain")
    sql, params = candidate_statement(project, user, kind, [], timezone.now(), wait=False)
    plan = _plan(sql, params)
    assert "item_queue_order" in plan, plan
    # The index hands rows over in the ORDER BY's order: no sort of the project's open items.
    if connection.vendor == "postgresql":
        assert "Index Scan using item_queue_order" in plan, plan
        assert "Sort Key: i.submitted_count" not in plan, plan
    else:
        assert "USING INDEX item_queue_order" in plan, plan
        assert "TEMP B-TREE FOR ORDER BY" not in _candidate_part(plan), plan
    # The walk stops at the first entry that passes: the highest priority among the
    # most-submitted open items.
    assert next_item_id(project, user, kind=kind) == (
        Item.objects.filter(project=project, submitted_count=2)
        .order_by("-priority", "id")
        .values_list("pk", flat=True)
        .first()
    )
    # Leave the statistics as the next test expects them: ANALYZE's row counts (pg_class) outlive
    # this test's rollback, and an import decides whether to analyze from them.
    Assignment.objects.filter(item__project__in=[project, other]).delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {Item._meta.db_table} WHERE project_id IN (%s, %s)",
            [project.pk, other.pk],
        )
        cursor.execute("ANALYZE")
