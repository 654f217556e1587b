"""A reviewer's pass in a real browser: accept one demonstration, reject another with a comment,
and the annotator then reads that comment in their history."""

import pytest

from core.roles import Role
from feedback import services
from feedback.models import Demonstration, DemonstrationStatus, Review, TaskKind
from tests.factories import ProjectFactory, UserFactory
from tests.playwright_support import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

GOOD = "A function that **calls itself** on a smaller input, until a base case stops it."
BAD = "Recursion is when"
COMMENT = "Unfinished sentence: say what recursion is and when it stops."


@pytest.fixture
def submitted(roles):
    """Two demonstrations written by an annotator through the annotation services, oldest first
    (the review queue's order): a good one, then an unfinished one."""
    project = ProjectFactory(name="Explanations", task_kinds=[TaskKind.DEMONSTRATION])
    alice = UserFactory(username="alice", roles=[Role.ANNOTATOR])
    UserFactory(username="rev", roles=[Role.REVIEWER])
    for question, text in (("Explain recursion briefly.", GOOD), ("What is recursion?", BAD)):
        prompt = services.prompt_create(project=project, messages=question)
        services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
        assignment = services.task_next_for_annotator(project=project, annotator=alice)
        services.demonstration_submit(assignment_id=assignment.pk, annotator=alice, text=text)
    return alice


def test_reviewer_accepts_one_demonstration_and_rejects_another_with_a_comment(
    page, browser, live_server, submitted
):
    login(page, "rev")
    page.goto("/review/")
    page.wait_for_selector("text=2 waiting")
    shot(page, "review-queue")
    page.click("text=Start reviewing")

    # The first (oldest) demonstration: rendered as markdown, accepted as it is.
    page.wait_for_selector(".md strong:has-text('calls itself')")
    shot(page, "review-demonstration", full_page=True)
    page.check("input[name=decision][value=accept]")
    page.click("button:has-text('Save decision')")

    # The next one follows at once; rejecting without a comment is refused, with the reason.
    page.wait_for_selector(f".md:has-text('{BAD}')")
    page.check("input[name=decision][value=reject]")
    page.click("button:has-text('Save decision')")
    page.wait_for_selector(".errors[role=alert]")
    assert not Review.objects.filter(decision="reject").exists()
    page.check("input[name=decision][value=reject]")
    page.fill("textarea[name=comment]", COMMENT)
    page.click("button:has-text('Save decision')")
    page.wait_for_selector("text=Nothing to review")

    good, bad = Demonstration.objects.order_by("pk")
    assert good.status == DemonstrationStatus.ACCEPTED
    assert bad.status == DemonstrationStatus.REJECTED
    assert Review.objects.get(assignment=bad.assignment).comment == COMMENT

    # The annotator sees the rejection and the reviewer's comment in their history.
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    annotator_page = context.new_page()
    try:
        login(annotator_page, "alice")
        annotator_page.goto("/history/")
        annotator_page.wait_for_selector(f".errors:has-text('Reviewer rev: {COMMENT}')")
        shot(annotator_page, "history-rejected")
    finally:
        context.close()
