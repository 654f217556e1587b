"""The project pages: admins create and edit projects without the Django admin (issue #17)."""

import pytest

from feedback.models import Project
from tests.factories import ProjectFactory


def _form(**changes) -> dict:
    """What the new-project page posts: settings, two members' worth of checkboxes, labels."""
    data = {
        "name": "Helpful replies",
        "description": "Which reply helps more",
        "guidelines": "Prefer **correct** replies.",
        "task_kinds": ["pairwise", "ranking"],
        "overlap": "2",
        "lease_seconds": "900",
        "gold_rate": "0.1",
        "reveal_models": "on",
        "is_active": "on",
        "labels-TOTAL_FORMS": "4",
        "labels-INITIAL_FORMS": "0",
        "labels-0-name": "helpfulness",
        "labels-0-label": "Helpful",
        "labels-0-kind": "likert",
        "labels-0-scope": "reply",
        "labels-0-min": "1",
        "labels-0-max": "7",
        "labels-1-name": "unsafe",
        "labels-1-kind": "flag",
        "labels-2-name": "dropped",
        "labels-2-kind": "flag",
        "labels-2-DELETE": "on",
        "labels-3-name": "",
        "labels-3-kind": "likert",
    }
    return data | changes


@pytest.mark.parametrize("path", ["/projects/new/", "/projects/{id}/edit/"])
def test_only_admins_may_open_the_project_pages(client, annotator, reviewer, project, path):
    for user in (annotator, reviewer):
        client.force_login(user)
        assert client.get(path.format(id=project.pk)).status_code == 403


def test_new_project_page_has_a_label_editor_and_no_raw_json(client, admin_user):
    client.force_login(admin_user)
    html = client.get("/projects/new/").content.decode()
    assert 'name="labels-0-kind"' in html
    assert "label_schema" not in html
    assert 'hx-post="/markdown/preview/?field=guidelines"' in html
    assert "<script>" not in html and "style=" not in html


def test_admin_creates_a_project_with_labels_and_members(client, admin_user, annotator):
    client.force_login(admin_user)
    page = client.post("/projects/new/", _form(annotators=[str(annotator.pk)]))
    project = Project.objects.get()
    assert page.status_code == 302 and page["Location"] == f"/projects/{project.pk}/edit/"
    assert project.task_kinds == ["pairwise", "ranking"]
    assert (project.overlap, project.lease_seconds, project.gold_rate) == (2, 900, 0.1)
    assert project.reveal_models and project.is_active
    assert [spec["name"] for spec in project.label_schema] == ["helpfulness", "unsafe"]
    assert project.label_schema[0] | {} == {
        "name": "helpfulness", "kind": "likert", "label": "Helpful", "min": 1, "max": 7,
        "scope": "reply", "required": False,
    }  # fmt: skip
    assert list(project.annotators.all()) == [annotator]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"overlap": "0"}, "Overlap is at least 1"),
        ({"lease_seconds": "0"}, "A lease lasts at least 60 seconds"),
        ({"gold_rate": "7"}, "The gold rate is a share from 0 to 0.5"),
        ({"labels-0-min": "9", "labels-0-max": "2"}, "helpfulness: min (9) must be below max (2)"),
        ({"task_kinds": []}, "Choose at least one task kind"),
        ({"labels-1-name": "has space"}, "letters, digits"),
    ],
)
def test_invalid_settings_are_refused_with_the_models_message(client, admin_user, changes, message):
    client.force_login(admin_user)
    page = client.post("/projects/new/", _form(**changes))
    assert page.status_code == 422
    assert message in page.content.decode()
    assert not Project.objects.exists()


def test_admin_edits_a_project_and_a_refused_edit_changes_nothing(client, admin_user):
    project = ProjectFactory(
        name="Old", label_schema=[{"name": "unsafe", "kind": "flag", "label": "Unsafe"}]
    )
    client.force_login(admin_user)
    html = client.get(f"/projects/{project.pk}/edit/").content.decode()
    assert 'value="unsafe"' in html and 'value="Old"' in html
    refused = client.post(f"/projects/{project.pk}/edit/", _form(name="New", overlap="0"))
    assert refused.status_code == 422
    project.refresh_from_db()
    assert project.name == "Old" and project.overlap == 1
    saved = client.post(f"/projects/{project.pk}/edit/", _form(name="New"))
    assert saved.status_code == 302
    project.refresh_from_db()
    assert project.name == "New" and project.overlap == 2
    assert [spec["name"] for spec in project.label_schema] == ["helpfulness", "unsafe"]


def test_add_label_without_javascript_adds_a_blank_row_and_saves_nothing(client, admin_user):
    client.force_login(admin_user)
    page = client.post("/projects/new/", _form(add_label="1"))
    assert page.status_code == 200
    assert 'name="labels-4-name"' in page.content.decode()
    assert not Project.objects.exists()


def test_guidelines_preview_renders_markdown(client, admin_user):
    client.force_login(admin_user)
    page = client.post("/markdown/preview/?field=guidelines", {"guidelines": "**bold**"})
    assert "<strong>bold</strong>" in page.content.decode()


def test_per_reply_and_free_text_labels_are_asked_and_saved(client, annotator, pairwise_item):
    project = pairwise_item.project
    project.label_schema = [
        {"name": "quality", "kind": "likert", "min": 1, "max": 5, "scope": "reply"},
        {"name": "note", "kind": "text", "label": "Note"},
    ]
    project.save()
    client.force_login(annotator)
    task = client.get(f"/projects/{project.pk}/work/", follow=True)
    html = task.content.decode()
    ids = [ic.completion_id for ic in pairwise_item.item_completions.all()]
    for cid in ids:
        assert f'name="label_quality.{cid}"' in html
    assert 'name="label_note"' in html
    assignment = pairwise_item.assignments.get()
    page = client.post(
        f"/tasks/{assignment.pk}/submit/",
        {
            "side": "left",
            "strength": "clear",
            f"label_quality.{ids[0]}": "4",
            f"label_quality.{ids[1]}": "2",
            "label_note": "short",
        },
    )
    assert page.status_code == 302, page.content.decode()[-3000:]
    judgement = pairwise_item.pairwisejudgement_set.get()
    assert judgement.labels == {"quality": {str(ids[0]): 4, str(ids[1]): 2}, "note": "short"}
