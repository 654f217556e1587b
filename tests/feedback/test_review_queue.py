"""Review at scale (issue #17): every kind of judgement is reviewed, the queue's filters are its
URL, it pages, bulk accept asks first and counts, and a reviewer lands on the queue."""

import json

import pytest
from django.core.exceptions import ValidationError

from core.errors import TaskUnavailable
from core.roles import Role
from feedback import services
from feedback.models import (
    Demonstration,
    JudgementStatus,
    PairwiseJudgement,
    RankingJudgement,
    Review,
    TaskKind,
)
from feedback.selectors import review as review_selectors
from feedback.services import review as review_services
from tests.factories import ProjectFactory, UserFactory, make_item, submit_judgement

pytestmark = pytest.mark.django_db


@pytest.fixture
def work(roles, annotator, other_annotator):
    """Two projects; in each, one judgement of every kind by each of two annotators."""
    made = {}
    for name in ("Alpha", "Beta"):
        project = ProjectFactory(name=name, overlap=2)
        for kind in TaskKind.values:
            item = make_item(project, kind)
            for user in (annotator, other_annotator):
                extra = {"choice": "a", "strength": "clear"} if kind == TaskKind.PAIRWISE else {}
                made[name, kind, user.username] = submit_judgement(item, user, **extra)
    return made


def queue_html(client, query=""):
    response = client.get(f"/review/{query}")
    assert response.status_code == 200
    return response, response.content.decode()


# --- deciding on votes and rankings ------------------------------------------------------------


@pytest.mark.parametrize("kind", [TaskKind.PAIRWISE, TaskKind.RANKING])
def test_votes_and_rankings_are_accepted_or_rejected_like_demonstrations(work, reviewer, kind):
    accepted, rejected = work["Alpha", kind, "ann"], work["Alpha", kind, "ann2"]
    review_services.judgement_review(
        kind=kind, judgement_id=accepted.pk, reviewer=reviewer, decision="accept"
    )
    with pytest.raises(ValidationError) as refused:
        review_services.judgement_review(
            kind=kind, judgement_id=rejected.pk, reviewer=reviewer, decision="reject"
        )
    assert "comment" in refused.value.message_dict
    review_services.judgement_review(
        kind=kind, judgement_id=rejected.pk, reviewer=reviewer, decision="reject",
        comment="Both replies are wrong: choose both bad.",
    )  # fmt: skip
    accepted.refresh_from_db()
    rejected.refresh_from_db()
    assert (accepted.status, rejected.status) == (
        JudgementStatus.ACCEPTED,
        JudgementStatus.REJECTED,
    )
    assert Review.objects.get(assignment=rejected.assignment).comment.startswith("Both replies")
    with pytest.raises(TaskUnavailable):  # reviewed once
        review_services.judgement_review(
            kind=kind, judgement_id=accepted.pk, reviewer=reviewer, decision="reject", comment="x"
        )


def test_only_a_demonstrations_text_can_be_edited_by_a_reviewer(work, reviewer):
    vote = work["Alpha", TaskKind.PAIRWISE, "ann"]
    with pytest.raises(ValidationError) as refused:
        review_services.judgement_review(
            kind="pairwise", judgement_id=vote.pk, reviewer=reviewer, decision="edit",
            edited_text="b",
        )  # fmt: skip
    assert "decision" in refused.value.message_dict
    vote.refresh_from_db()
    assert vote.status == JudgementStatus.SUBMITTED and not Review.objects.exists()


def test_a_rejected_vote_reaches_its_annotator_and_an_edit_sends_it_back_for_review(
    client, work, reviewer, annotator
):
    vote = work["Alpha", TaskKind.PAIRWISE, "ann"]
    review_services.judgement_review(
        kind="pairwise", judgement_id=vote.pk, reviewer=reviewer, decision="reject",
        comment="Left is wrong about the year.",
    )  # fmt: skip
    client.force_login(annotator)
    html = client.get("/history/?status=rejected").content.decode()
    assert "Reviewer rev: Left is wrong about the year." in html
    assert 'class="badge status-rejected">Rejected<' in html
    services.judgement_edit(
        assignment_id=vote.assignment_id, annotator=annotator, changes={"choice": "b"}
    )
    vote.refresh_from_db()
    assert vote.status == JudgementStatus.SUBMITTED


def test_rejected_votes_and_rankings_are_left_out_of_preference_snapshots(
    settings, tmp_path, roles, reviewer
):
    settings.MEDIA_ROOT = tmp_path
    project = ProjectFactory(overlap=1)
    judges = [UserFactory(username=f"j{n}", roles=[Role.ANNOTATOR]) for n in range(3)]
    kept = submit_judgement(
        make_item(project, TaskKind.PAIRWISE), judges[0], choice="a", strength="clear"
    )
    dropped = submit_judgement(
        make_item(project, TaskKind.PAIRWISE), judges[1], choice="a", strength="clear"
    )
    ranking = submit_judgement(make_item(project, TaskKind.RANKING), judges[2])
    for kind, judgement in (("pairwise", dropped), ("ranking", ranking)):
        review_services.judgement_review(
            kind=kind, judgement_id=judgement.pk, reviewer=reviewer, decision="reject",
            comment="Careless.",
        )  # fmt: skip

    snapshot = services.snapshot_create(project=project, kind="preference",
                                        policy={"test_fraction": 0})  # fmt: skip

    lines = (snapshot.path() / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == [kept.item_id]
    assert snapshot.policy["statuses"] == ["submitted", "accepted"]
    accepted_only = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0, "statuses": ["accepted"]}
    )
    assert (accepted_only.path() / "train.jsonl").read_text() == ""


# --- the queue: filters in the URL, pages, a capped count --------------------------------------


def test_queue_lists_every_kind_but_never_the_reviewers_own_work(client, work, roles):
    both = UserFactory(username="both", roles=[Role.ANNOTATOR, Role.REVIEWER])
    mine = submit_judgement(make_item(ProjectFactory(name="Gamma"), TaskKind.DEMONSTRATION), both)
    client.force_login(both)
    response, html = queue_html(client)
    kinds = {row.kind for row in response.context["page"].rows}
    assert kinds == set(TaskKind.values)
    assert "12 waiting" in html
    assert f"/review/demonstration/{mine.pk}/" not in html


def test_queue_filters_live_in_the_url_and_in_every_link(client, work, reviewer):
    alpha = work["Alpha", TaskKind.PAIRWISE, "ann"].item.project
    client.force_login(reviewer)
    query = f"?project={alpha.pk}&annotator=ann&kind=pairwise"
    response, html = queue_html(client, query)
    rows = response.context["page"].rows
    assert [row.judgement for row in rows] == [work["Alpha", TaskKind.PAIRWISE, "ann"]]
    assert "1 waiting" in html
    link = f"/review/pairwise/{rows[0].judgement.pk}/"
    assert f"{link}?project={alpha.pk}&amp;annotator=ann&amp;kind=pairwise" in html
    assert f'<option value="{alpha.pk}" selected>' in html  # the form shows what is chosen
    # Decided ones are a status away, and an unknown value is ignored rather than refused.
    review_services.judgement_review(
        kind="ranking", judgement_id=work["Beta", TaskKind.RANKING, "ann2"].pk, reviewer=reviewer,
        decision="accept",
    )  # fmt: skip
    response, _ = queue_html(client, "?status=accepted&kind=bogus&project=x")
    assert [r.judgement for r in response.context["page"].rows] == [
        work["Beta", TaskKind.RANKING, "ann2"]
    ]


def test_queue_pages_through_everything_oldest_first(client, work, reviewer, monkeypatch):
    monkeypatch.setattr(review_selectors, "REVIEW_PAGE_SIZE", 5)
    client.force_login(reviewer)
    seen = []
    for number in (1, 2, 3):
        response, html = queue_html(client, f"?page={number}")
        page = response.context["page"]
        seen += [(row.kind, row.judgement.pk) for row in page.rows]
        assert ('rel="next"' in html) == (number < 3)
        assert ('rel="prev"' in html) == (number > 1)
    assert len(seen) == len(set(seen)) == 12
    every = [(type(j), j.updated_at, j.pk) for j in work.values()]
    assert len(every) == 12
    order = [(row_kind, pk) for row_kind, pk in seen]
    stamps = [
        {"demonstration": Demonstration, "pairwise": PairwiseJudgement,
         "ranking": RankingJudgement}[kind].objects.get(pk=pk).updated_at
        for kind, pk in order
    ]  # fmt: skip
    assert stamps == sorted(stamps)


def test_queue_count_stops_at_its_cap(client, work, reviewer, monkeypatch):
    monkeypatch.setattr(review_selectors, "QUEUE_COUNT_CAP", 4)
    client.force_login(reviewer)
    _, html = queue_html(client)
    assert "4+ waiting" in html


# --- the review page walks the filtered queue ----------------------------------------------------


def test_review_page_steps_through_the_filtered_queue_and_moves_on_after_a_decision(
    client, work, reviewer
):
    votes = sorted(
        (
            work[name, TaskKind.PAIRWISE, who]
            for name in ("Alpha", "Beta")
            for who in ("ann", "ann2")
        ),
        key=lambda j: (j.updated_at, j.pk),
    )
    client.force_login(reviewer)
    html = client.get(f"/review/pairwise/{votes[1].pk}/?kind=pairwise").content.decode()
    assert f'rel="next" href="/review/pairwise/{votes[2].pk}/?kind=pairwise"' in html
    assert f'rel="prev" href="/review/pairwise/{votes[0].pk}/?kind=pairwise"' in html
    assert "Preferred" in html and "clearly better" in html  # what the vote said, on its reply
    assert "Accept with my edits" not in html  # a vote is accepted or rejected, not edited
    response = client.post(f"/review/pairwise/{votes[1].pk}/?kind=pairwise", {"decision": "accept"})
    assert response["Location"] == f"/review/pairwise/{votes[2].pk}/?kind=pairwise"
    votes[1].refresh_from_db()
    assert votes[1].status == JudgementStatus.ACCEPTED
    # The last one decided: the queue's first still waiting.
    response = client.post(f"/review/pairwise/{votes[3].pk}/?kind=pairwise",
                           {"decision": "reject", "comment": "No."})  # fmt: skip
    assert response["Location"] == f"/review/pairwise/{votes[0].pk}/?kind=pairwise"


def test_review_page_of_a_ranking_shows_the_replies_best_first(client, work, reviewer):
    ranking = work["Alpha", TaskKind.RANKING, "ann"]
    client.force_login(reviewer)
    html = client.get(f"/review/ranking/{ranking.pk}/").content.decode()
    first = ranking.item.item_completions.get(completion_id=ranking.ranking[0][0]).completion
    last = ranking.item.item_completions.get(completion_id=ranking.ranking[-1][0]).completion
    assert "Rank 1" in html and "Rank 4" in html
    assert html.index(first.text) < html.index(last.text)


def test_review_pages_are_404_for_unknown_kinds_and_ids(client, work, reviewer):
    client.force_login(reviewer)
    assert client.get("/review/bogus/1/").status_code == 404
    assert client.get("/review/pairwise/999999/").status_code == 404


# --- bulk accept -------------------------------------------------------------------------------


def test_bulk_accept_lists_what_it_will_accept_before_it_does(client, work, reviewer):
    picked = [work["Alpha", TaskKind.PAIRWISE, "ann"], work["Beta", TaskKind.RANKING, "ann2"]]
    selected = [f"pairwise:{picked[0].pk}", f"ranking:{picked[1].pk}"]
    client.force_login(reviewer)

    ask = client.post("/review/accept/", {"selected": selected, "back": "?kind=pairwise"})

    assert ask.status_code == 200
    html = ask.content.decode()
    assert "Accept 2 judgements?" in html and ">Accept 2 judgements</button>" in html
    assert not Review.objects.exists()
    done = client.post(
        "/review/accept/", {"selected": selected, "back": "?kind=pairwise", "confirm": "1"}
    )
    assert done["Location"] == "/review/?kind=pairwise"
    for judgement in picked:
        judgement.refresh_from_db()
        assert judgement.status == JudgementStatus.ACCEPTED
    assert Review.objects.filter(reviewer=reviewer, decision="accept").count() == 2
    shown = [str(m) for m in client.get("/review/").context["messages"]]
    assert shown == ["Accepted 2 judgements."]


def test_bulk_accept_passes_over_what_was_reviewed_meanwhile_or_is_ones_own(client, work, roles):
    both = UserFactory(username="both", roles=[Role.ANNOTATOR, Role.REVIEWER])
    own = submit_judgement(make_item(ProjectFactory(name="Gamma"), TaskKind.DEMONSTRATION), both)
    taken = work["Alpha", TaskKind.DEMONSTRATION, "ann"]
    review_services.demonstration_review(demonstration_id=taken.pk, reviewer=both,
                                         decision="reject", comment="Vague.")  # fmt: skip
    fresh = work["Beta", TaskKind.DEMONSTRATION, "ann"]
    client.force_login(both)
    selected = [f"demonstration:{own.pk}", f"demonstration:{taken.pk}",
                f"demonstration:{fresh.pk}", "pairwise:x", "bogus:1"]  # fmt: skip
    client.post("/review/accept/", {"selected": selected, "confirm": "1"})
    shown = [str(m) for m in client.get("/review/").context["messages"]]
    assert shown == ["Accepted 1 judgement. 2 passed over: already reviewed, or your own."]
    own.refresh_from_db()
    taken.refresh_from_db()
    assert (own.status, taken.status) == (JudgementStatus.SUBMITTED, JudgementStatus.REJECTED)


def test_bulk_accept_is_for_reviewers(client, work, annotator):
    vote = work["Alpha", TaskKind.PAIRWISE, "ann2"]
    client.force_login(annotator)
    response = client.post("/review/accept/", {"selected": [f"pairwise:{vote.pk}"], "confirm": "1"})
    assert response.status_code == 403
    vote.refresh_from_db()
    assert vote.status == JudgementStatus.SUBMITTED


# --- landing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_fixture", "landing"),
    [("reviewer", "/review/"), ("annotator", "/"), ("admin_user", "/")],
)
def test_a_login_lands_reviewers_on_the_review_queue(client, request, user_fixture, landing):
    user = request.getfixturevalue(user_fixture)
    user.set_password("pw")
    user.save()
    response = client.post("/accounts/login/", {"username": user.username, "password": "pw"},
                           follow=True)  # fmt: skip
    assert response.redirect_chain[-1][0] == landing


def test_a_filter_change_swaps_the_list_and_puts_only_the_chosen_filters_in_the_url(
    client, work, reviewer, annotator
):
    """The filter form sends every field, empty ones too; the address bar shows what counts."""
    client.force_login(reviewer)
    response = client.get(
        "/review/?project=&annotator=&kind=pairwise&status=submitted",
        headers={"HX-Request": "true"},
    )
    html = response.content.decode()
    assert response["HX-Push-Url"] == "/review/?kind=pairwise"
    assert html.lstrip().startswith('<section id="queue">') and "<html" not in html
    client.force_login(annotator)
    response = client.get(
        "/history/?project=&kind=&status=submitted", headers={"HX-Request": "true"}
    )
    assert response["HX-Push-Url"] == "/history/?status=submitted"
    assert response.content.decode().lstrip().startswith('<section id="history">')
