"""Small fixes on the annotation and review screens (issue #17)."""

import json

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from feedback import selectors as selectors_module
from feedback import services
from feedback.models import Assignment, AssignmentStatus, Item, Prompt, TaskKind
from feedback.services import review as review_services
from tests.factories import ProjectFactory, make_item
from tests.factories import annotator as make_annotator


def _demonstrate(project, annotator, text="A reply."):
    make_item(project, TaskKind.DEMONSTRATION)
    assignment = services.task_next_for_annotator(project=project, annotator=annotator)
    return services.demonstration_submit(
        assignment_id=assignment.pk, annotator=annotator, text=text
    )


def test_rejected_badge_is_not_coloured_like_accepted(client, project, annotator, reviewer):
    accepted = _demonstrate(project, annotator)
    rejected = _demonstrate(project, annotator)
    review_services.demonstration_review(
        demonstration_id=accepted.pk, reviewer=reviewer, decision="accept"
    )
    review_services.demonstration_review(
        demonstration_id=rejected.pk, reviewer=reviewer, decision="reject", comment="Too short."
    )
    client.force_login(annotator)
    html = client.get("/history/").content.decode()
    assert 'class="badge status-accepted">Accepted<' in html
    assert 'class="badge status-rejected">Rejected<' in html


def test_review_form_names_the_edit_choice_as_its_button_says(client, project, annotator, reviewer):
    demonstration = _demonstrate(project, annotator)
    client.force_login(reviewer)
    html = client.get(f"/review/{demonstration.pk}/").content.decode()
    assert "Accept with my edits" in html
    assert "Accepted with edits" not in html


def test_task_screen_says_how_far_the_annotator_is(client, project, annotator, other_annotator):
    items = [make_item(project, TaskKind.PAIRWISE) for _ in range(3)]
    # Someone else's work does not count as mine, and a full item is not left for me.
    project.overlap = 1
    project.save()
    theirs = services.task_next_for_annotator(project=project, annotator=other_annotator)
    services.pairwise_submit(
        assignment_id=theirs.pk, annotator=other_annotator, choice="a", strength="clear"
    )
    client.force_login(annotator)
    first = client.get(f"/projects/{project.pk}/work/", follow=True).content.decode()
    assert "0 of 2 · 2 left" in first
    assignment = annotator.assignments.get()
    client.post(f"/tasks/{assignment.pk}/submit/", {"side": "left", "strength": "clear"})
    second = client.get(f"/projects/{project.pk}/work/", follow=True).content.decode()
    assert "1 of 2 · 1 left" in second
    assert len(items) == 3


def test_a_big_project_says_how_many_are_left_only_up_to_the_cap(
    client, project, annotator, monkeypatch
):
    """Counting every open item on each submit grows with the project (issue #19): past the cap
    the header says "N+ left", and the count stops there."""
    monkeypatch.setattr(selectors_module, "PROGRESS_LEFT_CAP", 2)
    for _ in range(4):
        make_item(project, TaskKind.PAIRWISE)
    progress = selectors_module.annotator_progress(project=project, annotator=annotator)
    assert (progress.left, progress.capped) == (3, True)  # cap + 1: "more than 2"
    client.force_login(annotator)
    page = client.get(f"/projects/{project.pk}/work/", follow=True).content.decode()
    assert "0 done · 2+ left" in page and "of 3" not in page


def _rows_touched(plan: dict) -> float:
    """Rows a PostgreSQL plan node and its children produced or filtered away, over all loops."""
    own = (
        plan.get("Actual Rows", 0)
        + plan.get("Rows Removed by Filter", 0)
        + plan.get("Rows Removed by Join Filter", 0)
    ) * plan.get("Actual Loops", 1)
    return own + sum(_rows_touched(child) for child in plan.get("Plans", []))


def _statement_work(sql: str) -> float:
    """Rows a statement touched, run again under EXPLAIN ANALYZE (PostgreSQL)."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
        (plan,) = cursor.fetchone()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    return _rows_touched(plan[0]["Plan"])


def test_progress_is_one_statement_whose_work_is_bounded_by_the_cap_and_my_own_work(
    roles, monkeypatch
):
    """Every submit renders the progress (issue #19's htmx flow). Its first spelling built two
    ORM subqueries per submit (more CPU than the database spent on them) and, with current
    statistics, hashed every item of the project twice, capped or not: here ~4,000 rows per
    submit, growing with the project. Now one hand-written statement walks the open items until
    the cap and probes one row per item and per judgement of mine."""
    monkeypatch.setattr(selectors_module, "PROGRESS_LEFT_CAP", 100)
    project, other = ProjectFactory(overlap=3), ProjectFactory(overlap=3)
    me, someone = make_annotator("progress"), make_annotator("someone")
    items = []
    for p, size in ((project, 3000), (other, 100)):
        prompt = Prompt.objects.create(project=p, messages=[{"role": "user", "content": "q"}])
        items += Item.objects.bulk_create(
            Item(project=p, prompt=prompt, kind=TaskKind.PAIRWISE, submitted_count=n % 4)
            for n in range(size)
        )
    statuses = [AssignmentStatus.SUBMITTED, AssignmentStatus.SKIPPED, AssignmentStatus.LEASED]
    now = timezone.now()
    Assignment.objects.bulk_create(
        [
            *(
                Assignment(item=item, annotator=me, status=statuses[n % 3], expires_at=now)
                for n, item in enumerate(items[::11])
            ),
            *(
                Assignment(item=item, annotator=someone, status=statuses[0], expires_at=now)
                for item in items
            ),
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would have by now

    with CaptureQueriesContext(connection) as queries:
        progress = selectors_module.annotator_progress(project=project, annotator=me)
        uncapped = selectors_module.annotator_progress(project=other, annotator=me)

    # The counts, as the header means them: my submitted judgements in the project, and its open
    # items that I have neither submitted nor skipped (a lease of mine does not count as done).
    mine = {a.item_id: a.status for a in Assignment.objects.filter(annotator=me)}
    for p, got in ((project, progress), (other, uncapped)):
        in_project = [i for i in items if i.project_id == p.pk]
        assert got.done == sum(mine.get(i.pk) == AssignmentStatus.SUBMITTED for i in in_project)
        left = sum(i.submitted_count < 3 and mine.get(i.pk) not in statuses[:2] for i in in_project)
        assert got.left == min(left, 101)
    assert progress.capped and not uncapped.capped and uncapped.left < 100
    assert len(queries) == 2
    if connection.vendor != "postgresql":
        return
    touched = _statement_work(queries[0]["sql"])
    mine_here = sum(1 for i in items[::11] if i.project_id == project.pk)  # 273
    assert touched <= 4 * (101 + mine_here), touched


def test_the_projects_page_tells_an_author_a_demonstration_came_back(
    client, project, annotator, other_annotator, reviewer
):
    project.task_kinds = [TaskKind.DEMONSTRATION]
    project.save()
    mine = _demonstrate(project, annotator)
    review_services.demonstration_review(
        demonstration_id=mine.pk, reviewer=reviewer, decision="reject", comment="Too short."
    )
    client.force_login(annotator)
    page = client.get("/").content.decode()
    assert "A reviewer sent back 1 of your demonstration:" in page
    assert f"?project={project.pk}&amp;status=rejected" in page
    client.force_login(other_annotator)  # someone else's rejection is not theirs to fix
    assert "sent back" not in client.get("/").content.decode()


def test_my_work_in_other_projects_adds_nothing_to_the_progress_statement(roles, monkeypatch):
    """The progress scanned every submitted or skipped assignment of mine in every project and
    probed its item for the project: 0.7 ms per task screen with 100 judgements elsewhere, 41 ms
    with 20,000 (issue #19; bench: a veteran annotator opening a new project). Its work must
    not depend on what I did elsewhere."""
    monkeypatch.setattr(selectors_module, "PROGRESS_LEFT_CAP", 100)
    project, elsewhere = ProjectFactory(overlap=2), ProjectFactory(overlap=1)
    me = make_annotator("veteran")
    sizes = {project: 40, elsewhere: 3000}
    items = {}
    for p, size in sizes.items():
        prompt = Prompt.objects.create(project=p, messages=[{"role": "user", "content": "q"}])
        items[p] = Item.objects.bulk_create(
            Item(project=p, prompt=prompt, kind=TaskKind.PAIRWISE, submitted_count=n % 2)
            for n in range(size)
        )
    now = timezone.now()
    done_here = items[project][1::4]  # submitted_count 1 of 2: still open
    skipped_here = items[project][2::8]
    Assignment.objects.bulk_create(
        [
            *(
                Assignment(project=p, item=item, annotator=me, status=status, expires_at=now)
                for p, chosen, status in (
                    (project, done_here, AssignmentStatus.SUBMITTED),
                    (project, skipped_here, AssignmentStatus.SKIPPED),
                    (elsewhere, items[elsewhere], AssignmentStatus.SUBMITTED),
                )
                for item in chosen
            ),
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    with CaptureQueriesContext(connection) as queries:
        progress = selectors_module.annotator_progress(project=project, annotator=me)
    assert progress.done == len(done_here) == 10
    assert progress.left == 40 - len(done_here) - len(skipped_here)
    assert selectors_module.annotator_progress(project=elsewhere, annotator=me).done == 3000
    if connection.vendor != "postgresql":
        return
    touched = _statement_work(queries[0]["sql"])
    assert touched <= 4 * (40 + len(done_here) + len(skipped_here)), touched
