"""The job page in a real browser while a real worker trains: the progress bar and the chart grow
through htmx polling, and the polling stops when the job ends."""

from __future__ import annotations

import pytest

from modeling import services
from modeling.models import JobStatus
from tests.modeling.helpers import wait_until_finished
from tests.playwright_support import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHART_POINTS = "() => Chart.getChart('job-chart')?.data.datasets[0]?.data.length ?? 0"


def test_job_page_follows_a_running_job_until_it_ends(
    page,
    gpu_worker,
    admin_user,
    base_checkpoint,
    make_snapshot,
    tmp_path,
):
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={"max_steps": 40, "batch_size": 2, "learning_rate": 1e-3},
        launched_by=admin_user,
    )
    login(page, admin_user.username)
    page.goto(f"/train/jobs/{job.pk}/")

    # A function, not an expression string: the strict CSP forbids eval in the page.
    page.wait_for_function(f"() => ({CHART_POINTS})() >= 2", timeout=60_000)  # the chart grew
    page.wait_for_selector("#job-progress .job-status.succeeded", timeout=120_000)

    job = wait_until_finished(job)
    assert job.status == JobStatus.SUCCEEDED
    assert page.get_attribute("#job-progress", "hx-trigger") is None  # polling stopped
    assert page.inner_text("#job-progress .job-headline").count("40") >= 1
    assert page.evaluate(CHART_POINTS) >= 2
    assert page.is_visible(f"a[href='/train/checkpoints/{job.result.pk}/']")
    shot(page, "job", full_page=True)
