"""AI help on feedback's side: drafts on the demonstration screen and in the API, the edit figure
on the judgement and in exports, and AI votes kept apart from people's work.

The models themselves (drafting with a checkpoint, voting with a reward model) are tested in
tests/modeling/test_assist.py; here drafts and votes are written through the same feedback
services those runs call.
"""

from __future__ import annotations

import json
import time

import pytest
from django.core.exceptions import ValidationError
from rapidfuzz.distance import Levenshtein

from core.tokens import token_create
from feedback import services
from feedback.models import (
    AssignmentStatus,
    Demonstration,
    Item,
    Origin,
    PairwiseJudgement,
    TaskKind,
)
from feedback.quality.reports import project_quality
from feedback.selectors import project_progress
from feedback.services import records as records_services
from feedback.services.assist import ai_vote_submit, draft_store
from tests.factories import ProjectFactory, UserFactory, make_item
from tests.feedback.test_project_views import _form as project_form

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
DRAFT = "Paris is the capital of France."


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def ai_voter(name: str = "ai-7-tiny-rm"):
    """An AI annotator's account as modeling makes it: no role, no usable password."""
    user = UserFactory(username=name, is_active=False)
    user.set_unusable_password()
    user.save()
    return user


def drafted_item(project, text: str = DRAFT):
    item = make_item(project, TaskKind.DEMONSTRATION)
    draft = draft_store(item=item, text=text, model_name="sft-round-1", model_ref="checkpoint:3")
    return item, draft


def rows(snapshot, split="train"):
    return [
        json.loads(line)
        for line in (snapshot.path() / f"{split}.jsonl").read_text().split("\n")
        if line
    ]


# --- drafts ------------------------------------------------------------------------------------


def test_the_demonstration_screen_starts_from_the_draft_and_says_whose_it_is(client, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    _, draft = drafted_item(project)
    client.force_login(annotator)

    page = client.get(f"/projects/{project.pk}/work/", follow=True)

    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="draft-notice"' in html
    assert "Draft written by <strong>sft-round-1</strong> — edit it" in html
    assert f">{DRAFT}</textarea>" in html
    assert f'name="draft_id" value="{draft.pk}"' in html


def test_submitting_an_edited_draft_records_the_draft_and_how_much_was_changed(client, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    item, draft = drafted_item(project)
    client.force_login(annotator)
    task = client.get(f"/projects/{project.pk}/work/")
    edited = "Paris is the capital city of France."

    client.post(task["Location"] + "submit/", {"text": edited, "draft_id": draft.pk}, headers=HX)

    demo = Demonstration.objects.get(item=item)
    assert demo.text == edited and demo.draft == draft
    expected = Levenshtein.normalized_distance(DRAFT, edited)
    assert demo.draft_edit_distance == pytest.approx(expected, abs=1e-4)
    assert 0 < demo.draft_edit_distance < 0.2  # five characters added to 31


def test_a_draft_submitted_as_written_changed_nothing_and_an_edit_later_updates_the_figure(
    annotator,
):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    _, draft = drafted_item(project)
    a = services.task_next_for_annotator(project=project, annotator=annotator)

    demo = services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text=DRAFT)
    assert demo.draft == draft and demo.draft_edit_distance == 0.0

    services.judgement_edit(
        assignment_id=a.pk, annotator=annotator, changes={"text": "Something else entirely."}
    )
    demo.refresh_from_db()
    assert demo.draft_edit_distance > 0.5


def test_without_a_draft_the_editor_is_empty_and_nothing_is_recorded(client, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    item = make_item(project, TaskKind.DEMONSTRATION)
    client.force_login(annotator)

    page = client.get(f"/projects/{project.pk}/work/", follow=True)
    html = page.content.decode()
    assert "draft-notice" not in html and "Draft written by" not in html
    assert "></textarea>" in html

    task = client.get(f"/projects/{project.pk}/work/")
    client.post(task["Location"] + "submit/", {"text": "My own words."}, headers=HX)
    demo = Demonstration.objects.get(item=item)
    assert demo.draft is None and demo.draft_edit_distance is None


def test_a_draft_of_another_item_is_refused_and_nothing_is_saved(annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    drafted_item(project)
    _, other_draft = drafted_item(project)
    a = services.task_next_for_annotator(project=project, annotator=annotator)
    assert a.item_id != other_draft.item_id

    with pytest.raises(ValidationError) as refused:
        services.demonstration_submit(
            assignment_id=a.pk, annotator=annotator, text="Hi", draft_id=other_draft.pk
        )
    assert refused.value.message_dict == {"draft_id": ["No such draft for this task."]}
    assert not Demonstration.objects.exists()
    a.refresh_from_db()
    assert a.status == AssignmentStatus.LEASED


def test_drafting_a_comparison_or_drafting_twice_with_one_model(roles):
    project = ProjectFactory()
    pair = make_item(project, TaskKind.PAIRWISE)
    with pytest.raises(ValidationError, match="nothing to draft"):
        draft_store(item=pair, text="x", model_name="m", model_ref="checkpoint:1")
    item, first = drafted_item(project)
    again = draft_store(
        item=item, text="Another", model_name="sft-round-1", model_ref="checkpoint:3"
    )
    assert again == first and again.text == DRAFT


def test_the_api_hands_out_the_draft_and_records_the_change(client, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    item, draft = drafted_item(project)
    headers = bearer(annotator)

    task = client.post(f"/api/projects/{project.pk}/next", headers=headers).json()
    assert task["draft"] == {"id": draft.pk, "text": DRAFT, "model_name": "sft-round-1"}

    answer = client.post(
        f"/api/assignments/{task['id']}/demonstration",
        {"text": "Paris."},
        content_type="application/json",
        headers=headers,
    ).json()

    distance = round(Levenshtein.normalized_distance(DRAFT, "Paris."), 4)
    assert answer["data"]["draft_id"] == draft.pk
    assert answer["data"]["draft_edit_distance"] == distance
    assert Demonstration.objects.get(item=item).draft_edit_distance == distance


def test_the_api_without_a_draft_says_so(client, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    make_item(project, TaskKind.DEMONSTRATION)
    task = client.post(f"/api/projects/{project.pk}/next", headers=bearer(annotator)).json()
    assert task["draft"] is None and task["ai_votes"] == []


def test_sft_snapshot_rows_carry_the_drafting_model_and_the_edit_figure(annotator, roles):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    drafted_item(project)
    make_item(project, TaskKind.DEMONSTRATION)
    while a := services.task_next_for_annotator(project=project, annotator=annotator):
        services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text=DRAFT)

    snapshot = services.snapshot_create(project=project, kind="sft", policy={"test_fraction": 0})

    drafted, undrafted = sorted(rows(snapshot), key=lambda row: row["item_id"])
    assert drafted["draft_model"] == "sft-round-1" and drafted["draft_edit_distance"] == 0.0
    assert "draft_model" not in undrafted and "draft_edit_distance" not in undrafted


# --- AI votes ----------------------------------------------------------------------------------


def test_an_ai_vote_takes_no_annotators_slot_and_counts_as_no_persons_work(annotator):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE], overlap=1)
    item = make_item(project, TaskKind.PAIRWISE)
    voter = ai_voter()

    vote = ai_vote_submit(
        item=item, voter=voter, choice="a", strength="clear", model_ref="checkpoint:7"
    )

    assert vote.origin == Origin.AI and vote.source == "checkpoint:7"
    assert vote.assignment.status == AssignmentStatus.AI
    item.refresh_from_db()
    assert item.submitted_count == 0
    # The one slot is still a person's: the queue hands the item out.
    assignment = services.task_next_for_annotator(project=project, annotator=annotator)
    assert assignment is not None and assignment.item_id == item.pk
    progress = project_progress(project=project)
    assert progress.ai_votes == 1 and progress.judgements == 0
    assert [row.username for row in progress.per_annotator] == [annotator.username]
    # Once per item and voter.
    again = ai_vote_submit(item=item, voter=voter, choice="b", strength="slight", model_ref="x")
    assert again == vote and PairwiseJudgement.objects.count() == 1


def test_ai_votes_are_checked_as_a_persons_and_cannot_enter_through_the_queue(annotator):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE, TaskKind.DEMONSTRATION])
    pair = make_item(project, TaskKind.PAIRWISE)
    voter = ai_voter()
    with pytest.raises(ValidationError, match="how much better"):
        ai_vote_submit(item=pair, voter=voter, choice="a", model_ref="checkpoint:7")
    with pytest.raises(ValidationError, match="not pairwise"):
        ai_vote_submit(
            item=make_item(project, TaskKind.DEMONSTRATION),
            voter=voter,
            choice="a",
            strength="clear",
            model_ref="checkpoint:7",
        )
    a = services.task_next_for_annotator(project=project, annotator=annotator, kind="pairwise")
    with pytest.raises(ValidationError, match="ai_vote_submit"):
        services.pairwise_submit(
            assignment_id=a.pk, annotator=annotator, choice="a", strength="clear", origin="ai"
        )
    assert not PairwiseJudgement.objects.exists()


def test_snapshots_leave_ai_votes_out_unless_asked(roles):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    item = make_item(project, TaskKind.PAIRWISE)
    ai_vote_submit(item=item, voter=ai_voter(), choice="a", strength="strong", model_ref="c:1")

    default = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0}
    )
    asked = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0, "include_ai": True}
    )

    assert default.row_counts == {"train": 0, "test": 0}
    assert asked.row_counts == {"train": 1, "test": 0}
    [row] = rows(asked)
    assert row["chosen"][-1]["content"] == item.ordered_completions()[0].text


def pair_screen(client, user, project) -> str:
    client.force_login(user)
    return client.get(f"/projects/{project.pk}/work/", follow=True).content.decode()


def test_annotators_see_ai_votes_only_where_the_project_opts_in(client, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    item = make_item(project, TaskKind.PAIRWISE)
    ai_vote_submit(item=item, voter=ai_voter(), choice="a", strength="strong", model_ref="c:1")

    assert "ai-votes" not in pair_screen(client, annotator, project)
    task = client.post(f"/api/projects/{project.pk}/next", headers=bearer(annotator)).json()
    assert task["ai_votes"] == []

    services.project_update(project=project, show_ai_votes=True)
    html = pair_screen(client, annotator, project)
    # In this annotator's sides: A is wherever their shuffle put it.
    a_id = item.ordered_completions()[0].pk
    left_id = task["item"]["completions"][0]["id"]
    side = "left" if left_id == a_id else "right"
    assert 'id="ai-votes"' in html
    assert f"ai-7-tiny-rm: {side} is much better" in html
    task = client.post(f"/api/projects/{project.pk}/next", headers=bearer(annotator)).json()
    assert task["ai_votes"] == [
        {
            "voter": "ai-7-tiny-rm",
            "choice": "a",
            "preferred_completion_id": a_id,
            "strength": "strong",
        }
    ]


def test_the_quality_page_measures_the_ai_annotator_against_the_people(client, admin_user, roles):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE], overlap=3)
    people = [UserFactory(username=f"person{n}", roles=["annotator"]) for n in range(3)]
    voter, other_model = ai_voter(), ai_voter("ai-8-other-rm")
    items = [make_item(project, TaskKind.PAIRWISE) for _ in range(4)]
    for item in items:
        for person in people:
            a = services.task_next_for_annotator(project=project, annotator=person)
            assert a.item_id == item.pk
            services.pairwise_submit(
                assignment_id=a.pk, annotator=person, choice="a", strength="clear"
            )
    # The first model agrees with the people on three items of four; the second never does.
    for n, item in enumerate(items):
        choice = "a" if n < 3 else "b"
        ai_vote_submit(item=item, voter=voter, choice=choice, strength="clear", model_ref="c:7")
        ai_vote_submit(item=item, voter=other_model, choice="b", strength="clear", model_ref="c:8")

    report = project_quality(project)

    by_name = {row.username: row for row in report.ai_annotators}
    assert set(by_name) == {"ai-7-tiny-rm", "ai-8-other-rm"}
    assert by_name["ai-7-tiny-rm"].loo_agreement == 0.75 and by_name["ai-7-tiny-rm"].loo_n == 4
    assert (
        by_name["ai-8-other-rm"].loo_agreement == 0.0 and by_name["ai-8-other-rm"].judgements == 4
    )
    # People's rows and the agreement table read as if no model had voted.
    assert {row.username for row in report.annotators} == {p.username for p in people}
    assert all(row.loo_agreement == 1.0 for row in report.annotators)
    assert Item.objects.filter(project=project, submitted_count=3).count() == 4

    client.force_login(admin_user)
    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert 'id="ai-annotators"' in html
    assert "ai-7-tiny-rm</td><td>4</td>" in html
    assert '0.75 <span class="muted">(n=4)</span>' in html


def test_the_quality_page_has_no_ai_section_without_ai_votes(client, admin_user):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    client.force_login(admin_user)
    assert "ai-annotators" not in client.get(f"/projects/{project.pk}/quality/").content.decode()


def bearer(user) -> dict:
    _, key = token_create(user=user, name=f"test-{user.pk}-{time.monotonic_ns()}")
    return {"Authorization": f"Bearer {key}"}


def test_an_ai_vote_is_no_agreed_answer_for_a_gold_item(admin_user, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    alone, with_person = (make_item(project, TaskKind.PAIRWISE) for _ in range(2))
    voter = ai_voter()
    for item in (alone, with_person):
        ai_vote_submit(item=item, voter=voter, choice="b", strength="clear", model_ref="c:1")
    a = services.task_next_for_annotator(project=project, annotator=annotator)
    while a.item_id != with_person.pk:
        services.assignment_skip(assignment_id=a.pk, annotator=annotator)
        a = services.task_next_for_annotator(project=project, annotator=annotator)
    services.pairwise_submit(assignment_id=a.pk, annotator=annotator, choice="a", strength="clear")

    marked, skipped = records_services.items_mark_gold(
        project=project, item_ids=[alone.pk, with_person.pk], admin=admin_user
    )

    assert (marked, skipped) == (1, 1)
    with_person.refresh_from_db()
    assert with_person.is_gold and with_person.gold_answer == {"choice": "a"}


def test_a_tampered_draft_id_is_refused_on_screen_and_the_text_kept(client, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    drafted_item(project)
    client.force_login(annotator)
    task = client.get(f"/projects/{project.pk}/work/")

    refused = client.post(task["Location"] + "submit/", {"text": "Mine.", "draft_id": 99999})

    assert refused.status_code == 422
    html = refused.content.decode()
    assert "No such draft for this task." in html and ">Mine.</textarea>" in html
    assert not Demonstration.objects.exists()


def test_the_project_page_turns_showing_ai_votes_on_and_off(client, admin_user):
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    client.force_login(admin_user)
    page = client.get(f"/projects/{project.pk}/edit/").content.decode()
    assert 'name="show_ai_votes"' in page and "Show AI annotators&#x27; votes" in page
    assert not project.show_ai_votes  # off by default

    client.post(f"/projects/{project.pk}/edit/", project_form(show_ai_votes="on"))
    project.refresh_from_db()
    assert project.show_ai_votes
    client.post(f"/projects/{project.pk}/edit/", project_form())
    project.refresh_from_db()
    assert not project.show_ai_votes
