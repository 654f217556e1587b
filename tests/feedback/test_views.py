"""View tests for every annotator and admin screen, for every role.

Roles: annotator, reviewer (no annotator role), admin (may annotate too), a logged-in user with no
role ("nobody"), and anonymous. Each screen gets its happy path and at least one refused case.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from feedback import services
from feedback.models import (
    Assignment,
    AssignmentStatus,
    Completion,
    Demonstration,
    Item,
    JudgementRevision,
    PairwiseJudgement,
    RankingJudgement,
    TaskKind,
)
from tests.factories import ProjectFactory, UserFactory, make_item

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}


# --- helpers -----------------------------------------------------------------------------------


def lease(user, item) -> Assignment:
    """Lease `item` for `user` through the real queue (sets display_order like production)."""
    assignment = services.task_next_for_annotator(
        project=item.project, annotator=user, kind=item.kind
    )
    assert assignment is not None and assignment.item_id == item.pk
    return assignment


def task_url(assignment: Assignment) -> str:
    return f"/tasks/{assignment.pk}/"


def submit_url(assignment: Assignment) -> str:
    return f"/tasks/{assignment.pk}/submit/"


def skip_url(assignment: Assignment) -> str:
    return f"/tasks/{assignment.pk}/skip/"


def work_url(project) -> str:
    return f"/projects/{project.pk}/work/"


def progress_url(project) -> str:
    return f"/projects/{project.pk}/progress/"


def judgement_count() -> int:
    return (
        Demonstration.objects.count()
        + PairwiseJudgement.objects.count()
        + RankingJudgement.objects.count()
    )


def pane_texts(html: str) -> dict[str, str]:
    """The completion text rendered in the left and right panes of the pairwise screen."""
    panes = re.findall(
        r'<article class="pane" data-side="(left|right)">.*?<div class="md">(.*?)</div>',
        html,
        re.S,
    )
    return dict(panes)


def rank_post(assignment: Assignment, ranks: dict[int, int], **extra) -> dict:
    return {**{f"rank_{cid}": rank for cid, rank in ranks.items()}, **extra}


def is_login_redirect(response, path: str) -> bool:
    """302 to the site login (the admin index uses its own login page)."""
    login = "/admin/login/" if path == "/admin/" else "/accounts/login/"
    return response.status_code == 302 and response["Location"] == f"{login}?next={path}"


# --- anonymous ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/"),
        ("get", "/projects/{project}/work/"),
        ("get", "/projects/{project}/progress/"),
        ("get", "/tasks/{assignment}/"),
        ("post", "/tasks/{assignment}/submit/"),
        ("post", "/tasks/{assignment}/skip/"),
        ("get", "/history/"),
        ("post", "/markdown/preview/"),
        ("get", "/admin/"),
        ("get", "/admin/feedback/project/"),
    ],
)
def test_anonymous_is_redirected_to_login(client, annotator, pairwise_item, method, path):
    assignment = lease(annotator, pairwise_item)
    url = path.format(project=pairwise_item.project_id, assignment=assignment.pk)

    data = {"side": "left", "strength": "clear", "text": "x"} if method == "post" else None
    response = getattr(client, method)(url, data)

    assert is_login_redirect(response, url)
    assert judgement_count() == 0
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.LEASED


def test_login_page_and_healthz_are_open_to_anonymous(client):
    login = client.get("/accounts/login/")
    assert login.status_code == 200
    assert 'name="username"' in login.content.decode()
    assert 'name="password"' in login.content.decode()

    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.content == b"ok"


def test_login_with_valid_credentials_goes_home(client, annotator):
    response = client.post("/accounts/login/", {"username": "ann", "password": "pw"}, follow=True)

    # Through /start/, which sends a reviewer to the review queue and everyone else home.
    assert [url for url, _ in response.redirect_chain] == ["/start/", "/"]
    assert response.status_code == 200


def test_login_with_wrong_password_rerenders_with_an_error(client, annotator):
    response = client.post("/accounts/login/", {"username": "ann", "password": "nope"})

    assert response.status_code == 200
    assert "correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


# --- home --------------------------------------------------------------------------------------


def test_home_lists_open_projects_for_annotator(client, annotator, project):
    closed = ProjectFactory(name="Closed one", is_active=False)
    client.force_login(annotator)

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert project.name in html
    assert work_url(project) in html
    assert closed.name not in html
    assert "All projects (admin)" not in html
    assert progress_url(project) not in html


def test_home_shows_admin_table_and_progress_links_to_admin(client, admin_user, project):
    closed = ProjectFactory(name="Closed one", is_active=False)
    client.force_login(admin_user)

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "All projects (admin)" in html
    assert progress_url(project) in html
    assert progress_url(closed) in html


def test_home_for_user_without_role_says_so(client, nobody, project):
    client.force_login(nobody)

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "no role yet" in html
    assert work_url(project) not in html


def test_home_for_reviewer_does_not_claim_they_have_no_role(client, reviewer, project):
    client.force_login(reviewer)

    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert work_url(project) not in html
    # A reviewer holds a role; telling them to ask for one is wrong.
    assert "no role yet" not in html


def test_home_hides_projects_whose_member_list_excludes_the_annotator(
    client, annotator, other_annotator, project
):
    project.annotators.add(other_annotator)
    client.force_login(annotator)

    response = client.get("/")

    assert work_url(project) not in response.content.decode()
    assert "No projects are open for you right now." in response.content.decode()


def test_home_rejects_post(client, annotator):
    client.force_login(annotator)
    assert client.post("/").status_code == 405


# --- work --------------------------------------------------------------------------------------


def test_work_leases_next_task_and_redirects_to_it(client, annotator, pairwise_item):
    client.force_login(annotator)

    response = client.get(work_url(pairwise_item.project))

    assignment = Assignment.objects.get(annotator=annotator)
    assert response.status_code == 302
    assert response["Location"] == task_url(assignment)
    assert assignment.item == pairwise_item
    assert assignment.status == AssignmentStatus.LEASED
    assert assignment.expires_at > timezone.now()
    assert sorted(assignment.display_order) == sorted(
        c.pk for c in pairwise_item.ordered_completions()
    )


def test_work_twice_returns_the_same_lease(client, annotator, pairwise_item):
    make_item(pairwise_item.project, TaskKind.PAIRWISE)
    client.force_login(annotator)

    first = client.get(work_url(pairwise_item.project))
    second = client.get(work_url(pairwise_item.project))

    assert first["Location"] == second["Location"]
    assert Assignment.objects.filter(annotator=annotator).count() == 1


def test_work_with_nothing_left_renders_no_tasks_page(client, annotator, project):
    client.force_login(annotator)

    response = client.get(work_url(project))

    assert response.status_code == 200
    assert f"No tasks left for you in {project.name}" in response.content.decode()


def test_work_on_closed_project_answers_409_with_a_clear_message(client, annotator, pairwise_item):
    project = pairwise_item.project
    project.is_active = False
    project.save()
    client.force_login(annotator)

    response = client.get(work_url(project))

    assert response.status_code == 409
    assert "This project is closed." in response.content.decode()
    assert not Assignment.objects.exists()


def test_work_on_unknown_project_is_404(client, annotator):
    client.force_login(annotator)
    assert client.get("/projects/987654/work/").status_code == 404


@pytest.mark.parametrize("user_fixture", ["reviewer", "nobody"])
def test_work_is_forbidden_without_annotator_role(client, request, user_fixture, pairwise_item):
    client.force_login(request.getfixturevalue(user_fixture))

    response = client.get(work_url(pairwise_item.project))

    assert response.status_code == 403
    assert not Assignment.objects.exists()


def test_annotator_outside_project_member_list_cannot_work_on_it(
    client, annotator, other_annotator, pairwise_item
):
    pairwise_item.project.annotators.add(other_annotator)
    client.force_login(annotator)

    response = client.get(work_url(pairwise_item.project))

    assert response.status_code == 403
    assert not Assignment.objects.exists()


def test_annotator_on_project_member_list_can_work_on_it(client, annotator, pairwise_item):
    pairwise_item.project.annotators.add(annotator)
    client.force_login(annotator)

    response = client.get(work_url(pairwise_item.project))

    assert response.status_code == 302
    assert Assignment.objects.filter(annotator=annotator).count() == 1


def test_admin_may_work_even_when_not_on_member_list(
    client, admin_user, other_annotator, pairwise_item
):
    pairwise_item.project.annotators.add(other_annotator)
    client.force_login(admin_user)

    response = client.get(work_url(pairwise_item.project))

    assert response.status_code == 302
    assert Assignment.objects.filter(annotator=admin_user).count() == 1


def test_work_rejects_post(client, annotator, pairwise_item):
    client.force_login(annotator)
    assert client.post(work_url(pairwise_item.project)).status_code == 405
    assert not Assignment.objects.exists()


# --- task screen -------------------------------------------------------------------------------


def test_pairwise_task_shows_prompt_both_completions_and_labels(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.get(task_url(assignment))

    assert response.status_code == 200
    html = response.content.decode()
    assert pairwise_item.prompt.messages[-1]["content"] in html
    for completion in pairwise_item.ordered_completions():
        assert completion.text in html
    assert 'name="side"' in html
    assert 'name="label_helpfulness"' in html
    assert 'name="label_unsafe"' in html
    assert f'action="{skip_url(assignment)}"' in html
    assert ">Submit <kbd>" in html
    assert "Be <strong>kind</strong>." in html  # guidelines rendered as markdown


def test_pairwise_task_shows_completions_in_the_assignment_display_order(
    client, annotator, pairwise_item
):
    assignment = lease(annotator, pairwise_item)
    by_id = {c.pk: c.text for c in pairwise_item.ordered_completions()}
    client.force_login(annotator)

    panes = pane_texts(client.get(task_url(assignment)).content.decode())

    assert panes["left"].strip() == f"<p>{by_id[assignment.display_order[0]]}</p>"
    assert panes["right"].strip() == f"<p>{by_id[assignment.display_order[1]]}</p>"


def test_ranking_task_shows_one_rank_select_per_completion(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    client.force_login(annotator)

    html = client.get(task_url(assignment)).content.decode()

    for cid in assignment.display_order:
        assert f'name="rank_{cid}"' in html
    positions = [html.index(f'data-completion="{cid}"') for cid in assignment.display_order]
    assert positions == sorted(positions)


def test_demonstration_task_shows_editor(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.get(task_url(assignment))

    assert response.status_code == 200
    html = response.content.decode()
    assert '<textarea name="text"' in html
    assert 'hx-post="/markdown/preview/"' in html


def test_task_htmx_get_returns_only_the_workspace(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.get(task_url(assignment), headers=HX)

    html = response.content.decode().strip()
    assert response.status_code == 200
    assert html.startswith('<div id="workspace"')
    assert "<html" not in html


def test_task_of_skipped_assignment_redirects_to_work(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    services.assignment_skip(assignment_id=assignment.pk, annotator=annotator)
    client.force_login(annotator)

    response = client.get(task_url(assignment))

    assert response.status_code == 302
    assert response["Location"] == work_url(pairwise_item.project)


@pytest.mark.parametrize("user_fixture", ["reviewer", "nobody"])
def test_task_is_forbidden_without_annotator_role(client, request, user_fixture, pairwise_item):
    owner = request.getfixturevalue(user_fixture)
    # Even an assignment that is nominally theirs: the role check comes first.
    assignment = Assignment.objects.create(
        item=pairwise_item, annotator=owner, expires_at=timezone.now() + timedelta(minutes=5)
    )
    client.force_login(owner)

    assert client.get(task_url(assignment)).status_code == 403


def test_admin_cannot_open_someone_elses_task(client, admin_user, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(admin_user)

    assert client.get(task_url(assignment)).status_code == 404


def test_task_rejects_post(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)
    assert client.post(task_url(assignment)).status_code == 405


# --- submit: plain and htmx --------------------------------------------------------------------


def test_plain_submit_saves_and_redirects_to_work(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), {"side": "tie", "rationale": "same", "seconds_spent": "12.5"}
    )

    assert response.status_code == 302
    assert response["Location"] == work_url(pairwise_item.project)
    judgement = PairwiseJudgement.objects.get(assignment=assignment)
    assert judgement.annotator == annotator
    assert judgement.item == pairwise_item
    assert judgement.choice == "tie"
    assert judgement.rationale == "same"
    assert judgement.seconds_spent == 12.5
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.SUBMITTED
    assert assignment.finished_at is not None
    pairwise_item.refresh_from_db()
    assert pairwise_item.submitted_count == 1


def test_htmx_submit_returns_next_task_workspace_and_push_url(client, annotator, pairwise_item):
    second = make_item(pairwise_item.project, TaskKind.PAIRWISE)
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), {"side": "left", "strength": "slight"}, headers=HX
    )

    assert response.status_code == 200
    nxt = Assignment.objects.get(annotator=annotator, item=second)
    assert response["HX-Push-Url"] == task_url(nxt)
    html = response.content.decode().strip()
    assert html.startswith('<div id="workspace"')
    assert "<html" not in html
    assert f'action="{submit_url(nxt)}"' in html
    assert PairwiseJudgement.objects.filter(assignment=assignment).count() == 1


def test_htmx_submit_of_last_task_returns_no_tasks_partial(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": "both_bad"}, headers=HX)

    assert response.status_code == 200
    assert response["HX-Push-Url"] == work_url(pairwise_item.project)
    html = response.content.decode().strip()
    assert html.startswith('<div id="workspace"')
    assert "No tasks left" in html


def _arena_item(project, *, reveal: bool):
    project.reveal_models = reveal
    project.save(update_fields=["reveal_models"])
    texts = ["Reply written by the first model", "Reply written by the second model"]
    item = make_item(project, TaskKind.PAIRWISE, texts=texts)
    Completion.objects.filter(text=texts[0]).update(model_name="llama-sft-3")
    Completion.objects.filter(text=texts[1]).update(model_name="llama-dpo-7")
    return item


@pytest.mark.parametrize("htmx", [True, False])
def test_arena_project_reveals_the_models_after_the_vote_and_not_before(
    client, annotator, project, htmx
):
    item = _arena_item(project, reveal=True)
    make_item(project, TaskKind.PAIRWISE)  # a next task to land on
    assignment = lease(annotator, item)
    client.force_login(annotator)

    before = client.get(task_url(assignment)).content.decode()
    assert "llama-sft-3" not in before and "llama-dpo-7" not in before

    response = client.post(
        submit_url(assignment),
        {"side": "left", "strength": "clear"},
        headers=HX if htmx else {},
        follow=not htmx,
    )

    html = response.content.decode()
    assignment.refresh_from_db()
    left, right = (Completion.objects.get(pk=cid).model_name for cid in assignment.display_order)
    if htmx:
        assert f"Left was <strong>{left}</strong>, right was <strong>{right}</strong>" in html
    else:  # the redirect's next page carries it as a message
        assert f"Your vote is in: left was {left}, right was {right}." in html
    # The next task's own models stay hidden.
    assert "model-0" not in html and "model-1" not in html


def test_ordinary_pairwise_project_never_reveals_the_models(client, annotator, project):
    item = _arena_item(project, reveal=False)
    assignment = lease(annotator, item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), {"side": "right", "strength": "strong"}, headers=HX
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert "llama-sft-3" not in html and "llama-dpo-7" not in html
    assert "Your vote is in" not in html


def test_invalid_submit_is_422_with_error_and_typed_text_kept(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment),
        {"rationale": "I typed this carefully", "label_helpfulness": "6", "label_unsafe": "on"},
    )

    assert response.status_code == 422
    html = response.content.decode()
    assert "Pick the better reply (or tie / both bad)." in html
    assert "I typed this carefully" in html
    assert 'value="6"' in html
    assert re.search(r'name="label_unsafe" checked', html)
    assert not PairwiseJudgement.objects.exists()
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.LEASED


def test_invalid_htmx_submit_is_422_workspace_partial(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), {"text": "My draft reply", "label_helpfulness": "8"}, headers=HX
    )

    assert response.status_code == 422
    html = response.content.decode().strip()
    assert html.startswith('<div id="workspace"')
    assert "helpfulness must be between 1 and 7." in html
    assert "My draft reply</textarea>" in html
    assert not Demonstration.objects.exists()


def test_second_submit_of_same_task_is_ignored(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)
    data = {"side": "left", "strength": "clear", "rationale": "r", "label_helpfulness": "4"}

    first = client.post(submit_url(assignment), data)
    second = client.post(submit_url(assignment), data)

    assert first.status_code == 302
    assert second.status_code < 400
    assert PairwiseJudgement.objects.filter(assignment=assignment).count() == 1
    assert not JudgementRevision.objects.exists()
    pairwise_item.refresh_from_db()
    assert pairwise_item.submitted_count == 1


@pytest.mark.parametrize("user_fixture", ["reviewer", "nobody"])
def test_submit_is_forbidden_without_annotator_role(client, request, user_fixture, demo_item):
    owner = request.getfixturevalue(user_fixture)
    assignment = Assignment.objects.create(
        item=demo_item, annotator=owner, expires_at=timezone.now() + timedelta(minutes=5)
    )
    client.force_login(owner)

    response = client.post(submit_url(assignment), {"text": "hello"})

    assert response.status_code == 403
    assert not Demonstration.objects.exists()


def test_submit_rejects_get(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)
    assert client.get(submit_url(assignment)).status_code == 405


def test_submit_to_closed_project_shows_error_and_writes_nothing(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    demo_item.project.is_active = False
    demo_item.project.save()
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "my reply"})

    assert response.status_code == 422
    html = response.content.decode()
    assert "This project is closed; your answer was not saved." in html
    assert "my reply</textarea>" in html
    assert not Demonstration.objects.exists()
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.LEASED
    demo_item.refresh_from_db()
    assert demo_item.submitted_count == 0


def test_submit_after_lease_lost_to_someone_else_keeps_the_text(
    client, annotator, other_annotator, demo_item
):
    assignment = lease(annotator, demo_item)
    Assignment.objects.filter(pk=assignment.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    lease(other_annotator, demo_item)  # overlap 1: the slot is now theirs
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "late but precious"})

    assert response.status_code == 422
    html = response.content.decode()
    assert "Your time on this task ran out" in html
    assert "late but precious</textarea>" in html
    assert not Demonstration.objects.exists()


def test_submit_with_expired_lease_still_works_while_slot_is_free(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    Assignment.objects.filter(pk=assignment.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    client.force_login(annotator)

    page = client.get(task_url(assignment)).content.decode()
    response = client.post(submit_url(assignment), {"text": "made it"})

    assert "Your reservation expired" in page
    assert response.status_code == 302
    assert Demonstration.objects.get(assignment=assignment).text == "made it"


# --- pairwise side mapping ---------------------------------------------------------------------


@pytest.mark.parametrize("a_on_left", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_pairwise_side_is_stored_as_canonical_choice_of_displayed_completion(
    client, annotator, pairwise_item, a_on_left, side
):
    comp_a, comp_b = pairwise_item.ordered_completions()
    assignment = lease(annotator, pairwise_item)
    assignment.display_order = [comp_a.pk, comp_b.pk] if a_on_left else [comp_b.pk, comp_a.pk]
    assignment.save()
    client.force_login(annotator)

    panes = pane_texts(client.get(task_url(assignment)).content.decode())
    response = client.post(submit_url(assignment), {"side": side, "strength": "strong"})

    assert response.status_code == 302
    shown = {"left": comp_a if a_on_left else comp_b, "right": comp_b if a_on_left else comp_a}
    assert shown["left"].text in panes["left"]
    assert shown["right"].text in panes["right"]
    judgement = PairwiseJudgement.objects.get(assignment=assignment)
    assert judgement.choice == ("a" if shown[side] == comp_a else "b")
    assert judgement.shown_left == ("a" if a_on_left else "b")
    assert judgement.strength == "strong"


def test_pairwise_left_click_with_queue_shuffle_picks_completion_shown_left(
    client, annotator, other_annotator, pairwise_item
):
    comp_a, _ = pairwise_item.ordered_completions()
    pairwise_item.project.overlap = 2
    pairwise_item.project.save()
    for user in (annotator, other_annotator):
        assignment = lease(user, pairwise_item)
        client.force_login(user)
        left_html = pane_texts(client.get(task_url(assignment)).content.decode())["left"]
        client.post(submit_url(assignment), {"side": "left", "strength": "clear"})

        judgement = PairwiseJudgement.objects.get(assignment=assignment)
        left_is_a = assignment.display_order[0] == comp_a.pk
        assert (comp_a.text in left_html) == left_is_a
        assert judgement.choice == ("a" if left_is_a else "b")
        assert judgement.shown_left == ("a" if left_is_a else "b")


def test_pairwise_without_display_order_maps_left_to_completion_shown_left(
    client, annotator, project
):
    """An assignment made outside the queue (admin, import) has no display_order."""
    item = make_item(project, TaskKind.PAIRWISE)
    comp_first, comp_second = item.ordered_completions()
    # Canonical A is the completion with the higher id: display fallback and A/B disagree.
    item.item_completions.all().delete()
    item.item_completions.create(completion=comp_second, position=0)
    item.item_completions.create(completion=comp_first, position=1)
    assignment = Assignment.objects.create(
        item=item, annotator=annotator, expires_at=timezone.now() + timedelta(minutes=5)
    )
    client.force_login(annotator)

    panes = pane_texts(client.get(task_url(assignment)).content.decode())
    client.post(submit_url(assignment), {"side": "left", "strength": "clear"})

    judgement = PairwiseJudgement.objects.get(assignment=assignment)
    shown_left_is_a = comp_second.text in panes["left"]
    assert judgement.choice == ("a" if shown_left_is_a else "b")
    assert judgement.shown_left == ("a" if shown_left_is_a else "b")


@pytest.mark.parametrize("side", ["left", "right"])
def test_pairwise_decisive_choice_requires_strength(client, annotator, pairwise_item, side):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": side})

    assert response.status_code == 422
    assert "Say how much better: slightly, clearly or much." in response.content.decode()
    assert not PairwiseJudgement.objects.exists()


@pytest.mark.parametrize("side", ["tie", "both_bad"])
def test_pairwise_strength_is_dropped_for_tie_and_both_bad(client, annotator, pairwise_item, side):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": side, "strength": "strong"})

    assert response.status_code == 302
    judgement = PairwiseJudgement.objects.get(assignment=assignment)
    assert judgement.choice == side
    assert judgement.strength == ""


# --- ranking -----------------------------------------------------------------------------------


def test_ranking_with_ties_is_stored_as_best_first_groups(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    c0, c1, c2, c3 = assignment.display_order
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), rank_post(assignment, {c0: 2, c1: 1, c2: 2, c3: 4})
    )

    assert response.status_code == 302
    judgement = RankingJudgement.objects.get(assignment=assignment)
    assert judgement.ranking == [[c1], sorted([c0, c2]), [c3]]


def test_ranking_strict_order_is_stored(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    c0, c1, c2, c3 = assignment.display_order
    client.force_login(annotator)

    client.post(
        submit_url(assignment),
        rank_post(assignment, {c0: 4, c1: 3, c2: 2, c3: 1}, rationale="why"),
    )

    judgement = RankingJudgement.objects.get(assignment=assignment)
    assert judgement.ranking == [[c3], [c2], [c1], [c0]]
    assert judgement.rationale == "why"


def test_ranking_all_tied_is_refused(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), rank_post(assignment, dict.fromkeys(assignment.display_order, 1))
    )

    assert response.status_code == 422
    assert "All completions tied" in response.content.decode()
    assert not RankingJudgement.objects.exists()


# --- labels ------------------------------------------------------------------------------------


def test_label_answers_are_stored_as_int_and_bool(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    client.post(
        submit_url(assignment),
        {"text": "A reply", "label_helpfulness": "5", "label_unsafe": "on"},
    )

    labels = Demonstration.objects.get(assignment=assignment).labels
    assert labels == {"helpfulness": 5, "unsafe": True}
    assert isinstance(labels["helpfulness"], int)


def test_unticked_flag_is_stored_false_and_blank_likert_omitted(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    client.post(submit_url(assignment), {"text": "A reply", "label_helpfulness": ""})

    assert Demonstration.objects.get(assignment=assignment).labels == {"unsafe": False}


@pytest.mark.parametrize("value", ["0", "8", "-1", "700"])
def test_out_of_range_likert_is_422_and_nothing_written(client, annotator, pairwise_item, value):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": "tie", "label_helpfulness": value})

    assert response.status_code == 422
    assert "helpfulness must be between 1 and 7." in response.content.decode()
    assert not PairwiseJudgement.objects.exists()
    pairwise_item.refresh_from_db()
    assert pairwise_item.submitted_count == 0


# --- skip --------------------------------------------------------------------------------------


def test_skip_records_reason_and_redirects_to_work(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(skip_url(assignment), {"reason": "Not my language"})

    assert response.status_code == 302
    assert response["Location"] == work_url(pairwise_item.project)
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.SKIPPED
    assert assignment.skip_reason == "Not my language"
    assert judgement_count() == 0


def test_skipped_item_is_not_offered_again(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)
    client.post(skip_url(assignment))

    response = client.get(work_url(pairwise_item.project))

    assert response.status_code == 200
    assert "No tasks left" in response.content.decode()


def test_htmx_skip_returns_next_task_workspace(client, annotator, pairwise_item):
    second = make_item(pairwise_item.project, TaskKind.PAIRWISE)
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(skip_url(assignment), {"reason": ""}, headers=HX)

    nxt = Assignment.objects.get(annotator=annotator, item=second)
    assert response.status_code == 200
    assert response["HX-Push-Url"] == task_url(nxt)
    assert response.content.decode().strip().startswith('<div id="workspace"')


def test_skip_of_submitted_task_is_refused_with_message(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text="done")
    client.force_login(annotator)

    response = client.post(skip_url(assignment))

    assert response.status_code == 422
    assert "This task is already submitted." in response.content.decode()
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.SUBMITTED


def test_overlong_skip_reason_is_refused_and_the_task_stays_leased(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(skip_url(assignment), {"reason": "r" * 501}, headers=HX)

    assert response.status_code == 422
    assert "at most 500 characters" in response.content.decode()
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.LEASED


@pytest.mark.parametrize("user_fixture", ["reviewer", "nobody"])
def test_skip_is_forbidden_without_annotator_role(client, request, user_fixture, pairwise_item):
    owner = request.getfixturevalue(user_fixture)
    assignment = Assignment.objects.create(
        item=pairwise_item, annotator=owner, expires_at=timezone.now() + timedelta(minutes=5)
    )
    client.force_login(owner)

    assert client.post(skip_url(assignment)).status_code == 403
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.LEASED


def test_skip_rejects_get(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)
    assert client.get(skip_url(assignment)).status_code == 405


# --- history and editing -----------------------------------------------------------------------


def test_history_lists_own_judgements_with_edit_links(
    client, annotator, other_annotator, demo_item, pairwise_item
):
    project = demo_item.project
    project.overlap = 2
    project.save()
    mine = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=mine.pk, annotator=annotator, text="My words")
    theirs = lease(other_annotator, pairwise_item)
    services.pairwise_submit(assignment_id=theirs.pk, annotator=other_annotator, choice="tie")
    client.force_login(annotator)

    response = client.get("/history/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "My words" in html
    assert f'href="{task_url(mine)}"' in html
    assert task_url(theirs) not in html
    assert [row.assignment for row in response.context["page"]] == [mine]


def test_history_hides_edit_link_for_closed_projects(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text="old")
    demo_item.project.is_active = False
    demo_item.project.save()
    client.force_login(annotator)

    html = client.get("/history/").content.decode()

    assert "old" in html
    assert f'href="{task_url(assignment)}"' not in html


def test_empty_history_points_to_projects(client, annotator):
    client.force_login(annotator)
    assert "Nothing yet." in client.get("/history/").content.decode()


@pytest.mark.parametrize("user_fixture", ["reviewer", "nobody"])
def test_history_is_forbidden_without_annotator_role(client, request, user_fixture):
    client.force_login(request.getfixturevalue(user_fixture))
    assert client.get("/history/").status_code == 403


def test_admin_history_is_allowed(client, admin_user):
    client.force_login(admin_user)
    assert client.get("/history/").status_code == 200


def test_history_rejects_post(client, annotator):
    client.force_login(annotator)
    assert client.post("/history/").status_code == 405


def test_submitted_demonstration_opens_prefilled_with_save_changes(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(
        assignment_id=assignment.pk,
        annotator=annotator,
        text="First version",
        labels={"helpfulness": 3, "unsafe": True},
    )
    client.force_login(annotator)

    response = client.get(task_url(assignment))

    assert response.status_code == 200
    html = response.content.decode()
    assert "First version</textarea>" in html
    assert "Save changes" in html
    assert "Editing a submitted judgement" in html
    assert 'value="3"' in html
    assert re.search(r'name="label_unsafe" checked', html)
    assert skip_url(assignment) not in html  # no skipping a finished task


def test_editing_demonstration_keeps_revision_and_redirects_to_history(
    client, annotator, demo_item
):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(
        assignment_id=assignment.pk, annotator=annotator, text="First version"
    )
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), {"edit": "1", "text": "Second version", "label_helpfulness": "7"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/history/"
    demonstration = Demonstration.objects.get(assignment=assignment)
    assert demonstration.text == "Second version"
    assert demonstration.labels == {"helpfulness": 7, "unsafe": False}
    revision = JudgementRevision.objects.get(assignment=assignment)
    assert revision.payload["text"] == "First version"
    assert revision.edited_by == annotator
    assert Demonstration.objects.count() == 1
    demo_item.refresh_from_db()
    assert demo_item.submitted_count == 1
    follow = client.get("/history/").content.decode()
    assert "Your changes are saved; the earlier version is kept." in follow


def test_htmx_edit_navigates_to_history_instead_of_swapping_it_into_workspace(
    client, annotator, demo_item
):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text="v1")
    client.force_login(annotator)

    # The edit form posts with hx-post / hx-target="#workspace": a bare 302 would be followed by
    # the XHR and the whole history page swapped into the task's #workspace.
    response = client.post(submit_url(assignment), {"edit": "1", "text": "v2"}, headers=HX)

    assert Demonstration.objects.get(assignment=assignment).text == "v2"
    navigates = response.get("HX-Redirect") == "/history/" or "/history/" in response.get(
        "HX-Location", ""
    )
    assert navigates, (response.status_code, dict(response.headers))


def test_submitted_pairwise_opens_with_displayed_side_checked(client, annotator, pairwise_item):
    comp_a, comp_b = pairwise_item.ordered_completions()
    assignment = lease(annotator, pairwise_item)
    assignment.display_order = [comp_b.pk, comp_a.pk]  # B shown left
    assignment.save()
    client.force_login(annotator)
    client.post(submit_url(assignment), {"side": "left", "strength": "slight", "rationale": "R1"})
    assert PairwiseJudgement.objects.get(assignment=assignment).choice == "b"

    html = client.get(task_url(assignment)).content.decode()

    assert re.search(r'name="side" value="left"\s+checked', html)
    assert not re.search(r'name="side" value="right"\s+checked', html)
    assert re.search(r'name="strength" value="slight"\s+checked', html)
    assert "R1</textarea>" in html
    assert "Save changes" in html


def test_editing_pairwise_keeps_revision_and_remaps_side(client, annotator, pairwise_item):
    comp_a, comp_b = pairwise_item.ordered_completions()
    assignment = lease(annotator, pairwise_item)
    assignment.display_order = [comp_b.pk, comp_a.pk]
    assignment.save()
    client.force_login(annotator)
    client.post(submit_url(assignment), {"edit": "1", "side": "left", "strength": "slight"})

    response = client.post(
        submit_url(assignment), {"edit": "1", "side": "right", "strength": "strong"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/history/"
    judgement = PairwiseJudgement.objects.get(assignment=assignment)
    assert judgement.choice == "a"
    assert judgement.strength == "strong"
    assert judgement.shown_left == "b"
    revision = JudgementRevision.objects.get(assignment=assignment)
    assert revision.payload["choice"] == "b"
    assert revision.payload["strength"] == "slight"


def test_submitted_ranking_opens_with_ranks_selected(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    c0, c1, c2, c3 = assignment.display_order
    client.force_login(annotator)
    client.post(submit_url(assignment), rank_post(assignment, {c0: 3, c1: 1, c2: 1, c3: 2}))

    html = client.get(task_url(assignment)).content.decode()

    def selected(cid):
        select = re.search(rf'<select name="rank_{cid}".*?</select>', html, re.S).group(0)
        return int(re.search(r'<option value="(\d+)" selected>', select).group(1))

    # Stored groups [[c1, c2], [c3], [c0]] come back as ranks 1, 1, 2, 3.
    assert [selected(c) for c in (c0, c1, c2, c3)] == [3, 1, 1, 2]
    assert "Save changes" in html


def test_editing_ranking_keeps_revision(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    c0, c1, c2, c3 = assignment.display_order
    client.force_login(annotator)
    client.post(
        submit_url(assignment), {**rank_post(assignment, {c0: 1, c1: 2, c2: 3, c3: 4}), "edit": "1"}
    )

    response = client.post(
        submit_url(assignment), {**rank_post(assignment, {c0: 4, c1: 3, c2: 2, c3: 1}), "edit": "1"}
    )

    assert response.status_code == 302
    assert RankingJudgement.objects.get(assignment=assignment).ranking == [[c3], [c2], [c1], [c0]]
    assert JudgementRevision.objects.get(assignment=assignment).payload["ranking"] == [
        [c0],
        [c1],
        [c2],
        [c3],
    ]


def test_invalid_edit_is_422_and_keeps_original(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text="Keep")
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), {"edit": "1", "text": "New", "label_helpfulness": "99"}
    )

    assert response.status_code == 422
    assert "New</textarea>" in response.content.decode()
    assert Demonstration.objects.get(assignment=assignment).text == "Keep"
    assert not JudgementRevision.objects.exists()


def test_editing_in_closed_project_is_refused(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text="Keep")
    demo_item.project.is_active = False
    demo_item.project.save()
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"edit": "1", "text": "Changed"})

    assert response.status_code == 422
    assert "This project is closed." in response.content.decode()
    assert Demonstration.objects.get(assignment=assignment).text == "Keep"
    assert not JudgementRevision.objects.exists()


# --- admin progress ----------------------------------------------------------------------------


def test_progress_reports_items_annotators_medians_and_stuck_items(
    client, annotator, other_annotator, admin_user, project
):
    done_1 = make_item(project, TaskKind.DEMONSTRATION)
    done_2 = make_item(project, TaskKind.DEMONSTRATION)
    done_3 = make_item(project, TaskKind.DEMONSTRATION)
    stuck = make_item(project, TaskKind.DEMONSTRATION)
    skipped_once = make_item(project, TaskKind.DEMONSTRATION)
    make_item(project, TaskKind.DEMONSTRATION)  # untouched

    for item, user, seconds in [
        (done_1, annotator, 10),
        (done_2, annotator, 30),
        (done_3, other_annotator, 5),
    ]:
        assignment = lease(user, item)
        services.demonstration_submit(
            assignment_id=assignment.pk, annotator=user, text="x", seconds_spent=seconds
        )
    for user, reason in [(annotator, "Too long"), (other_annotator, "Unclear prompt")]:
        assignment = lease(user, stuck)
        services.assignment_skip(assignment_id=assignment.pk, annotator=user, reason=reason)
    assignment = lease(annotator, skipped_once)
    services.assignment_skip(assignment_id=assignment.pk, annotator=annotator, reason="Meh")
    client.force_login(admin_user)

    response = client.get(progress_url(project))

    assert response.status_code == 200
    stats = response.context["stats"]
    assert (stats.items, stats.complete, stats.needing_work) == (6, 3, 3)
    assert stats.judgements == 3
    assert stats.median_seconds == 10.0
    per = {row.username: row for row in stats.per_annotator}
    assert (per["ann"].judgements, per["ann"].skips, per["ann"].median_seconds) == (2, 2, 20.0)
    assert (per["ann2"].judgements, per["ann2"].skips, per["ann2"].median_seconds) == (1, 1, 5.0)
    skipped = {row.item.pk: row for row in stats.skipped}
    assert set(skipped) == {stuck.pk, skipped_once.pk}
    assert skipped[stuck.pk].stuck is True
    assert skipped[stuck.pk].skips == 2
    assert sorted(skipped[stuck.pk].reasons) == ["Too long", "Unclear prompt"]
    assert skipped[skipped_once.pk].stuck is False
    assert stats.stuck_count == 1
    html = response.content.decode()
    assert "1 skipped by everyone who could take them" in html
    assert 'class="stuck"' in html
    assert "Unclear prompt" in html
    assert f"/records/{stuck.pk}/" in html  # the record page, not the Django admin


def test_progress_counts_stuck_against_project_member_list(
    client, annotator, other_annotator, admin_user, project
):
    project.annotators.add(annotator)  # only one eligible annotator
    item = make_item(project, TaskKind.DEMONSTRATION)
    assignment = lease(annotator, item)
    services.assignment_skip(assignment_id=assignment.pk, annotator=annotator)
    client.force_login(admin_user)

    stats = client.get(progress_url(project)).context["stats"]

    assert stats.stuck_count == 1
    assert stats.skipped[0].stuck is True


def test_item_is_not_stuck_while_an_eligible_annotator_has_not_seen_it(
    client, annotator, other_annotator, admin_user, project
):
    """Admins may annotate too, but they are not counted as eligible annotators: an admin's skip
    must not use up other_annotator's turn, who can still judge the item."""
    item = make_item(project, TaskKind.DEMONSTRATION)
    for user in (admin_user, annotator):
        assignment = lease(user, item)
        services.assignment_skip(assignment_id=assignment.pk, annotator=user)
    assert lease(other_annotator, item)  # the item is still open to someone eligible
    client.force_login(admin_user)

    stats = client.get(progress_url(project)).context["stats"]

    assert stats.skipped[0].skips == 2
    assert stats.skipped[0].stuck is False
    assert stats.stuck_count == 0


def test_progress_of_empty_project_renders(client, admin_user, project):
    client.force_login(admin_user)

    response = client.get(progress_url(project))

    assert response.status_code == 200
    html = response.content.decode()
    assert "No work yet." in html
    assert "No skips." in html


@pytest.mark.parametrize("user_fixture", ["annotator", "reviewer", "nobody"])
def test_progress_is_admin_only(client, request, user_fixture, project):
    client.force_login(request.getfixturevalue(user_fixture))
    assert client.get(progress_url(project)).status_code == 403


def test_progress_of_unknown_project_is_404(client, admin_user):
    client.force_login(admin_user)
    assert client.get("/projects/424242/progress/").status_code == 404


def test_progress_rejects_post(client, admin_user, project):
    client.force_login(admin_user)
    assert client.post(progress_url(project)).status_code == 405


# --- markdown preview --------------------------------------------------------------------------


@pytest.mark.parametrize("user_fixture", ["annotator", "reviewer", "admin_user"])
def test_markdown_preview_renders_for_those_who_write_markdown(client, request, user_fixture):
    client.force_login(request.getfixturevalue(user_fixture))

    response = client.post("/markdown/preview/", {"text": "Some **bold** and `code`"})

    assert response.status_code == 200
    assert response.content.decode().strip() == (
        "<p>Some <strong>bold</strong> and <code>code</code></p>"
    )


def test_markdown_preview_of_nothing_is_empty(client, annotator):
    client.force_login(annotator)
    response = client.post("/markdown/preview/")
    assert response.status_code == 200
    assert response.content == b""


def test_markdown_preview_rejects_get(client, annotator):
    client.force_login(annotator)
    assert client.get("/markdown/preview/", {"text": "x"}).status_code == 405


# --- Django admin ------------------------------------------------------------------------------

ADMIN_MODELS = [
    "project",
    "prompt",
    "completion",
    "item",
    "assignment",
    "demonstration",
    "pairwisejudgement",
    "rankingjudgement",
    "judgementrevision",
]


@pytest.fixture
def filled_project(annotator, project):
    """One submitted judgement of each kind, one edit (revision) and one skip."""
    project.overlap = 1
    project.save()
    demo = make_item(project, TaskKind.DEMONSTRATION)
    pair = make_item(project, TaskKind.PAIRWISE)
    rank = make_item(project, TaskKind.RANKING)
    skipped = make_item(project, TaskKind.PAIRWISE)
    a = lease(annotator, demo)
    services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="demo")
    services.judgement_edit(assignment_id=a.pk, annotator=annotator, changes={"text": "demo 2"})
    a = lease(annotator, pair)
    services.pairwise_submit(assignment_id=a.pk, annotator=annotator, choice="a", strength="clear")
    a = lease(annotator, rank)
    services.ranking_submit(
        assignment_id=a.pk, annotator=annotator, ranking=[[c] for c in a.display_order]
    )
    a = lease(annotator, skipped)
    services.assignment_skip(assignment_id=a.pk, annotator=annotator, reason="why not")
    return project


@pytest.mark.parametrize("model", ADMIN_MODELS)
def test_admin_changelist_opens_for_admin(client, admin_user, filled_project, model):
    client.force_login(admin_user)

    response = client.get(f"/admin/feedback/{model}/")

    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1


@pytest.mark.parametrize("model", ADMIN_MODELS)
def test_admin_changelist_search_works(client, admin_user, filled_project, model):
    client.force_login(admin_user)
    assert client.get(f"/admin/feedback/{model}/", {"q": "ann"}).status_code == 200


@pytest.mark.parametrize("model", ADMIN_MODELS)
def test_admin_change_page_opens_for_admin(client, admin_user, filled_project, model):
    from django.apps import apps

    obj = apps.get_model("feedback", model).objects.order_by("pk").first()
    client.force_login(admin_user)

    assert client.get(f"/admin/feedback/{model}/{obj.pk}/change/").status_code == 200


@pytest.mark.parametrize("model", ADMIN_MODELS)
@pytest.mark.parametrize("user_fixture", ["annotator", "reviewer", "nobody"])
def test_admin_changelist_is_closed_to_non_staff(client, request, user_fixture, model):
    client.force_login(request.getfixturevalue(user_fixture))

    response = client.get(f"/admin/feedback/{model}/")

    assert response.status_code in (302, 403)
    if response.status_code == 302:
        assert response["Location"].startswith("/admin/login/")


def test_staff_without_model_permissions_gets_403_in_admin(client, roles):
    staff = UserFactory(username="staffer", is_staff=True)
    client.force_login(staff)

    assert client.get("/admin/feedback/project/").status_code == 403


def test_plain_work_then_submit_loop_judges_the_item(client, annotator, pairwise_item):
    """JavaScript off: follow the work redirect, post the form, the item is judged once."""
    client.force_login(annotator)
    location = client.get(work_url(pairwise_item.project))["Location"]
    client.post(f"{location}submit/", {"side": "tie"})

    assert Item.objects.get().submitted_count == 1
    assert Assignment.objects.get().status == AssignmentStatus.SUBMITTED
