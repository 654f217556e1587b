from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from core.errors import NotYourTask, TaskUnavailable
from feedback import services
from feedback.models import (
    Assignment,
    AssignmentStatus,
    Demonstration,
    DemonstrationStatus,
    JudgementRevision,
    PairwiseJudgement,
    RankingJudgement,
    TaskKind,
)
from tests.factories import ProjectFactory, make_item, make_prompt
from tests.factories import annotator as make_annotator

pytestmark = pytest.mark.django_db


def lease(project, user, **kwargs) -> Assignment:
    assignment = services.task_next_for_annotator(project=project, annotator=user, **kwargs)
    assert assignment is not None
    return assignment


def expire(assignment: Assignment) -> None:
    Assignment.objects.filter(pk=assignment.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


# --- queue ----------------------------------------------------------------------------------------


def test_next_task_returns_the_same_live_lease_until_it_is_finished(project, annotator):
    make_item(project)
    make_item(project)
    first = lease(project, annotator)
    assert lease(project, annotator).pk == first.pk


def test_no_item_receives_more_than_overlap_slots(roles):
    project = ProjectFactory(overlap=2)
    item = make_item(project)
    users = [make_annotator(f"a{i}") for i in range(3)]
    leases = [services.task_next_for_annotator(project=project, annotator=u) for u in users]
    assert [a.item_id if a else None for a in leases] == [item.pk, item.pk, None]


def test_annotator_never_gets_an_item_they_submitted_or_skipped(project, annotator):
    first, second = make_item(project), make_item(project)
    a = lease(project, annotator)
    services.pairwise_submit(assignment_id=a.pk, annotator=annotator, choice="a", strength="clear")
    b = lease(project, annotator)
    services.assignment_skip(assignment_id=b.pk, annotator=annotator, reason="unclear")
    assert {a.item_id, b.item_id} == {first.pk, second.pk}
    assert services.task_next_for_annotator(project=project, annotator=annotator) is None


def test_expired_lease_returns_the_slot_to_the_pool(project, annotator, other_annotator):
    item = make_item(project)
    mine = lease(project, annotator)
    assert services.task_next_for_annotator(project=project, annotator=other_annotator) is None
    expire(mine)
    theirs = lease(project, other_annotator)
    assert theirs.item_id == item.pk


def test_own_expired_lease_is_renewed_not_duplicated(project, annotator):
    make_item(project)
    first = lease(project, annotator)
    expire(first)
    again = lease(project, annotator)
    assert again.pk == first.pk
    assert again.expires_at > timezone.now()
    assert Assignment.objects.count() == 1


def test_queue_prefers_partly_judged_items(roles):
    project = ProjectFactory(overlap=2)
    fresh, started = make_item(project), make_item(project)
    first_user = make_annotator("first")
    a = services.task_next_for_annotator(project=project, annotator=first_user)
    assert a.item_id == fresh.pk
    services.assignment_skip(assignment_id=a.pk, annotator=first_user)
    b = lease(project, first_user)
    services.pairwise_submit(assignment_id=b.pk, annotator=first_user, choice="tie")
    assert b.item_id == started.pk
    assert lease(project, make_annotator("second")).item_id == started.pk


def test_fully_leased_items_do_not_hide_free_ones_further_down(roles):
    project = ProjectFactory(overlap=1)
    items = [make_item(project) for _ in range(12)]
    holders = [make_annotator(f"holder{i}") for i in range(10)]
    for user in holders:
        lease(project, user)
    latecomer = lease(project, make_annotator("late"))
    assert latecomer.item_id in {i.pk for i in items[10:]}


def test_kind_filter_only_hands_out_that_kind(project, annotator):
    make_item(project, TaskKind.PAIRWISE)
    ranking = make_item(project, TaskKind.RANKING)
    assert lease(project, annotator, kind=TaskKind.RANKING).item_id == ranking.pk


def test_closed_project_hands_out_nothing(project, annotator):
    make_item(project)
    project.is_active = False
    project.save()
    with pytest.raises(TaskUnavailable):
        services.task_next_for_annotator(project=project, annotator=annotator)


def test_reviewer_without_annotator_role_cannot_take_tasks(project, reviewer):
    make_item(project)
    with pytest.raises(NotYourTask):
        services.task_next_for_annotator(project=project, annotator=reviewer)


def test_project_member_list_restricts_who_may_work(project, annotator, other_annotator):
    make_item(project)
    project.annotators.add(other_annotator)
    with pytest.raises(NotYourTask):
        services.task_next_for_annotator(project=project, annotator=annotator)
    assert lease(project, other_annotator)


def test_display_order_is_a_stable_shuffle_per_annotator(roles):
    project = ProjectFactory(overlap=50)
    item = make_item(project, TaskKind.RANKING, n=6)
    canonical = list(item.item_completions.values_list("completion_id", flat=True))
    orders = [lease(project, make_annotator(f"s{i}")).display_order for i in range(12)]
    assert all(sorted(order) == sorted(canonical) for order in orders)
    assert len({tuple(order) for order in orders}) > 1


# --- submit -----------------------------------------------------------------------------------


def test_second_submit_of_same_task_is_ignored(project, annotator, pairwise_item):
    a = lease(project, annotator)
    first = services.pairwise_submit(
        assignment_id=a.pk, annotator=annotator, choice="a", strength="strong"
    )
    second = services.pairwise_submit(
        assignment_id=a.pk, annotator=annotator, choice="b", strength="slight"
    )
    assert first.pk == second.pk
    assert PairwiseJudgement.objects.get().choice == "a"
    pairwise_item.refresh_from_db()
    assert pairwise_item.submitted_count == 1


def test_pairwise_records_which_side_was_shown_left(project, annotator, pairwise_item):
    a = lease(project, annotator)
    judgement = services.pairwise_submit(
        assignment_id=a.pk, annotator=annotator, choice="b", strength="clear"
    )
    a_id = pairwise_item.item_completions.get(position=0).completion_id
    assert judgement.shown_left == ("a" if a.display_order[0] == a_id else "b")
    assert judgement.choice == "b"


def test_strength_is_required_for_a_decisive_choice_and_dropped_for_ties(
    project, annotator, pairwise_item
):
    a = lease(project, annotator)
    with pytest.raises(ValidationError) as err:
        services.pairwise_submit(assignment_id=a.pk, annotator=annotator, choice="a")
    assert "strength" in err.value.message_dict
    judgement = services.pairwise_submit(
        assignment_id=a.pk, annotator=annotator, choice="both_bad", strength="strong"
    )
    assert judgement.strength == ""


def test_ranking_with_ties_is_stored_best_first(project, annotator, ranking_item):
    a = lease(project, annotator)
    c1, c2, c3, c4 = a.display_order
    judgement = services.ranking_submit(
        assignment_id=a.pk, annotator=annotator, ranking=[[c3], [c2, c1], [c4]]
    )
    assert judgement.ranking == [[c3], sorted([c1, c2]), [c4]]


@pytest.mark.parametrize(
    "bad",
    [
        "drop-one",
        "duplicate",
        "stranger",
        "all-tied",
        "not-a-list",
    ],
)
def test_ranking_must_rank_every_completion_once(project, annotator, ranking_item, bad):
    a = lease(project, annotator)
    ids = a.display_order
    ranking = {
        "drop-one": [[i] for i in ids[:-1]],
        "duplicate": [[i] for i in ids] + [[ids[0]]],
        "stranger": [[i] for i in ids[:-1]] + [[999999]],
        "all-tied": [ids],
        "not-a-list": "1,2,3,4",
    }[bad]
    with pytest.raises(ValidationError):
        services.ranking_submit(assignment_id=a.pk, annotator=annotator, ranking=ranking)
    assert not RankingJudgement.objects.exists()
    assert Assignment.objects.get(pk=a.pk).status == AssignmentStatus.LEASED


def test_label_answers_are_validated_against_the_schema(project, annotator, demo_item):
    a = lease(project, annotator)
    with pytest.raises(ValidationError):
        services.demonstration_submit(
            assignment_id=a.pk, annotator=annotator, text="Hi", labels={"helpfulness": 9}
        )
    with pytest.raises(ValidationError):
        services.demonstration_submit(
            assignment_id=a.pk, annotator=annotator, text="Hi", labels={"made_up": 1}
        )
    demo = services.demonstration_submit(
        assignment_id=a.pk,
        annotator=annotator,
        text="Hi",
        labels={"helpfulness": "6", "unsafe": True},
    )
    assert demo.labels == {"helpfulness": 6, "unsafe": True}


def test_submit_after_expiry_is_accepted_while_a_slot_is_free(project, annotator, demo_item):
    a = lease(project, annotator)
    expire(a)
    demo = services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="Late")
    assert demo.text == "Late"


def test_submit_after_expiry_is_refused_when_the_slot_was_taken(
    project, annotator, other_annotator, demo_item
):
    a = lease(project, annotator)
    expire(a)
    b = lease(project, other_annotator)
    assert b.item_id == a.item_id
    with pytest.raises(TaskUnavailable) as err:
        services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="Too late")
    assert err.value.code == "lease_lost"
    assert not Demonstration.objects.exists()


def test_someone_elses_assignment_cannot_be_submitted_or_skipped(
    project, annotator, other_annotator, demo_item
):
    a = lease(project, annotator)
    with pytest.raises(NotYourTask):
        services.demonstration_submit(assignment_id=a.pk, annotator=other_annotator, text="x")
    with pytest.raises(NotYourTask):
        services.assignment_skip(assignment_id=a.pk, annotator=other_annotator)
    assert Assignment.objects.get(pk=a.pk).status == AssignmentStatus.LEASED


def test_submitting_to_a_closed_project_is_refused(project, annotator, demo_item):
    a = lease(project, annotator)
    project.is_active = False
    project.save()
    with pytest.raises(TaskUnavailable):
        services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="x")


def test_wrong_kind_submit_is_refused(project, annotator, demo_item):
    a = lease(project, annotator)
    with pytest.raises(ValidationError):
        services.pairwise_submit(assignment_id=a.pk, annotator=annotator, choice="tie")


def test_skipped_task_cannot_then_be_submitted(project, annotator, demo_item):
    a = lease(project, annotator)
    services.assignment_skip(assignment_id=a.pk, annotator=annotator, reason="no idea")
    with pytest.raises(TaskUnavailable):
        services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="x")
    assert Assignment.objects.get(pk=a.pk).skip_reason == "no idea"


def test_seconds_spent_is_clamped(project, annotator, demo_item):
    a = lease(project, annotator)
    demo = services.demonstration_submit(
        assignment_id=a.pk, annotator=annotator, text="x", seconds_spent=10**9
    )
    assert demo.seconds_spent == 24 * 3600


# --- editing ------------------------------------------------------------------------------------


def test_editing_keeps_the_previous_version(project, annotator, demo_item):
    a = lease(project, annotator)
    services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="First")
    services.judgement_edit(assignment_id=a.pk, annotator=annotator, changes={"text": "Second"})
    services.judgement_edit(assignment_id=a.pk, annotator=annotator, changes={"text": "Third"})
    assert Demonstration.objects.get().text == "Third"
    assert [r.payload["text"] for r in JudgementRevision.objects.order_by("created_at")] == [
        "First",
        "Second",
    ]


def test_editing_without_changes_writes_no_revision(project, annotator, pairwise_item):
    a = lease(project, annotator)
    services.pairwise_submit(assignment_id=a.pk, annotator=annotator, choice="tie")
    services.judgement_edit(assignment_id=a.pk, annotator=annotator, changes={"choice": "tie"})
    assert not JudgementRevision.objects.exists()


def test_editing_a_rejected_demonstration_resubmits_it(project, annotator, demo_item):
    a = lease(project, annotator)
    demo = services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="Meh")
    Demonstration.objects.filter(pk=demo.pk).update(status=DemonstrationStatus.REJECTED)
    services.judgement_edit(assignment_id=a.pk, annotator=annotator, changes={"text": "Better"})
    assert Demonstration.objects.get().status == DemonstrationStatus.SUBMITTED


def test_accepted_demonstration_cannot_be_edited(project, annotator, demo_item):
    a = lease(project, annotator)
    demo = services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="Good")
    Demonstration.objects.filter(pk=demo.pk).update(status=DemonstrationStatus.ACCEPTED)
    with pytest.raises(TaskUnavailable):
        services.judgement_edit(assignment_id=a.pk, annotator=annotator, changes={"text": "x"})


def test_others_cannot_edit_my_judgement(project, annotator, other_annotator, demo_item):
    a = lease(project, annotator)
    services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="Mine")
    with pytest.raises(NotYourTask):
        services.judgement_edit(
            assignment_id=a.pk, annotator=other_annotator, changes={"text": "Theirs"}
        )


def test_unknown_fields_cannot_be_edited(project, annotator, demo_item):
    a = lease(project, annotator)
    services.demonstration_submit(assignment_id=a.pk, annotator=annotator, text="Mine")
    with pytest.raises(ValidationError):
        services.judgement_edit(
            assignment_id=a.pk, annotator=annotator, changes={"status": "accepted"}
        )


# --- content ----------------------------------------------------------------------------------


def test_duplicate_prompts_within_a_project_are_refused(project):
    make_prompt(project, "Same question?")
    with pytest.raises(ValidationError) as err:
        make_prompt(project, "Same question?")
    assert err.value.error_dict["messages"][0].code == "duplicate"
    make_prompt(ProjectFactory(), "Same question?")  # other projects are independent


def test_leading_system_message_moves_to_the_system_field(project):
    prompt = services.prompt_create(
        project=project,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
    )
    assert prompt.system == "Be brief."
    assert prompt.messages == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("kind", "n"), [("pairwise", 1), ("pairwise", 3), ("ranking", 2), ("ranking", 9)]
)
def test_items_need_the_right_number_of_completions(project, kind, n):
    with pytest.raises(ValidationError):
        make_item(project, kind, n=n)


def test_item_kind_must_be_one_the_project_collects(roles):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    with pytest.raises(ValidationError):
        make_item(project, TaskKind.PAIRWISE)


def test_completions_must_answer_the_items_prompt(project):
    prompt, other = make_prompt(project), make_prompt(project)
    stray = services.completion_create(prompt=other, text="elsewhere")
    mine = services.completion_create(prompt=prompt, text="here")
    with pytest.raises(ValidationError):
        services.item_create(
            project=project, kind=TaskKind.PAIRWISE, prompt=prompt, completions=[mine, stray]
        )


def test_project_create_validates_its_settings(db):
    with pytest.raises(ValidationError):
        services.project_create(name="x", task_kinds=["painting"])
    with pytest.raises(ValidationError):
        services.project_create(name="x", task_kinds=["pairwise"], overlap=0)
    with pytest.raises(ValidationError):
        services.project_create(
            name="x", task_kinds=["pairwise"], label_schema=[{"name": "q", "kind": "stars"}]
        )
    project = services.project_create(
        name="ok", task_kinds=["pairwise"], label_schema=[{"name": "q", "kind": "likert"}]
    )
    assert project.label_schema[0]["min"] == 1
