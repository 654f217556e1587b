"""Small fixes on the annotation and review screens (issue #17)."""

from feedback import selectors as selectors_module
from feedback import services
from feedback.models import TaskKind
from feedback.services import review as review_services
from tests.factories import make_item


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
