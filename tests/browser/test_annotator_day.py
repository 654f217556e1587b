"""An annotator's day in a real browser, keyboard only: compare, write, rank, revisit, edit."""

import pytest

from core.roles import Role
from feedback import services
from feedback.models import (
    Assignment,
    Demonstration,
    JudgementRevision,
    PairwiseJudgement,
    RankingJudgement,
    TaskKind,
)
from tests.factories import ProjectFactory, UserFactory
from tests.playwright_support import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

XSS = '<script>window.__owned = 1</script><img src=x onerror="window.__owned = 1">'


@pytest.fixture
def workday(roles):
    project = ProjectFactory(
        name="Helpful replies",
        overlap=2,
        guidelines="Prefer **correct** replies.\n\n- Tie when equal\n- Both bad when neither helps",
        label_schema=[
            {"name": "helpfulness", "kind": "likert", "min": 1, "max": 7, "label": "Helpfulness"},
            {"name": "unsafe", "kind": "flag", "label": "Unsafe"},
        ],
    )
    pairwise_prompt = services.prompt_create(
        project=project,
        messages=[
            {"role": "user", "content": "What is 17 × 6?"},
            {"role": "assistant", "content": "Do you want the working too?"},
            {"role": "user", "content": f"Yes please. {XSS}"},
        ],
        system="You are a maths tutor.",
    )
    left_right = [
        services.completion_create(
            prompt=pairwise_prompt, text="**102**: 10 × 6 = 60 and 7 × 6 = 42.", model_name="good"
        ),
        services.completion_create(prompt=pairwise_prompt, text=f"96 {XSS}", model_name="bad"),
    ]
    services.item_create(
        project=project, kind=TaskKind.PAIRWISE, prompt=pairwise_prompt, completions=left_right
    )
    demo_prompt = services.prompt_create(project=project, messages="Explain recursion briefly.")
    services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=demo_prompt)
    rank_prompt = services.prompt_create(project=project, messages="Sort 42, 7, 19, 3.")
    ranked = [
        services.completion_create(prompt=rank_prompt, text=text, model_name=f"m{i}")
        for i, text in enumerate(
            ["3, 7, 19, 42", "42, 19, 7, 3", "3, 19, 7, 42", "`[3, 7, 19, 42]`"]
        )
    ]
    services.item_create(
        project=project, kind=TaskKind.RANKING, prompt=rank_prompt, completions=ranked
    )
    user = UserFactory(username="alice", roles=[Role.ANNOTATOR])
    return project, user


def test_annotator_works_the_queue_with_the_keyboard_only(page, workday):
    _, user = workday
    login(page, "alice")
    shot(page, "home")
    page.click("text=Start working")

    # Pairwise: 1 = left better, Shift+2 = clearly, Ctrl+Enter submits and swaps in the next task.
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
    page.keyboard.press("1")
    page.keyboard.press("Shift+Digit2")
    page.fill("input[name=label_helpfulness]", "6")
    page.locator("input[name=label_helpfulness]").press("Escape")
    shot(page, "task-pairwise", full_page=True)
    url_before = page.url
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("[data-task-kind=demonstration][data-ready]")
    assert page.url != url_before, "htmx should push the next task's URL"

    # Demonstration: the editor has focus; the preview renders sanitised markdown live.
    page.keyboard.type("A function that **calls itself** on a smaller input.")
    page.wait_for_selector("#preview strong")
    shot(page, "task-demonstration", full_page=True)
    page.keyboard.press("Control+Enter")

    # Ranking: focus card 3 and move it to the top, then tie card 2 with card 1.
    page.wait_for_selector("[data-task-kind=ranking][data-ready]")
    cards = page.locator(".rank-card")
    third_id = int(cards.nth(2).get_attribute("data-completion"))
    page.keyboard.press("Escape")
    page.keyboard.press("3")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    assert int(cards.nth(0).get_attribute("data-completion")) == third_id
    page.keyboard.press("2")
    page.keyboard.press("t")
    shot(page, "task-ranking", full_page=True)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=No tasks left for you")

    pairwise = PairwiseJudgement.objects.get(annotator=user)
    left_model = "good" if pairwise.shown_left == "a" else "bad"
    assert (pairwise.choice == "a") == (left_model == "good")
    assert pairwise.strength == "clear"
    assert pairwise.labels == {"helpfulness": 6, "unsafe": False}
    assert pairwise.seconds_spent is not None
    demonstration = Demonstration.objects.get(annotator=user)
    assert demonstration.text.startswith("A function that **calls")
    # The previous task's label answers must not leak into the next task's form.
    assert demonstration.labels == {"unsafe": False}
    ranking = RankingJudgement.objects.get(annotator=user).ranking
    assert third_id in ranking[0] and len(ranking[0]) == 2
    assert page.evaluate("window.__owned") is None
    assert page.dialogs == []

    # History: revisit and edit the demonstration; the first version is kept.
    page.goto("/history/")
    shot(page, "history")
    demo_assignment = Assignment.objects.get(annotator=user, item__kind=TaskKind.DEMONSTRATION)
    page.goto(f"/tasks/{demo_assignment.pk}/")
    page.fill("textarea[name=text]", "A function that calls itself until a base case stops it.")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/history/")
    assert "base case" in Demonstration.objects.get(annotator=user).text
    assert JudgementRevision.objects.filter(assignment=demo_assignment).count() == 1


def test_help_overlay_and_skip_by_key(page, workday):
    project, _ = workday
    login(page, "alice")
    page.goto(f"/projects/{project.pk}/work/")
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
    page.keyboard.press("?")
    assert page.locator("#keys-help").is_visible()
    shot(page, "keys-help")
    page.keyboard.press("Escape")
    page.keyboard.press("s")
    page.wait_for_selector("[data-task-kind=demonstration][data-ready]")
    assert Assignment.objects.filter(status="skipped").count() == 1


def test_panes_stack_on_a_narrow_screen(page, workday):
    project, _ = workday
    page.set_viewport_size({"width": 420, "height": 900})
    login(page, "alice")
    page.goto(f"/projects/{project.pk}/work/")
    panes = page.locator(".pane")
    first, second = panes.nth(0).bounding_box(), panes.nth(1).bounding_box()
    assert second["y"] > first["y"] + first["height"] - 1
    shot(page, "task-pairwise-narrow", full_page=True)


def test_admin_sees_progress_with_hostile_text_escaped(page, workday):
    project, user = workday
    assignment = services.task_next_for_annotator(project=project, annotator=user)
    services.assignment_skip(assignment_id=assignment.pk, annotator=user, reason=XSS)
    UserFactory(username="root", roles=[Role.ADMIN], is_staff=True, is_superuser=True)
    login(page, "root")
    page.goto(f"/projects/{project.pk}/progress/")
    page.wait_for_selector("text=Skipped items")
    shot(page, "progress", full_page=True)
    assert page.evaluate("window.__owned") is None
    assert "<script>" in page.inner_text("table >> nth=1")
