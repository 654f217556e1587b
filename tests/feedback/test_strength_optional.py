"""A project may let an A/B vote leave out how much better (issue #17): Chatbot Arena is one
click. The setting is on the project page, checked by the model, and the task screen then casts
a vote on its first key."""

import pytest
from django.core.exceptions import ValidationError

from feedback import services
from feedback.models import Assignment, PairwiseJudgement, Project, TaskKind
from tests.factories import ProjectFactory, make_item
from tests.feedback.test_project_views import _form

pytestmark = pytest.mark.django_db


def lease(item, user):
    return Assignment.objects.create(item=item, annotator=user, expires_at="2100-01-01T00:00Z")


def test_a_vote_without_strength_is_refused_unless_the_project_makes_it_optional(annotator):
    strict = make_item(ProjectFactory(name="Strict"), TaskKind.PAIRWISE)
    with pytest.raises(ValidationError) as refused:
        services.pairwise_submit(assignment_id=lease(strict, annotator).pk, annotator=annotator,
                                 choice="a")  # fmt: skip
    assert "strength" in refused.value.message_dict

    arena = make_item(ProjectFactory(name="Arena", strength_optional=True), TaskKind.PAIRWISE)
    vote = services.pairwise_submit(
        assignment_id=lease(arena, annotator).pk, annotator=annotator, choice="b"
    )
    assert (vote.choice, vote.strength) == ("b", "")
    # Optional is not forbidden: a strength given is kept; a made-up one is still refused.
    other = lease(make_item(arena.project, TaskKind.PAIRWISE), annotator)
    with pytest.raises(ValidationError):
        services.pairwise_submit(assignment_id=other.pk, annotator=annotator, choice="a",
                                 strength="enormous")  # fmt: skip
    kept = services.pairwise_submit(assignment_id=other.pk, annotator=annotator, choice="a",
                                    strength="strong")  # fmt: skip
    assert kept.strength == "strong"


def test_the_task_form_submits_a_pick_without_strength_in_an_optional_project(client, annotator):
    project = ProjectFactory(name="Arena", strength_optional=True)
    make_item(project, TaskKind.PAIRWISE)
    make_item(project, TaskKind.PAIRWISE)
    client.force_login(annotator)
    html = client.get(f"/projects/{project.pk}/work/", follow=True).content.decode()
    assignment = Assignment.objects.get(annotator=annotator)
    assert "data-submit-on-pick" in html
    assert "(for left or right; optional)" in html
    assert "One key casts your vote" in html

    response = client.post(f"/tasks/{assignment.pk}/submit/", {"side": "left"})

    assert response.status_code == 302
    assert PairwiseJudgement.objects.get(assignment=assignment).strength == ""


def test_a_strict_project_still_asks_for_the_strength_and_says_so(client, annotator):
    project = ProjectFactory(name="Strict")
    make_item(project, TaskKind.PAIRWISE)
    client.force_login(annotator)
    html = client.get(f"/projects/{project.pk}/work/", follow=True).content.decode()
    assert "data-submit-on-pick" not in html
    assert "(for left or right)</span>" in html
    assignment = Assignment.objects.get(annotator=annotator)
    response = client.post(f"/tasks/{assignment.pk}/submit/", {"side": "left"})
    assert response.status_code == 422
    assert "Say how much better" in response.content.decode()


def test_a_required_label_keeps_the_submit_button_even_when_strength_is_optional(client, annotator):
    """The first key cannot be the vote when a label must still be answered."""
    project = ProjectFactory(
        name="Labelled", strength_optional=True,
        label_schema=[{"name": "safe", "kind": "likert", "min": 1, "max": 5, "required": True}],
    )  # fmt: skip
    make_item(project, TaskKind.PAIRWISE)
    client.force_login(annotator)
    html = client.get(f"/projects/{project.pk}/work/", follow=True).content.decode()
    assert "data-submit-on-pick" not in html and "(for left or right; optional)" in html


def test_the_project_page_sets_it_and_the_model_checks_it(client, admin_user):
    client.force_login(admin_user)
    assert "A/B votes may skip" in client.get("/projects/new/").content.decode()
    response = client.post("/projects/new/", _form(strength_optional="on"))
    assert response.status_code == 302
    project = Project.objects.get(name="Helpful replies")
    assert project.strength_optional is True
    client.post(f"/projects/{project.pk}/edit/", _form())  # unticked
    project.refresh_from_db()
    assert project.strength_optional is False

    with pytest.raises(ValidationError) as refused:
        services.project_update(project=project, strength_optional="sometimes")
    assert "strength_optional" in refused.value.message_dict
    project.refresh_from_db()
    assert project.strength_optional is False
