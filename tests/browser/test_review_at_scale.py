"""Issue #17 in a real browser: the review queue's filters, keys and bulk accept, the review
page's keys, the history with whole conversations, the one-key vote, and the small fixes (stale
error, code lines, job chart legend, dashboard columns), at desktop width and on a 360 px phone."""

import pytest
from django.utils import timezone

from core.roles import Role
from evals.models import EvalResult, EvalRun, RunStatus
from feedback import services
from feedback.models import (
    Demonstration,
    JudgementStatus,
    PairwiseJudgement,
    RankingJudgement,
    Review,
    TaskKind,
)
from modeling.models import Checkpoint, CheckpointKind, JobStatus, TrainingJob
from tests.factories import ProjectFactory, UserFactory, make_item, submit_judgement
from tests.playwright_support import assert_no_sideways_scroll, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 360, "height": 780}
CODE = "\n\n```python\nresult = " + " + ".join(f"value_{n}" for n in range(60)) + "\n```\n"
LONG_WORD = "Pneumonoultramicroscopic" * 6


@pytest.fixture
def errors(page):
    """Console errors and uncaught exceptions on the page: a flow must leave none."""
    seen: list[str] = []
    page.on("console", lambda m: m.type == "error" and seen.append(m.text))
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    return seen


@pytest.fixture
def queue(roles):
    """alice's work waiting for review: two demonstrations, two votes and a ranking, oldest
    first in that order, in a project with a long name."""
    project = ProjectFactory(name=f"Support replies {LONG_WORD}", overlap=1)
    alice = UserFactory(username="alice", roles=[Role.ANNOTATOR])
    UserFactory(username="rev", roles=[Role.REVIEWER])
    made = [
        submit_judgement(make_item(project, TaskKind.DEMONSTRATION), alice, text=f"First {CODE}"),
        submit_judgement(make_item(project, TaskKind.DEMONSTRATION), alice, text="Second."),
        submit_judgement(
            make_item(project, TaskKind.PAIRWISE), alice, choice="a", strength="clear"
        ),
        submit_judgement(
            make_item(project, TaskKind.PAIRWISE), alice, choice="b", strength="slight"
        ),
        submit_judgement(make_item(project, TaskKind.RANKING), alice),
    ]
    return project, made


def test_reviewer_filters_ticks_with_keys_and_bulk_accepts_after_a_confirmation(
    page, queue, errors
):
    login(page, "rev")
    assert page.url.endswith("/review/")  # a reviewer lands on the queue
    page.wait_for_selector("text=5 waiting")
    assert page.locator(".keys-line").first.is_visible()

    page.select_option("select[name=kind]", "pairwise")  # htmx swaps the list, the URL follows
    page.wait_for_selector("text=2 waiting")
    page.wait_for_url("**/review/?kind=pairwise")  # only what is chosen
    assert page.locator("[data-review-row]").count() == 2
    shot(page, "review-queue-pairwise")

    page.locator("body").click(position={"x": 5, "y": 5})  # the filter select loses focus
    for key in ("j", "x", "j", "x"):
        page.keyboard.press(key)
    assert page.locator("[data-bulk-accept]").inner_text() == "Accept 2 ticked…"
    page.keyboard.press("Shift+A")
    page.wait_for_selector("h1:has-text('Accept 2 judgements?')")
    assert not Review.objects.exists()  # nothing happens before the confirmation
    page.click("button:has-text('Accept 2 judgements')")
    page.wait_for_selector("text=Accepted 2 judgements.")
    assert page.url.endswith("/review/?kind=pairwise")
    assert set(PairwiseJudgement.objects.values_list("status", flat=True)) == {"accepted"}
    assert Demonstration.objects.filter(status=JudgementStatus.SUBMITTED).count() == 2
    assert errors == []


def test_review_page_keys_accept_reject_and_step_but_never_fire_while_typing(page, queue, errors):
    _, (first, second, *_rest) = queue
    login(page, "rev")
    page.click("text=Start reviewing")
    page.wait_for_url(f"**/review/demonstration/{first.pk}/")
    # j and k walk the queue without deciding anything.
    page.keyboard.press("j")
    page.wait_for_url(f"**/review/demonstration/{second.pk}/")
    page.keyboard.press("k")
    page.wait_for_url(f"**/review/demonstration/{first.pk}/")

    # r: reject; the comment box takes the keys (a, e, j, k, r are letters there), Ctrl+Enter saves.
    page.keyboard.press("r")
    comment = "Vague: a reader cannot act on it; keep the joke out."
    page.keyboard.type(comment)
    assert Demonstration.objects.get(pk=first.pk).status == JudgementStatus.SUBMITTED
    page.keyboard.press("Control+Enter")
    page.wait_for_url(f"**/review/demonstration/{second.pk}/")
    # a: accept at once; the next in the queue follows.
    page.keyboard.press("a")
    page.wait_for_url("**/review/pairwise/**")
    shot(page, "review-pairwise", full_page=True)

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (JudgementStatus.REJECTED, JudgementStatus.ACCEPTED)
    assert Review.objects.get(assignment=first.assignment).comment == comment
    # A vote's page shows both replies and which was preferred, and offers no edit.
    assert page.locator(".pane.picked").count() == 1
    assert page.locator("input[name=decision][value=edit]").count() == 0
    assert errors == []


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_review_pages_fit_the_screen_and_code_scrolls_inside_its_block(page, queue, width):
    _, (first, *_rest) = queue
    page.set_viewport_size({"width": width, "height": PHONE["height"]})
    login(page, "rev")
    assert_no_sideways_scroll(page)
    page.goto(f"/review/demonstration/{first.pk}/")
    assert_code_scrolls_inside(page)
    assert_no_sideways_scroll(page)
    page.goto(f"/review/ranking/{RankingJudgement.objects.get().pk}/")
    assert_no_sideways_scroll(page)


def assert_code_scrolls_inside(page) -> None:
    """Every code block is within the window and scrolls sideways itself: not clipped, and not
    making the page wider."""
    blocks = page.locator(".md pre")
    assert blocks.count() > 0
    for n in range(blocks.count()):
        block = blocks.nth(n)
        if not block.is_visible():
            continue
        box = block.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"] + 1
        assert block.evaluate("e => e.scrollWidth > e.clientWidth && getComputedStyle(e).overflowX")
        assert block.evaluate("e => getComputedStyle(e).overflowX") == "auto"


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_history_filters_and_opens_the_whole_conversation(page, annotator, width, errors):
    page.set_viewport_size({"width": width, "height": PHONE["height"]})
    project = ProjectFactory(name="Turns")
    prompt = services.prompt_create(project=project, messages=[
        {"role": "user", "content": f"An opening question with {LONG_WORD}."},
        {"role": "assistant", "content": f"An earlier answer:\n\n{CODE}"},
        {"role": "user", "content": "And the last turn?"},
    ])  # fmt: skip
    services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
    submit_judgement(project.items.get(), annotator, text=f"My reply {CODE}")
    submit_judgement(make_item(project, TaskKind.PAIRWISE), annotator, choice="a", strength="clear")
    login(page, "ann")
    page.goto("/history/")
    assert page.locator(".history-row").count() == 2
    earlier = page.locator(".history-detail .msg.assistant").first
    assert not earlier.is_visible()  # folded: the list stays short
    page.locator(".history-detail summary").last.click()
    assert earlier.is_visible() and "An earlier answer" in earlier.inner_text()
    assert_code_scrolls_inside(page)
    assert_no_sideways_scroll(page)

    page.select_option("select[name=kind]", "pairwise")
    page.wait_for_function("() => document.querySelectorAll('.history-row').length === 1")
    page.wait_for_url("**/history/?kind=pairwise")
    page.locator(".history-detail summary").click()
    assert page.locator(".history-detail .pane").count() == 2
    assert_no_sideways_scroll(page)
    if width == 1280:
        shot(page, "history", full_page=True)
    assert errors == []


# --- the task screen ---------------------------------------------------------------------------


def test_one_key_casts_a_vote_when_the_project_makes_strength_optional(page, annotator, errors):
    project = ProjectFactory(name="Arena", strength_optional=True)
    for _ in range(3):
        make_item(project, TaskKind.PAIRWISE)
    login(page, "ann")
    page.goto(f"/projects/{project.pk}/work/")
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
    before = page.url
    page.keyboard.press("1")  # the whole vote
    page.wait_for_url(lambda url: url != before)
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
    before = page.url
    page.keyboard.press("Shift+Digit3")  # how much, first: then the pick casts it
    page.keyboard.press("2")
    page.wait_for_url(lambda url: url != before)
    votes = list(PairwiseJudgement.objects.order_by("pk").values_list("strength", flat=True))
    assert votes == ["", "strong"]
    assert errors == []


def test_errors_of_a_refused_vote_go_once_the_answer_is_given(page, annotator):
    project = ProjectFactory(name="Strict")
    make_item(project, TaskKind.PAIRWISE, texts=[f"Left {CODE}", f"Right {LONG_WORD}"])
    login(page, "ann")
    page.goto(f"/projects/{project.pk}/work/")
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
    assert_code_scrolls_inside(page)
    assert_no_sideways_scroll(page)
    page.keyboard.press("Control+Enter")  # nothing picked
    stale = page.locator("text=Pick the better reply")
    stale.wait_for()
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
    page.keyboard.press("1")
    assert stale.count() == 0
    page.keyboard.press("Control+Enter")  # left, but not how much
    strength_error = page.locator("text=Say how much better")
    strength_error.wait_for()
    page.wait_for_selector("[data-task-kind=pairwise][data-ready]")
    page.keyboard.press("Shift+Digit2")
    assert strength_error.count() == 0
    page.set_viewport_size(PHONE)
    assert_code_scrolls_inside(page)
    assert_no_sideways_scroll(page)


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_long_code_lines_scroll_inside_their_block_on_every_task_screen(page, annotator, width):
    """Before: one long code line in the conversation made the page 4,000 px wider, and beside
    the guidelines it pushed the panes and the preview off the screen."""
    page.set_viewport_size({"width": width, "height": PHONE["height"]})
    login(page, "ann")
    for kind, replies in (("pairwise", 2), ("ranking", 3), ("demonstration", 0)):
        project = ProjectFactory(name=f"Code {kind}", guidelines=f"Follow this:{CODE}")
        prompt = services.prompt_create(project=project, messages=[
            {"role": "user", "content": f"Why does this fail?{CODE}"},
            {"role": "assistant", "content": f"Which line?{CODE}"},
            {"role": "user", "content": "The long one."},
        ])  # fmt: skip
        completions = [services.completion_create(prompt=prompt, text=f"Reply {n}:{CODE}")
                       for n in range(replies)]  # fmt: skip
        services.item_create(project=project, kind=kind, prompt=prompt, completions=completions)
        page.goto(f"/projects/{project.pk}/work/")
        page.wait_for_selector(f"[data-task-kind={kind}][data-ready]")
        if kind == "demonstration":
            page.keyboard.type(f"Like this:{CODE}")
            page.wait_for_selector("#preview pre")
        assert_code_scrolls_inside(page)
        assert_no_sideways_scroll(page)


# --- training and evaluation pages -------------------------------------------------------------


SFT_METRICS = ["loss", "eval_loss", "mean_token_accuracy", "grad_norm", "learning_rate", "epoch",
               "num_tokens", "entropy", "eval_runtime", "eval_samples_per_second",
               "eval_steps_per_second", "eval_entropy", "eval_num_tokens"]  # fmt: skip


def test_job_chart_draws_what_matters_and_offers_the_rest(page, admin_user, errors):
    base = Checkpoint.objects.create(name="base", kind=CheckpointKind.POLICY, storage_path="/m")
    from feedback.models import DatasetSnapshot, SnapshotKind
    from jobs.models import Status

    snapshot = DatasetSnapshot.objects.create(
        project=ProjectFactory(name="P"), name="s", kind=SnapshotKind.SFT, status=Status.SUCCEEDED
    )
    history = [{"step": s, **{m: 1.0 / (s + n + 1) for n, m in enumerate(SFT_METRICS)}}
               for s in range(1, 6)]  # fmt: skip
    job = TrainingJob.objects.create(
        kind="sft", parent=base, snapshot=snapshot, config={}, time_limit_seconds=60,
        status=JobStatus.SUCCEEDED, metric_history=history, step=5, total_steps=5,
    )  # fmt: skip
    login(page, "boss")
    page.goto(f"/train/jobs/{job.pk}/")
    page.wait_for_selector(".chart-legend")
    drawn = page.locator(".legend-main input:checked")
    assert sorted(drawn.evaluate_all("boxes => boxes.map(b => b.dataset.metric)")) == [
        "eval_loss", "loss", "mean_token_accuracy"
    ]  # fmt: skip
    visible = "() => Chart.getChart('job-chart').getVisibleDatasetCount()"
    assert page.evaluate(visible) == 3
    more = page.locator(".legend-more summary")
    assert more.inner_text().startswith("10 more metrics")
    more.click()
    page.check(".legend-rest input[data-metric=learning_rate]")
    assert page.evaluate(visible) == 4
    page.uncheck(".legend-main input[data-metric=loss]")
    assert page.evaluate(visible) == 3
    assert errors == []


def test_dashboard_says_how_many_metric_columns_are_out_of_view(page, admin_user):
    checkpoint = Checkpoint.objects.create(
        name="a-checkpoint", kind=CheckpointKind.POLICY, storage_path="/m"
    )
    now = timezone.now()
    metrics = {("perplexity", "held-out-text"): 7, ("multiple_choice", "arithmetic"): 6}
    for (suite, task), count in metrics.items():
        run = EvalRun.objects.create(
            checkpoint=checkpoint, suite=suite, task=task, status=RunStatus.SUCCEEDED,
            started_at=now, finished_at=now,
        )  # fmt: skip
        for n in range(count):
            EvalResult.objects.create(run=run, metric=f"metric_{n}", value=0.5, n=10)
    page.set_viewport_size({"width": 700, "height": 800})
    login(page, "boss")
    page.goto("/evals/dashboard/")
    cue = page.locator("[data-scroll-cue]")
    cue.wait_for()
    text = cue.inner_text()
    assert "of 13 metric columns in view" in text and "more to the right" in text
    assert page.locator("[data-scroll-frame].more-right").count() == 1  # that edge is shaded
    page.locator(".table-scroll").evaluate("box => box.scrollLeft = box.scrollWidth")
    page.wait_for_function(
        "() => !document.querySelector('[data-scroll-cue]').textContent.includes('right')"
    )
    assert "to the left" in cue.inner_text()
    assert page.locator("[data-scroll-frame].more-right").count() == 0
