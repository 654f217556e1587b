"""Every main page fits a 360 px phone: nothing makes the page scroll sideways (wide tables
scroll inside their own box), and Log out stays reachable (issue #17)."""

import pytest
from django.utils import timezone

from evals.models import EvalResult, EvalRun, RunStatus
from feedback import services
from feedback.models import TaskKind
from modeling.models import Checkpoint, CheckpointKind
from tests.factories import ProjectFactory, make_item
from tests.playwright_support import assert_no_sideways_scroll, login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 360, "height": 780}
WORD = "Supercalifragilistic" * 8  # one long word: it must wrap, not push the page wider
TEXT = f"{WORD} and a longer sentence about the reply that goes on for a while. " * 3


@pytest.fixture
def world(annotator, reviewer, admin_user):
    projects = {}
    for kind in TaskKind.values:
        project = ProjectFactory(
            name=f"A project with a long name for {kind} tasks", task_kinds=[kind]
        )
        n = {"pairwise": 2, "ranking": 4, "demonstration": 0}[kind]
        for _ in range(2):
            make_item(project, kind, texts=[TEXT] * n if n else None)
        projects[kind] = project
    # Some history and a demonstration to review, with long text in every column.
    demo = projects["demonstration"]
    assignment = services.task_next_for_annotator(project=demo, annotator=annotator)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text=TEXT)
    base = Checkpoint.objects.create(
        name="a-checkpoint-with-a-rather-long-name-v2", kind=CheckpointKind.POLICY,
        storage_path="/models/x",
    )  # fmt: skip
    now = timezone.now()
    for suite, task in [("perplexity", "held-out-text"), ("multiple_choice", "arithmetic-long")]:
        run = EvalRun.objects.create(
            checkpoint=base, suite=suite, task=task, status=RunStatus.SUCCEEDED,
            started_at=now, finished_at=now,
        )  # fmt: skip
        for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte", "acc", "acc_norm"):
            EvalResult.objects.create(run=run, metric=metric, value=1.2345, stderr=0.01,
                                      ci_low=1.1, ci_high=1.3, n=100)  # fmt: skip
    return projects


def _fits(page, path: str) -> None:
    page.goto(path)
    assert_no_sideways_scroll(page)


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_annotator_pages_fit_the_screen(page, world, width):
    """At desktop width too: a reply with one very long word must not widen a ranking card."""
    page.set_viewport_size({"width": width, "height": PHONE["height"]})
    login(page, "ann")
    _fits(page, "/")
    assert_log_out_on_screen(page)
    for kind, project in world.items():
        _fits(page, f"/projects/{project.pk}/work/")
        assert f'data-task-kind="{kind}"' in page.content() or "queue" in page.url
    _fits(page, "/history/")


def test_reviewer_and_admin_pages_fit_a_phone(page, world):
    page.set_viewport_size(PHONE)
    login(page, "rev")
    _fits(page, "/review/")
    _fits(page, "/evals/dashboard/")
    page.context.clear_cookies()
    login(page, "boss")
    project = world["pairwise"]
    for path in ("/", f"/projects/{project.pk}/progress/", "/evals/dashboard/",
                 f"/projects/{project.pk}/records/", f"/projects/{project.pk}/edit/",
                 "/projects/new/"):  # fmt: skip
        _fits(page, path)
    assert_log_out_on_screen(page)  # the admin's top bar has the most links


def assert_log_out_on_screen(page) -> None:
    box = page.get_by_role("button", name="Log out").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]
