"""AI help in the browser: an annotator edits a model's draft, and sees AI votes where the project
shows them, with htmx and the Content-Security-Policy on."""

import pytest
from django.contrib.auth import get_user_model
from rapidfuzz.distance import Levenshtein

from feedback.models import Demonstration, TaskKind
from feedback.services.assist import ai_vote_submit, draft_store
from tests.factories import ProjectFactory, make_item
from tests.playwright_support import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DRAFT = "The answer is **4**."


def test_an_annotator_edits_a_models_draft_and_the_change_is_recorded(page, annotator):
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    project = ProjectFactory(name="Drafted", task_kinds=[TaskKind.DEMONSTRATION])
    item = make_item(project, TaskKind.DEMONSTRATION)
    draft_store(item=item, text=DRAFT, model_name="sft-round-1", model_ref="checkpoint:1")
    login(page, "ann")
    page.goto(f"/projects/{project.pk}/work/")
    page.wait_for_selector("[data-task-kind=demonstration][data-ready]")

    assert "Draft written by sft-round-1 — edit it" in page.inner_text("#draft-notice")
    assert page.input_value("textarea[name=text]") == DRAFT
    page.wait_for_selector("#preview strong")  # the draft's preview, rendered on load
    page.fill("textarea[name=text]", "The answer is **four**.")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_selector("text=No tasks left for you")

    demo = Demonstration.objects.get(item=item)
    assert demo.draft.text == DRAFT
    expected = Levenshtein.normalized_distance(DRAFT, "The answer is **four**.")
    assert demo.draft_edit_distance == pytest.approx(expected, abs=1e-4)
    assert problems == []


def test_ai_votes_show_beside_the_pair_where_the_project_opts_in(page, annotator):
    project = ProjectFactory(name="Shown", task_kinds=[TaskKind.PAIRWISE], show_ai_votes=True)
    item = make_item(project, TaskKind.PAIRWISE)
    voter = get_user_model().objects.create(username="ai-3-rm", is_active=False)
    ai_vote_submit(item=item, voter=voter, choice="tie", model_ref="checkpoint:3")
    login(page, "ann")
    page.goto(f"/projects/{project.pk}/work/")
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")

    assert "ai-3-rm: tie" in page.inner_text("#ai-votes")
    page.check("input[name=side][value=left]")
    page.check("input[name=strength][value=clear]")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_selector("text=No tasks left for you")
