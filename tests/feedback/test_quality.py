import krippendorff
import numpy as np
import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from core.errors import TaskUnavailable
from core.roles import Role
from feedback import services
from feedback.models import (
    Adjudication,
    Assignment,
    Demonstration,
    DemonstrationStatus,
    Item,
    JudgementRevision,
    PairwiseJudgement,
    Review,
    TaskKind,
)
from feedback.quality.reports import annotator_rows, disagreement_items, project_agreement
from feedback.selectors.review import ReviewFilters, review_queue_page
from feedback.services import review as review_services
from tests.factories import (
    ProjectFactory,
    UserFactory,
    annotator,
    make_item,
    outvoted_crowd,
    submit_judgement,
)

pytestmark = pytest.mark.django_db


def write_demo(project, user, text="A reply"):
    a = services.task_next_for_annotator(project=project, annotator=user)
    return services.demonstration_submit(assignment_id=a.pk, annotator=user, text=text)


@pytest.fixture
def demo(roles, annotator):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    make_item(project, TaskKind.DEMONSTRATION)
    return write_demo(project, annotator, "The original reply.")


# --- review ----------------------------------------------------------------------------------


def test_accepting_a_demonstration(demo, reviewer):
    review_services.demonstration_review(
        demonstration_id=demo.pk, reviewer=reviewer, decision="accept"
    )
    demo.refresh_from_db()
    assert demo.status == DemonstrationStatus.ACCEPTED
    assert Review.objects.get().decision == "accept"


def test_editing_keeps_the_diff_and_its_author(demo, reviewer):
    review_services.demonstration_review(
        demonstration_id=demo.pk, reviewer=reviewer, decision="edit", edited_text="A better reply."
    )
    demo.refresh_from_db()
    review = Review.objects.get()
    assert demo.text == "A better reply." and demo.status == DemonstrationStatus.ACCEPTED
    assert (review.text_before, review.text_after) == ("The original reply.", "A better reply.")
    revision = JudgementRevision.objects.get()
    assert revision.edited_by == reviewer and revision.payload["text"] == "The original reply."


def test_rejection_needs_a_comment_and_returns_the_work_to_its_annotator(
    client, demo, reviewer, annotator
):
    with pytest.raises(ValidationError):
        review_services.demonstration_review(
            demonstration_id=demo.pk, reviewer=reviewer, decision="reject"
        )
    review_services.demonstration_review(
        demonstration_id=demo.pk, reviewer=reviewer, decision="reject", comment="Too vague."
    )
    demo.refresh_from_db()
    assert demo.status == DemonstrationStatus.REJECTED
    client.force_login(annotator)
    assert "Too vague." in client.get("/history/").content.decode()
    # The annotator fixes it; it is submitted again and back in the review queue.
    services.judgement_edit(
        assignment_id=demo.assignment_id, annotator=annotator, changes={"text": "Specific."}
    )
    waiting = review_queue_page(reviewer=reviewer, filters=ReviewFilters())
    assert [row.judgement for row in waiting.rows] == [Demonstration.objects.get()]


def test_a_demonstration_is_reviewed_once(demo, reviewer, admin_user):
    review_services.demonstration_review(
        demonstration_id=demo.pk, reviewer=reviewer, decision="accept"
    )
    with pytest.raises(TaskUnavailable):
        review_services.demonstration_review(
            demonstration_id=demo.pk, reviewer=admin_user, decision="reject", comment="no"
        )
    assert Review.objects.count() == 1


@pytest.mark.parametrize(
    ("decision", "edited_text", "field"),
    [
        ("approve", None, "decision"),
        ("edit", "The original reply.", "text"),  # unchanged: that is an accept
        ("edit", "   ", "text"),
    ],
)
def test_malformed_reviews_change_nothing(demo, reviewer, decision, edited_text, field):
    with pytest.raises(ValidationError) as refused:
        review_services.demonstration_review(
            demonstration_id=demo.pk, reviewer=reviewer, decision=decision, edited_text=edited_text
        )
    assert field in refused.value.message_dict
    demo.refresh_from_db()
    assert (demo.status, demo.text) == (DemonstrationStatus.SUBMITTED, "The original reply.")
    assert not Review.objects.exists() and not JudgementRevision.objects.exists()


def test_admins_review_and_a_fixed_rejection_can_then_be_accepted(
    client, demo, reviewer, admin_user, annotator
):
    review_services.demonstration_review(
        demonstration_id=demo.pk, reviewer=reviewer, decision="reject", comment="Too vague."
    )
    services.judgement_edit(
        assignment_id=demo.assignment_id, annotator=annotator, changes={"text": "Specific."}
    )
    client.force_login(admin_user)
    page = client.get(f"/review/{demo.pk}/").content.decode()
    assert "Rejected by rev" in page and "“Too vague.”" in page and "Accept as it is" in page
    review_services.demonstration_review(
        demonstration_id=demo.pk, reviewer=admin_user, decision="accept"
    )
    demo.refresh_from_db()
    assert (demo.status, demo.text) == (DemonstrationStatus.ACCEPTED, "Specific.")
    assert [r.decision for r in Review.objects.order_by("id")] == ["reject", "accept"]
    with pytest.raises(TaskUnavailable):  # accepted work is final: neither re-reviewed nor edited
        review_services.demonstration_review(
            demonstration_id=demo.pk, reviewer=reviewer, decision="reject", comment="Changed mind"
        )


def test_annotators_cannot_review(client, demo, other_annotator):
    with pytest.raises(PermissionDenied):
        review_services.demonstration_review(
            demonstration_id=demo.pk, reviewer=other_annotator, decision="accept"
        )
    client.force_login(other_annotator)
    assert client.get("/review/").status_code == 403
    response = client.post(f"/review/{demo.pk}/", {"decision": "accept"})
    assert response.status_code == 403
    assert Demonstration.objects.get().status == DemonstrationStatus.SUBMITTED


def test_nobody_reviews_their_own_work(client, roles):
    both = UserFactory(username="both", roles=[Role.ANNOTATOR, Role.REVIEWER])
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    make_item(project, TaskKind.DEMONSTRATION)
    own = write_demo(project, both)
    assert not review_queue_page(reviewer=both, filters=ReviewFilters()).rows
    with pytest.raises(PermissionDenied):
        review_services.demonstration_review(
            demonstration_id=own.pk, reviewer=both, decision="accept"
        )
    client.force_login(both)
    assert client.get(f"/review/{own.pk}/").status_code == 403


def test_review_screen_walks_the_queue(client, roles, reviewer):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    writers = [annotator(f"w{i}") for i in range(2)]
    for writer in writers:
        make_item(project, TaskKind.DEMONSTRATION)
        write_demo(project, writer, f"by {writer.username}")
    first, second = Demonstration.objects.order_by("id")
    client.force_login(reviewer)
    assert "2 waiting" in client.get("/review/").content.decode()
    bad = client.post(f"/review/{first.pk}/", {"decision": "reject"})
    assert bad.status_code == 422 and "Say why" in bad.content.decode()
    response = client.post(f"/review/{first.pk}/", {"decision": "accept"})
    assert response["Location"] == f"/review/demonstration/{second.pk}/"
    response = client.post(f"/review/{second.pk}/", {"decision": "edit", "text": "edited"})
    assert response["Location"] == "/review/"


# --- gold ------------------------------------------------------------------------------------


def test_gold_answers_are_validated(roles, admin_user, reviewer):
    project = ProjectFactory()
    pair = make_item(project, TaskKind.PAIRWISE)
    demo_item = make_item(project, TaskKind.DEMONSTRATION)
    with pytest.raises(PermissionDenied):
        review_services.item_mark_gold(item_id=pair.pk, admin=reviewer, answer={"choice": "a"})
    with pytest.raises(ValidationError):
        review_services.item_mark_gold(item_id=pair.pk, admin=admin_user, answer={"choice": "c"})
    with pytest.raises(ValidationError):
        review_services.item_mark_gold(item_id=demo_item.pk, admin=admin_user, answer={})
    gold = review_services.item_mark_gold(item_id=pair.pk, admin=admin_user, answer={"choice": "b"})
    assert gold.is_gold and gold.gold_answer == {"choice": "b"}


def test_gold_items_are_mixed_in_at_the_configured_rate(roles, admin_user):
    project = ProjectFactory(overlap=1, gold_rate=0.2, task_kinds=[TaskKind.PAIRWISE])
    for _ in range(300):
        make_item(project)
    for _ in range(300):
        item = make_item(project)
        review_services.item_mark_gold(item_id=item.pk, admin=admin_user, answer={"choice": "a"})
    user = annotator("mixer")
    served = 0
    while served < 300:
        a = services.task_next_for_annotator(project=project, annotator=user)
        services.pairwise_submit(assignment_id=a.pk, annotator=user, choice="tie")
        served += 1
    gold_share = Assignment.objects.filter(annotator=user, item__is_gold=True).count() / served
    assert 0.12 <= gold_share <= 0.28


def test_gold_items_are_not_handed_out_without_regular_work(roles, admin_user):
    project = ProjectFactory(gold_rate=0.5)
    item = make_item(project)
    review_services.item_mark_gold(item_id=item.pk, admin=admin_user, answer={"choice": "a"})
    assert services.task_next_for_annotator(project=project, annotator=annotator("g")) is None


def test_gold_accuracy_per_annotator(roles, admin_user):
    project = ProjectFactory(overlap=1, gold_rate=0.0)
    golds = [make_item(project) for _ in range(4)]
    for item in golds:
        review_services.item_mark_gold(item_id=item.pk, admin=admin_user, answer={"choice": "a"})
    user = annotator("graded")
    for item, choice in zip(golds, ["a", "a", "a", "b"], strict=True):
        a = Assignment.objects.create(item=item, annotator=user, expires_at="2100-01-01T00:00Z")
        services.pairwise_submit(
            assignment_id=a.pk, annotator=user, choice=choice, strength="clear"
        )
    [row] = annotator_rows(project)
    assert (row.gold_accuracy, row.gold_n) == (0.75, 4)


# --- agreement report ------------------------------------------------------------------------


def judge(project, users_and_choices):
    """Every user judges every item with the given choices (one per item)."""
    for user, choices in users_and_choices:
        for choice in choices:
            a = services.task_next_for_annotator(project=project, annotator=user)
            strength = "clear" if choice in ("a", "b") else ""
            services.pairwise_submit(
                assignment_id=a.pk, annotator=user, choice=choice, strength=strength,
                seconds_spent=20.0,
            )  # fmt: skip


def test_project_alpha_equals_the_library_on_the_same_matrix(roles):
    project = ProjectFactory(overlap=3, task_kinds=[TaskKind.PAIRWISE])
    items = [make_item(project) for _ in range(6)]
    users = [annotator(f"r{i}") for i in range(3)]
    choices = [list("aabbta"), list("abbbta"), list("aabbbb")]
    judge(
        project,
        [(u, [c.replace("t", "tie") for c in cs]) for u, cs in zip(users, choices, strict=True)],
    )
    rows = {(r.metric, r.level): r.estimate for r in project_agreement(project)}

    codes = {"a": 0, "b": 1, "tie": 2}
    matrix = np.full((3, 6), np.nan)
    for j in PairwiseJudgement.objects.all():
        matrix[users.index(j.annotator), items.index(j.item)] = codes[j.choice]
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    nominal = rows[("Krippendorff's α", "nominal")]
    assert nominal.value == pytest.approx(expected, abs=1e-4)
    assert nominal.n_items == 6 and nominal.low <= nominal.value <= nominal.high
    assert rows[("Fleiss' κ", "nominal")].value is not None
    # A pairwise-only project gets no (empty) ranking row.
    assert ("Kendall's τ-b (mean over pairs)", "ordinal") not in rows


def test_outliers_are_flagged(roles):
    project = ProjectFactory(overlap=3, task_kinds=[TaskKind.PAIRWISE])
    for _ in range(24):
        make_item(project)
    careful = [annotator("careful1"), annotator("careful2")]
    for user in careful:
        for n in range(24):
            # The right answer (a), shown left on every other item: a fair shuffle's share,
            # where the per-annotator shuffle itself depends on row ids (19 of 24 on the left
            # for one ordering of the suite, enough for a side-bias flag).
            a = services.task_next_for_annotator(project=project, annotator=user)
            ids = [ic.completion_id for ic in a.item.item_completions.order_by("position")]
            Assignment.objects.filter(pk=a.pk).update(display_order=ids[:: 1 if n % 2 else -1])
            services.pairwise_submit(
                assignment_id=a.pk, annotator=user, choice="a", strength="clear",
                seconds_spent=20.0,
            )  # fmt: skip
    # "lefty" always picks the left reply, quickly; sides are shuffled, so that disagrees too.
    lefty = annotator("lefty")
    for _ in range(24):
        a = services.task_next_for_annotator(project=project, annotator=lefty)
        a_id = a.item.item_completions.get(position=0).completion_id
        left = "a" if a.display_order[0] == a_id else "b"
        services.pairwise_submit(
            assignment_id=a.pk, annotator=lefty, choice=left, strength="slight", seconds_spent=1.0
        )
    rows = {r.username: r for r in annotator_rows(project)}
    assert rows["lefty"].left_share == 1.0
    assert any("side bias" in f for f in rows["lefty"].flags)
    assert any("too fast" in f for f in rows["lefty"].flags)
    assert rows["careful1"].loo_agreement == 1.0
    assert not rows["careful1"].flags


def test_quality_page_is_admin_only_and_shows_the_report(client, roles, admin_user, reviewer):
    project = ProjectFactory(overlap=2)
    make_item(project)
    judge(project, [(annotator("q1"), ["a"]), (annotator("q2"), ["b"])])
    client.force_login(reviewer)
    assert client.get(f"/projects/{project.pk}/quality/").status_code == 403
    client.force_login(admin_user)
    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert "Krippendorff" in html and "q1" in html and "1 item with split judgements" in html
    # At overlap 2 nobody has a majority of others to agree with: the page says so (issue #18).
    assert 'id="overlap-too-low"' in html and "judged by 2 annotators" in html
    project.overlap = 3
    project.save()
    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert 'id="overlap-too-low"' not in html


def test_at_overlap_two_each_annotator_row_says_why_it_has_no_agreement_figure(
    client, roles, admin_user
):
    # Two annotators judge three items each: every item is shared with one other annotator, so
    # neither has a majority of others to agree with. The cells said "–" without saying why.
    project = ProjectFactory(overlap=2, task_kinds=[TaskKind.PAIRWISE])
    for _ in range(3):
        make_item(project)
    judge(project, [(annotator("pair1"), ["a", "b", "a"]), (annotator("pair2"), ["a", "a", "a"])])
    rows = {r.username: r for r in annotator_rows(project)}
    assert (rows["pair1"].pairwise, rows["pair1"].shared_items, rows["pair1"].loo_items) == (
        3,
        3,
        0,
    )
    assert rows["pair1"].loo_agreement is None

    client.force_login(admin_user)
    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert html.count("overlap too low: 0 items shared with ≥ 2 others, needs ≥ 1") == 2
    assert html.count("overlap too low: 3 shared items, needs ≥ 5") == 2  # Dawid–Skene


def test_agreement_rows_say_whether_overlap_is_missing_or_the_answers_never_vary(
    client, roles, admin_user
):
    project = ProjectFactory(overlap=2, task_kinds=[TaskKind.PAIRWISE])
    item = make_item(project)
    submit_judgement(item, annotator("first"), choice="a", strength="clear")
    client.force_login(admin_user)

    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert html.count("overlap too low: no item has 2 or more judgements yet") == 3
    assert "overlap too low: 0 shared items, needs ≥ 5" in html

    submit_judgement(item, annotator("second"), choice="a", strength="clear")
    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert html.count("undefined on 1 item: every answer the same, or too few") == 3


def test_reliability_credits_the_careful_annotator_the_majority_outvotes(client, roles, admin_user):
    project = ProjectFactory(overlap=4, task_kinds=[TaskKind.PAIRWISE])
    outvoted_crowd(project)

    rows = {r.username: r for r in annotator_rows(project)}

    assert rows["careful"].reliability == 1.0 and rows["careful"].shared_items == 13
    assert rows["careless1"].reliability == pytest.approx(6 / 13, abs=0.01)
    client.force_login(admin_user)
    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert "Reliability" in html and "Dawid–Skene" in html
    assert '1.00 <span class="muted">(n=13)</span>' in html
    assert '0.46 <span class="muted">(n=13)</span>' in html


def test_a_flag_label_gets_each_annotators_rates_where_it_applies_and_where_not(
    client, roles, admin_user
):
    unsafe = {"name": "unsafe", "kind": "flag", "label": "Unsafe"}
    project = ProjectFactory(overlap=4, task_kinds=[TaskKind.PAIRWISE], label_schema=[unsafe])
    users = [annotator(name) for name in ("careful1", "careful2", "never", "always")]
    for i in range(20):
        item, applies = make_item(project), i % 5 < 2  # 8 of the 20 items are unsafe
        for user, ticks in zip(users, (applies, applies, False, True), strict=True):
            submit_judgement(item, user, choice="a", strength="clear", labels={"unsafe": ticks})

    rows = {r.username: r.yes_no for r in annotator_rows(project)}

    assert [(f.label, f.catches, f.false_alarms) for f in rows["careful1"]] == [("Unsafe", 1, 0)]
    assert [(f.catches, f.false_alarms) for f in rows["never"]] == [(0, 0)]
    assert [(f.catches, f.false_alarms) for f in rows["always"]] == [(1, 1)]
    client.force_login(admin_user)
    html = client.get(f"/projects/{project.pk}/quality/").content.decode()
    assert html.count("Unsafe: ticks 1.00 where it applies, 0.00 where not") == 2
    assert "Unsafe: ticks 0.00 where it applies, 0.00 where not" in html


# --- adjudication ----------------------------------------------------------------------------


def test_split_items_are_adjudicated_by_someone_who_did_not_judge_them(client, roles, reviewer):
    project = ProjectFactory(overlap=2, task_kinds=[TaskKind.PAIRWISE])
    split, agreed = make_item(project), make_item(project)
    voter = UserFactory(username="voter", roles=[Role.ANNOTATOR, Role.REVIEWER])
    judge(project, [(voter, ["a", "a"]), (annotator("v2"), ["b", "a"])])
    assert [item.pk for item, _ in disagreement_items(project)] == [split.pk]
    with pytest.raises(PermissionDenied):
        review_services.item_adjudicate(item_id=split.pk, adjudicator=voter, choice="a")
    client.force_login(reviewer)
    listed = client.get(f"/projects/{project.pk}/disagreements/").content.decode()
    assert f"#{split.pk}" in listed and f"#{agreed.pk}" not in listed
    assert "A 1" in listed and "B 1" in listed and "<td>0.50</td>" in listed
    assert client.post(f"/items/{split.pk}/adjudicate/", {"choice": "sideways"}).status_code == 422
    response = client.post(f"/items/{split.pk}/adjudicate/", {"choice": "b", "note": "B is right"})
    assert response.status_code == 302
    assert Adjudication.objects.get().choice == "b"
    assert disagreement_items(project) == []
    assert Item.objects.get(pk=agreed.pk).adjudications.count() == 0


def test_ranking_adjudications_must_rank_every_reply_and_demonstrations_are_not_adjudicated(
    roles, reviewer
):
    project = ProjectFactory()
    ranking = make_item(project, TaskKind.RANKING, n=3)
    x, y, z = (c.pk for c in ranking.ordered_completions())
    for bad in ([[x], [y]], [[x], [y], [z], [x]], [[x, y, z, 999]]):
        with pytest.raises(ValidationError):
            review_services.item_adjudicate(item_id=ranking.pk, adjudicator=reviewer, ranking=bad)
    demo_item = make_item(project, TaskKind.DEMONSTRATION)
    with pytest.raises(ValidationError):
        review_services.item_adjudicate(item_id=demo_item.pk, adjudicator=reviewer, choice="a")
    assert not Adjudication.objects.exists()
    review_services.item_adjudicate(item_id=ranking.pk, adjudicator=reviewer, ranking=[[z], [x, y]])
    assert Adjudication.objects.get().ranking == [[z], [x, y]]


def test_split_rankings_are_offered_and_adjudicated_from_the_page(client, roles, reviewer):
    project = ProjectFactory(overlap=2, task_kinds=[TaskKind.RANKING])
    item = make_item(project, TaskKind.RANKING, n=3)
    x, y, z = (c.pk for c in item.ordered_completions())
    for name, ranking in (("k1", [[x], [y], [z]]), ("k2", [[z], [x, y]])):
        user = annotator(name)
        a = services.task_next_for_annotator(project=project, annotator=user)
        services.ranking_submit(assignment_id=a.pk, annotator=user, ranking=ranking)
    client.force_login(reviewer)

    listed = client.get(f"/projects/{project.pk}/disagreements/").content.decode()
    assert "1 &gt; 2 &gt; 3 1" in listed and "3 &gt; 1 = 2 1" in listed
    page = client.get(f"/items/{item.pk}/adjudicate/").content.decode()
    assert "k2: 3 &gt; 1 = 2" in page and f'name="rank_{x}"' in page
    refused = client.post(f"/items/{item.pk}/adjudicate/", {f"rank_{x}": "1"})
    assert (
        refused.status_code == 422
        and "Rank every completion exactly once" in refused.content.decode()
    )
    done = client.post(
        f"/items/{item.pk}/adjudicate/", {f"rank_{x}": "2", f"rank_{y}": "1", f"rank_{z}": "2"}
    )
    assert done.status_code == 302
    assert Adjudication.objects.get().ranking == [[y], [x, z]]
    assert disagreement_items(project) == []


def test_annotators_cannot_adjudicate(client, roles, annotator):
    project = ProjectFactory()
    item = make_item(project)
    client.force_login(annotator)
    assert client.post(f"/items/{item.pk}/adjudicate/", {"choice": "a"}).status_code == 403
    assert client.get(f"/projects/{project.pk}/disagreements/").status_code == 403
