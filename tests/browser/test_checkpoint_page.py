"""The checkpoint page in a real browser, at desktop width and on a 360 px phone: it never
scrolls sideways; the playground refuses bad input in place, keeping what was typed, and a
reply sampled by a real worker appears through htmx polling."""

from __future__ import annotations

import pytest
from django.utils import timezone

from evals.models import EvalResult, EvalRun, RunStatus, Suite
from jobs.models import Status
from modeling.models import Checkpoint, PlaygroundTurn
from tests.modeling.conftest import (  # noqa: F401  (the training tests' fixtures, by name)
    base_checkpoint,
    empty_gpu_queue,
    fast_jobs,
    gpu_worker,
)
from tests.playwright_support import assert_no_sideways_scroll, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 360, "height": 780}
WORD = "Supercalifragilistic" * 8  # one long word: it must wrap, not push the page wider


@pytest.fixture
def long_named(request, admin_user):
    """A child of the tiny model with a long name, evaluations and a finished conversation whose
    texts hold one very long word."""
    tiny = request.getfixturevalue("base_checkpoint")
    child = Checkpoint.objects.create(
        name="a-checkpoint-with-a-rather-long-name-" + "v2" * 20,
        kind="policy",
        storage_path=tiny.storage_path,
        parent=tiny,
        base_model=tiny,
        metrics={"train_loss": 1.5, "a_metric_with_a_very_long_name_indeed": 0.123},
    )
    now = timezone.now()
    for model, value in ((tiny, 0.3), (child, 0.6)):
        run = EvalRun.objects.create(
            checkpoint=model,
            suite=Suite.MULTIPLE_CHOICE,
            task="arithmetic-with-a-long-task-name",
            status=RunStatus.SUCCEEDED,
            started_at=now,
            finished_at=now,
        )
        EvalResult.objects.create(run=run, metric="acc", value=value, ci_low=0.1, ci_high=0.9)
    PlaygroundTurn.objects.create(
        checkpoint=child,
        system=f"A system prompt with {WORD}",
        messages=[{"role": "user", "content": f"A question with {WORD}?"}],
        sampling={"max_new_tokens": 16, "temperature": 0.8, "top_p": 0.95, "seed": 0},
        reply=f"A reply with {WORD}.",
        status=Status.SUCCEEDED,
        requested_by=admin_user,
    )
    return child


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_the_page_fits_and_refuses_bad_input_in_place(page, admin_user, long_named, width):
    page.set_viewport_size({"width": width, "height": PHONE["height"]})
    login(page, admin_user.username)
    page.goto(f"/train/checkpoints/{long_named.pk}/")
    page.wait_for_function(  # the chart along the lineage is drawn
        "() => Chart.getChart(document.querySelector('canvas[data-eval-chart]')) !== undefined"
    )
    assert page.is_visible("text=A reply with")
    assert_no_sideways_scroll(page)
    if width > PHONE["width"]:
        shot(page, "checkpoint", full_page=True)

    page.fill("#id_prompt", "")
    page.fill("#id_system", "Keep this system prompt.")
    page.fill("#id_temperature", "9")
    page.fill("#id_max_new_tokens", "5000")
    # The browser would refuse these itself (min/max on the inputs): send them anyway, as a
    # script or an old browser may, to see the server's answer.
    page.eval_on_selector("#playground-form", "form => form.setAttribute('novalidate', '')")
    page.click("#playground-form button.primary")
    page.wait_for_selector("#playground-form .errorlist")
    form = page.inner_text("#playground-form")
    assert "Type a message for the model." in form
    assert "Ensure this value is less than or equal to 5.0." in form
    assert "At most 1024 new tokens." in form
    assert page.input_value("#id_system") == "Keep this system prompt."
    assert page.input_value("#id_temperature") == "9"
    assert page.is_visible("text=A reply with")  # the conversation stayed
    assert not PlaygroundTurn.objects.exclude(status=Status.SUCCEEDED).exists()
    assert_no_sideways_scroll(page)


@pytest.mark.usefixtures("gpu_worker")
def test_a_reply_appears_without_reloading(request, page, admin_user):
    tiny = request.getfixturevalue("base_checkpoint")
    login(page, admin_user.username)
    page.goto(f"/train/checkpoints/{tiny.pk}/#playground")
    page.fill("#id_prompt", "What is 2 plus 3?")
    page.fill("#id_seed", "1")
    page.click("#playground-form button.primary")

    page.wait_for_selector("#playground-reply[hx-trigger]")  # queued: the page polls
    page.wait_for_selector("#playground-reply:not([hx-trigger]) .text", timeout=240_000)
    turn = PlaygroundTurn.objects.get()
    assert turn.status == Status.SUCCEEDED, turn.error
    assert page.inner_text("#playground-reply .text").strip() == turn.reply.strip()
    # The form is ready for the next message of the same conversation.
    assert page.input_value("#id_prompt") == ""
    assert page.input_value("input[name=previous]") == str(turn.pk)
