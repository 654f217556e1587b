"""Small things on the task screens (issue #17): no console error on submit, and the annotator
sees how far they are ("2 of 3 · 1 left")."""

import pytest

from feedback.models import TaskKind
from tests.factories import ProjectFactory, make_item
from tests.playwright_support import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def queue(annotator):
    project = ProjectFactory(name="Polish")
    for _ in range(2):
        make_item(project, TaskKind.PAIRWISE)
    make_item(project, TaskKind.DEMONSTRATION)
    make_item(project, TaskKind.RANKING)
    return project


def test_submitting_tasks_logs_no_console_error(page, queue):
    problems: list[str] = []
    page.on("console", lambda msg: msg.type in ("error", "warning") and problems.append(msg.text))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    login(page, "ann")
    page.goto(f"/projects/{queue.pk}/work/")
    for _ in range(2):
        page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
        page.check("input[name=side][value=left]")
        page.check("input[name=strength][value=clear]")
        submit_and_wait(page)
    # The reply editor's live preview is an htmx request from inside the task form.
    page.wait_for_selector("[data-task-kind=demonstration][data-ready]")
    page.keyboard.type("A **bold** reply.")
    page.wait_for_selector("#preview strong")
    submit_and_wait(page)
    page.wait_for_selector("[data-task-kind=ranking][data-ready]")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_selector("text=No tasks left for you")
    assert problems == []


def submit_and_wait(page) -> None:
    """Submit, and wait until htmx has swapped in the next task and pushed its URL."""
    before = page.url
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(lambda url: url != before)
