"""Query budgets of the annotation loop's hot requests, so that a refactor cannot quietly add
round trips to every judgement (bench/annotation_load.py measures what they cost)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from feedback import services
from feedback.models import Assignment, PairwiseJudgement, TaskKind
from tests.factories import make_item

HX = {"HX-Request": "true"}

# One htmx submit = the user with their roles + the assignment (with its item, project, prompt
# and canonical A) + savepoint, claim, count, insert, release (the judgement) + the annotator's
# standing (member? a lease already?) + savepoint, candidate lock (with its prompt and
# completions), slot recount with the lease upsert, release (the next task) + the annotator's
# progress ("12 of 61 · 49 left", both counts in one query; issue #17) + the session (a
# primary-key read: sessions live in the database so that a Redis outage cannot fail every page,
# tests/test_redis_outage.py). Savepoints stand in for BEGIN/COMMIT inside the test's
# transaction. Raise this only with a reason in the commit message.
SUBMIT_QUERIES = 14


@pytest.mark.django_db
def test_htmx_submit_and_next_task_stay_within_query_budget(
    client, annotator, pairwise_item, django_assert_max_num_queries
):
    second = make_item(pairwise_item.project, TaskKind.PAIRWISE)
    assignment = services.task_next_for_annotator(
        project=pairwise_item.project, annotator=annotator
    )
    client.force_login(annotator)
    client.get(
        reverse("feedback:task", args=[assignment.pk])
    )  # session and CSRF cookie, as a browser

    with django_assert_max_num_queries(SUBMIT_QUERIES):
        response = client.post(
            reverse("feedback:submit", args=[assignment.pk]),
            {"side": "left", "strength": "clear", "seconds_spent": "4"},
            headers=HX,
        )

    assert response.status_code == 200
    nxt = Assignment.objects.get(annotator=annotator, item=second)
    assert response["HX-Push-Url"] == reverse("feedback:task", args=[nxt.pk])
    assert PairwiseJudgement.objects.filter(assignment=assignment).count() == 1
    # The next task's screen is complete: both completions, rendered.
    assert response.content.decode().count('class="pane"') == 2


# One API submit and the next lease, as a labelling client drives the queue (issue #19): per
# request the token with its user and the user's roles (one query); the submit then reads the
# assignment with its item, project, prompt and canonical A (once: the service is handed it), and
# savepoint, claim, count, insert, release as the htmx submit does; the next reads the project
# the annotator may work on (no progress counts), their standing, and savepoint, candidate lock,
# lease, release. No query may count the project's items: that cost would grow with the project.
API_SUBMIT_QUERIES = 7
API_NEXT_QUERIES = 7


@pytest.mark.django_db
def test_api_submit_and_next_stay_within_query_budget_and_count_nothing(
    annotator, pairwise_item, django_assert_max_num_queries
):
    from django.test import Client

    from core.tokens import token_create

    make_item(pairwise_item.project, TaskKind.PAIRWISE)
    _, key = token_create(user=annotator, name="client")
    api = Client(headers={"Authorization": f"Bearer {key}"})
    next_path = f"/api/projects/{pairwise_item.project.pk}/next"
    lease = api.post(next_path, content_type="application/json").json()

    with django_assert_max_num_queries(API_SUBMIT_QUERIES) as submit:
        response = api.post(
            f"/api/assignments/{lease['id']}/pairwise",
            {"choice": "a", "strength": "clear"},
            content_type="application/json",
        )
    assert response.status_code == 200, response.content
    with django_assert_max_num_queries(API_NEXT_QUERIES) as following:
        response = api.post(next_path, content_type="application/json")
    assert response.status_code == 200 and response.json()["id"] != lease["id"]
    for query in submit.captured_queries + following.captured_queries:
        # The only count is the queue's own, of one candidate item's slots (at most k rows).
        sql = " ".join(query["sql"].split())
        assert "COUNT(" not in sql.upper() or "FROM feedback_assignment a WHERE a.item_id" in sql, (
            sql
        )


# The same submit with an Idempotency-Key, as a client that retries sends it: around it the
# request's own transaction (a savepoint here), the key taken in one statement (an upsert that
# waits for a request still holding it) and the response recorded on it.
API_KEYED_SUBMIT_QUERIES = API_SUBMIT_QUERIES + 4


@pytest.mark.django_db
def test_api_submit_with_an_idempotency_key_stays_within_query_budget(
    annotator, pairwise_item, django_assert_max_num_queries
):
    from django.test import Client

    from core.tokens import token_create

    _, key = token_create(user=annotator, name="client")
    api = Client(headers={"Authorization": f"Bearer {key}"})
    lease = api.post(f"/api/projects/{pairwise_item.project.pk}/next").json()
    path, body = f"/api/assignments/{lease['id']}/pairwise", {"choice": "a", "strength": "clear"}
    keyed = {"Idempotency-Key": "retry-safe-1"}

    with django_assert_max_num_queries(API_KEYED_SUBMIT_QUERIES):
        first = api.post(path, body, content_type="application/json", headers=keyed)
    again = api.post(path, body, content_type="application/json", headers=keyed)
    assert first.status_code == again.status_code == 200, first.content
    assert again["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert PairwiseJudgement.objects.filter(assignment_id=lease["id"]).count() == 1


# The review queue page (issue #17): the user with their roles and the session, the page's
# judgements (one UNION over the three kinds), the waiting count (a capped count per kind), each
# kind's rows on the page (pairwise and ranking rows with their items' completions, for the
# summary), and the filter form's projects and annotators. The same for 3 rows as for 30.
REVIEW_QUEUE_QUERIES = 16


@pytest.mark.django_db
def test_review_queue_costs_the_same_for_a_few_rows_as_for_many(client, roles, reviewer):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from core.roles import Role
    from tests.factories import ProjectFactory, UserFactory

    project = ProjectFactory(overlap=1)
    writers = [UserFactory(username=f"w{n}", roles=[Role.ANNOTATOR]) for n in range(30)]
    client.force_login(reviewer)
    client.get("/review/")  # session and caches, as a browser that just logged in
    counts = []
    for batch in (writers[:3], writers[3:]):
        for n, writer in enumerate(batch):
            item = make_item(project, TaskKind.values[n % 3])
            assignment = services.task_next_for_annotator(project=project, annotator=writer)
            assert assignment.item == item
            if item.kind == TaskKind.PAIRWISE:
                services.pairwise_submit(assignment_id=assignment.pk, annotator=writer,
                                         choice="a", strength="clear")  # fmt: skip
            elif item.kind == TaskKind.RANKING:
                ids = [ic.completion_id for ic in item.item_completions.all()]
                services.ranking_submit(assignment_id=assignment.pk, annotator=writer,
                                        ranking=[[i] for i in ids])  # fmt: skip
            else:
                services.demonstration_submit(assignment_id=assignment.pk, annotator=writer,
                                              text="A reply.")  # fmt: skip
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/review/")
        assert response.status_code == 200
        counts.append(len(queries))
    assert len(response.context["page"].rows) == 30
    assert counts[0] == counts[1] <= REVIEW_QUEUE_QUERIES, counts
