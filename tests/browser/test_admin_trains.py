"""An admin's round in a real browser, with a real Celery worker on the test Redis doing the work:
upload a file (preview, then import), build a snapshot, launch a training job from the form, watch
its progress bar reach the end, then find the new checkpoint's metrics and chart on the dashboard.

The worker consumes both queues in a thread of this process, as `make run`'s worker does on one
machine: imports and snapshots (default queue), the job and its evaluations (gpu queue).
"""

import json

import pytest
from celery.contrib.testing.worker import start_worker

from config.celery import CeleryQueue, app
from evals.models import EvalRun, RunStatus
from feedback.models import DatasetSnapshot, Demonstration, Origin, TaskKind
from jobs.models import Status
from modeling import services
from modeling.models import JobStatus, TrainingJob
from tests.factories import ProjectFactory
from tests.modeling.helpers import purge_gpu_queue, wait_for
from tests.playwright_support import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Twelve SFT rows in the {"prompt", "completion"} layout: enough for a few steps of batch 2.
PAIRS = [(n, 12 - n) for n in range(12)]
SFT_ROWS = "".join(
    json.dumps({"prompt": f"What is {a} + {b}?", "completion": str(a + b)}) + "\n" for a, b in PAIRS
)
STEPS = 6
PROGRESS_AT_END = """() => {
  const bar = document.querySelector('#job-progress progress');
  return bar !== null && bar.max > 1 && bar.value === bar.max;
}"""


@pytest.fixture
def worker(settings, tmp_path, transactional_db):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VEREDICTO_MODELS_DIR = ""
    settings.VEREDICTO_JOB_PROGRESS_SECONDS = 0.2  # progress rows often enough to watch the bar
    purge_gpu_queue()
    with start_worker(
        app,
        pool="solo",
        queues=[CeleryQueue.DEFAULT.value, CeleryQueue.GPU.value],
        perform_ping_check=False,
        shutdown_timeout=60,
    ) as running:
        yield running
    purge_gpu_queue()


def test_admin_imports_snapshots_trains_and_sees_the_checkpoint_on_the_dashboard(
    page, worker, admin_user, tiny_model_dir, tmp_path
):
    project = ProjectFactory(name="Arithmetic", task_kinds=[TaskKind.DEMONSTRATION])
    base = services.checkpoint_register(name="tiny-base", storage_path=tiny_model_dir)
    upload = tmp_path / "sums.jsonl"
    upload.write_text(SFT_ROWS)
    login(page, admin_user.username)

    # Upload: the preview shows the detected shape and the first rows before anything is written.
    page.goto(f"/projects/{project.pk}/data/")
    page.set_input_files("input[name=file]", str(upload))
    page.click("button:has-text('Preview')")
    page.wait_for_selector("table.preview >> text=What is 1 + 11?")
    assert "12 × sft" in page.inner_text("#import-panel")
    shot(page, "data-import-preview", full_page=True)
    assert not Demonstration.objects.exists()
    page.click("button:has-text('Import the whole file')")
    page.wait_for_selector("#import-status >> text=Succeeded", timeout=60_000)
    assert Demonstration.objects.filter(origin=Origin.IMPORTED).count() == 12

    # Snapshot: SFT rows from the imported demonstrations, built by the worker.
    page.goto(f"/projects/{project.pk}/data/")
    page.select_option("select[name=kind]", "sft")
    page.fill("input[name=name]", "sums v1")
    page.fill("input[name=test_fraction]", "0")
    page.check("input[name=include_imported]")
    page.click("button:has-text('Build snapshot')")
    page.wait_for_selector("#snapshot-status >> text=Ready", timeout=60_000)
    snapshot = DatasetSnapshot.objects.get(name="sums v1")
    assert snapshot.status == Status.SUCCEEDED and snapshot.row_counts["train"] == 12

    # Launch: the form validates as it is edited (htmx) and estimates the steps.
    page.goto("/train/jobs/new/sft/")
    assert page.input_value("select[name=parent]") == str(base.pk)
    assert page.input_value("select[name=snapshot]") == str(snapshot.pk)
    for name, value in (("cfg_batch_size", "2"), ("cfg_max_steps", str(STEPS))):
        with page.expect_response(lambda response: "/validate/" in response.url):
            page.fill(f"input[name={name}]", value)
            page.press(f"input[name={name}]", "Tab")  # change fires on leaving the input
        page.wait_for_selector(f"input[name={name}][value='{value}']")
    page.wait_for_selector(f"#estimate >> text=About {STEPS} optimizer steps")
    shot(page, "job-launch", full_page=True)
    page.click("#launch-form button:has-text('Launch')")

    # The job page polls itself until the job ends: the bar fills, the status turns succeeded.
    page.wait_for_url("**/jobs/*/")
    job = TrainingJob.objects.get()
    page.wait_for_function(PROGRESS_AT_END, timeout=180_000)
    page.wait_for_selector("#job-progress .job-status.succeeded", timeout=60_000)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.step == job.total_steps == STEPS
    assert job.config["max_steps"] == STEPS and job.launched_by == admin_user
    shot(page, "job", full_page=True)

    # The new checkpoint's default evaluations run on the same worker; then the dashboard has
    # its row, with numbers, and the chart across checkpoints.
    checkpoint = job.result
    wait_for(
        lambda: (
            EvalRun.objects.filter(checkpoint=checkpoint).exists()
            and not EvalRun.objects.filter(checkpoint=checkpoint)
            .exclude(status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED])
            .exists()
        ),
        # Each default suite is its own process now (jobs/backends/local.py), one at a time on
        # this one-worker setup: a few seconds of imports each, more on a loaded machine.
        timeout=600,
        what="the new checkpoint's evaluations",
    )
    runs = EvalRun.objects.filter(checkpoint=checkpoint)
    assert {run.status for run in runs} == {RunStatus.SUCCEEDED}, [run.error for run in runs]
    page.goto("/evals/dashboard/")
    row = page.locator("tr", has=page.locator(f"a[href='/train/checkpoints/{checkpoint.pk}/']"))
    assert row.locator("td.num").count() >= 1
    assert any(cell.strip() not in ("", "–") for cell in row.locator("td.num").all_inner_texts())
    page.wait_for_function(
        "() => Chart.getChart(document.querySelector('canvas[data-eval-chart]')) !== undefined"
    )
    shot(page, "dashboard", full_page=True)
