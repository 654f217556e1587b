"""A project's settings are checked by the model, so the Django admin, the project pages, the API
and the services refuse the same values with the same messages (issue #17)."""

import pytest
from django.core.exceptions import ValidationError

from feedback import services
from feedback.models import Project, TaskKind
from feedback.services.validation import clean_labels
from feedback.validators import TASK_KINDS
from tests.factories import ProjectFactory

BAD_SETTINGS = [
    ("overlap", 0, "at least 1"),
    ("lease_seconds", 0, "at least 60 seconds"),
    ("gold_rate", 7, "from 0 to 0.5"),
    ("gold_rate", -0.1, "from 0 to 0.5"),
    ("label_schema", [{"name": "q", "kind": "likert", "min": 5, "max": 1}],
     "min (5) must be below max (1)"),
    ("label_schema", [{"name": "q", "kind": "stars"}], "kind is likert, flag or text"),
    ("label_schema", [{"name": "two words", "kind": "flag"}], "letters, digits"),
    ("label_schema", [{"name": "q", "kind": "likert", "scope": "page"}], "per item or per reply"),
    ("task_kinds", ["bogus", 5], "Unknown task kind 'bogus', 5"),
    ("task_kinds", [], "at least one task kind"),
    ("task_kinds", "pairwise", "at least one task kind"),
]  # fmt: skip


def test_validators_know_every_task_kind():
    assert set(TASK_KINDS) == set(TaskKind.values)


@pytest.mark.parametrize(("field", "value", "message"), BAD_SETTINGS)
def test_model_full_clean_refuses_bad_settings(db, field, value, message):
    project = ProjectFactory.build(**{field: value})
    with pytest.raises(ValidationError) as caught:
        project.full_clean()
    assert list(caught.value.message_dict) == [field]
    assert message in " ".join(caught.value.message_dict[field])


@pytest.mark.parametrize(("field", "value", "message"), BAD_SETTINGS)
def test_project_create_refuses_bad_settings_and_writes_nothing(db, field, value, message):
    settings = {"name": "Refused", "task_kinds": ["pairwise"], field: value}
    with pytest.raises(ValidationError) as caught:
        services.project_create(**settings)
    assert message in " ".join(caught.value.message_dict[field])
    assert not Project.objects.exists()


@pytest.mark.parametrize(("field", "value", "message"), BAD_SETTINGS)
def test_project_update_refuses_bad_settings_and_keeps_the_row(db, field, value, message):
    project = ProjectFactory(overlap=2)
    before = Project.objects.values().get(pk=project.pk)
    with pytest.raises(ValidationError) as caught:
        services.project_update(project=project, description="changed", **{field: value})
    assert message in " ".join(caught.value.message_dict[field])
    assert Project.objects.values().get(pk=project.pk) == before
    assert project.description == ""  # the caller's object is rolled back too


def test_project_update_saves_valid_settings_and_members(db, annotator):
    project = ProjectFactory()
    services.project_update(
        project=project,
        annotators=[annotator],
        name="  Renamed  ",
        gold_rate=0.2,
        label_schema=[{"name": "note", "kind": "text"}, {"name": "q", "kind": "likert"}],
    )
    project.refresh_from_db()
    assert project.name == "Renamed"
    assert project.gold_rate == 0.2
    assert list(project.annotators.all()) == [annotator]
    assert project.label_schema[1] == {
        "name": "q", "kind": "likert", "label": "", "min": 1, "max": 5, "scope": "item",
        "required": False,
    }  # fmt: skip


def test_project_update_refuses_unknown_settings(db):
    with pytest.raises(ValidationError, match="Unknown project settings: colour"):
        services.project_update(project=ProjectFactory(), colour="red")


def test_project_names_are_unique(db):
    services.project_create(name="Same", task_kinds=["pairwise"])
    with pytest.raises(ValidationError) as caught:
        services.project_create(name="Same", task_kinds=["ranking"])
    assert "name" in caught.value.message_dict


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("overlap", "0", "at least 1"),
        ("lease_seconds", "0", "at least 60 seconds"),
        ("gold_rate", "7", "from 0 to 0.5"),
        ("task_kinds", '["bogus", 5]', "Unknown task kind"),
        ("label_schema", '[{"name": "q", "kind": "likert", "min": 9, "max": 2}]', "below max"),
    ],
)
def test_django_admin_refuses_bad_settings(client, admin_user, field, value, message):
    client.force_login(admin_user)
    form = {
        "name": "From the admin",
        "description": "",
        "guidelines": "",
        "task_kinds": '["pairwise"]',
        "overlap": "1",
        "lease_seconds": "1800",
        "label_schema": "[]",
        "is_active": "on",
        "gold_rate": "0",
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        field: value,
    }
    page = client.post("/admin/feedback/project/add/", form)
    assert page.status_code == 200
    assert message in page.content.decode()
    assert not Project.objects.exists()
    # And the same form with good values is accepted, so the test above tested the value.
    good = {"overlap": "1", "lease_seconds": "60", "gold_rate": "0.5", "task_kinds": '["ranking"]'}
    form[field] = good.get(field, "[]")
    assert client.post("/admin/feedback/project/add/", form).status_code == 302


def test_project_list_answers_after_a_refused_update(client, admin_user):
    """Task kinds ["bogus", 5] used to be saved, and then GET /api/projects was a 500."""
    project = ProjectFactory()
    with pytest.raises(ValidationError):
        services.project_update(project=project, task_kinds=["bogus", 5])
    client.force_login(admin_user)
    assert client.get("/api/projects").status_code == 200


def test_free_text_and_per_reply_labels_are_checked():
    schema = [
        {"name": "note", "kind": "text", "label": "", "required": True},
        {"name": "q", "kind": "likert", "min": 1, "max": 5, "scope": "reply", "required": True},
    ]
    answers = clean_labels(schema, {"note": "fine", "q": {"7": "2", "8": 5}}, reply_ids=[7, 8])
    assert answers == {"note": "fine", "q": {"7": 2, "8": 5}}
    with pytest.raises(ValidationError, match="rate every reply"):
        clean_labels(schema, {"note": "x", "q": {"7": 2}}, reply_ids=[7, 8])
    with pytest.raises(ValidationError, match="not replies of this task"):
        clean_labels(schema, {"note": "x", "q": {"7": 2, "8": 1, "9": 1}}, reply_ids=[7, 8])
    with pytest.raises(ValidationError, match="between 1 and 5"):
        clean_labels(schema, {"note": "x", "q": {"7": 2, "8": 6}}, reply_ids=[7, 8])
    with pytest.raises(ValidationError, match="is required"):
        clean_labels(schema, {"q": {"7": 2, "8": 1}}, reply_ids=[7, 8])
    # A demonstration has no replies to rate: the per-reply scale is not asked.
    assert clean_labels(schema, {"note": "x"}, reply_ids=[]) == {"note": "x"}


def test_quality_skips_answers_given_while_a_scale_was_per_reply(pairwise_item, annotator):
    from feedback.quality.reports import project_agreement

    project = pairwise_item.project
    services.project_update(
        project=project, label_schema=[{"name": "q", "kind": "likert", "scope": "reply"}]
    )
    ids = list(pairwise_item.item_completions.values_list("completion_id", flat=True))
    assignment = services.task_next_for_annotator(project=project, annotator=annotator)
    services.pairwise_submit(
        assignment_id=assignment.pk, annotator=annotator, choice="a", strength="clear",
        labels={"q": {str(ids[0]): 2, str(ids[1]): 4}},
    )  # fmt: skip
    services.project_update(project=project, label_schema=[{"name": "q", "kind": "likert"}])
    rows = project_agreement(project)
    assert any(row.label == "q" for row in rows)
