"""An annotator's history (issue #17): filters by project, kind and review status in the URL,
pages, and each judgement with its whole conversation, not the last turn only."""

import pytest

from feedback import services
from feedback.models import TaskKind
from feedback.selectors import history as history_selectors
from feedback.services import review as review_services
from tests.factories import ProjectFactory, make_item, submit_judgement

pytestmark = pytest.mark.django_db


@pytest.fixture
def done(annotator):
    """In two projects: a demonstration, a vote and a ranking each, all by `annotator`."""
    made = {}
    for name in ("Alpha", "Beta"):
        project = ProjectFactory(name=name)
        made[name, "demonstration"] = submit_judgement(
            make_item(project, TaskKind.DEMONSTRATION), annotator
        )
        made[name, "pairwise"] = submit_judgement(
            make_item(project, TaskKind.PAIRWISE), annotator, choice="b", strength="strong"
        )
        made[name, "ranking"] = submit_judgement(make_item(project, TaskKind.RANKING), annotator)
    return made


def shown(client, query=""):
    response = client.get(f"/history/{query}")
    assert response.status_code == 200
    return [row.judgement for row in response.context["page"]], response.content.decode()


def test_history_filters_by_project_kind_and_status_in_the_url(client, done, annotator, reviewer):
    alpha = done["Alpha", "pairwise"].item.project
    client.force_login(annotator)
    rows, html = shown(client, f"?project={alpha.pk}&kind=pairwise")
    assert rows == [done["Alpha", "pairwise"]]
    assert f'<option value="{alpha.pk}" selected>' in html
    assert '<option value="pairwise" selected>' in html

    review_services.judgement_review(
        kind="ranking", judgement_id=done["Beta", "ranking"].pk, reviewer=reviewer,
        decision="reject", comment="Rank the correct one first.",
    )  # fmt: skip
    rows, html = shown(client, "?status=rejected")
    assert rows == [done["Beta", "ranking"]]
    assert "Reviewer rev: Rank the correct one first." in html
    rows, _ = shown(client, "?status=submitted")
    assert len(rows) == 5 and done["Beta", "ranking"] not in rows
    rows, html = shown(client, "?kind=demonstration&status=accepted")
    assert rows == [] and "None of your judgements match these filters." in html


def test_history_pages_newest_first(client, done, annotator, monkeypatch):
    monkeypatch.setattr(history_selectors, "HISTORY_PAGE_SIZE", 4)
    client.force_login(annotator)
    first, html = shown(client)
    assert 'rel="next" href="/history/?page=2"' in html and "Page 1 of 2" in html
    second, html = shown(client, "?page=2")
    assert 'rel="prev" href="/history/?page=1"' in html
    assert len(first) == 4 and len(second) == 2
    everything = first + second
    assert len({(type(j), j.pk) for j in everything}) == 6
    finished = [j.assignment.finished_at for j in everything]
    assert finished == sorted(finished, reverse=True)
    # Filters stay in the page links.
    _, html = shown(client, "?kind=ranking")
    assert "page=" not in html  # two rankings: one page


def test_history_shows_the_whole_conversation_and_every_reply(client, annotator):
    project = ProjectFactory(name="Turns", strength_optional=True)
    prompt = services.prompt_create(
        project=project,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "First question about tides."},
            {"role": "assistant", "content": "An earlier answer about the moon."},
            {"role": "user", "content": "And the last turn?"},
        ],
    )
    replies = [services.completion_create(prompt=prompt, text=text, model_name=name)
               for text, name in (("Reply one.", "m1"), ("Reply two.", "m2"))]  # fmt: skip
    item = services.item_create(
        project=project, kind=TaskKind.PAIRWISE, prompt=prompt, completions=replies
    )
    submit_judgement(item, annotator, choice="a")  # no strength: this project does not ask
    client.force_login(annotator)

    _, html = shown(client)

    detail = html[html.index('<details class="history-detail">') :]
    for text in ("You are terse.", "First question about tides.",
                 "An earlier answer about the moon.", "And the last turn?",
                 "Reply one.", "Reply two."):  # fmt: skip
        assert text in detail
    assert "Whole conversation (3 turns)" in html
    assert "Preferred" in detail


def test_a_vote_without_a_strength_reads_without_empty_brackets(client, annotator):
    project = ProjectFactory(name="Arena", strength_optional=True)
    submit_judgement(make_item(project, TaskKind.PAIRWISE), annotator, choice="a")
    client.force_login(annotator)
    _, html = shown(client)
    assert "Preferred “Answer 0" in html and "()" not in html
