"""The training screens for every role, the launch form's validation, and the job page's live
progress (the htmx poll and when it stops)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from feedback.models import DatasetSnapshot
from jobs.services import work_sweep
from modeling import services
from modeling.models import JobStatus, TrainingJob
from tests.modeling.helpers import queued_messages

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_gpu_queue")]

HX = {"HX-Request": "true"}


@pytest.fixture
def job(admin_user, base_checkpoint, make_snapshot):
    return services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={"max_steps": 10},
        launched_by=admin_user,
        enqueue=False,
    )


def pages(job) -> list[str]:
    return [
        "/train/jobs/",
        "/train/jobs/new/sft/",
        "/train/jobs/new/grpo/",
        f"/train/jobs/{job.pk}/",
    ]  # the checkpoint page is reviewers' too: tests/modeling/test_checkpoint_page.py


# --- who may see what ------------------------------------------------------------------------


def test_admin_sees_every_training_page(client, admin_user, job):
    client.force_login(admin_user)
    for url in pages(job):
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("who", ["annotator", "reviewer", "nobody"])
def test_other_roles_get_403_everywhere(client, request, who, job):
    client.force_login(request.getfixturevalue(who))
    for url in pages(job):
        assert client.get(url).status_code == 403, url
    for url in [
        "/train/jobs/new/sft/",
        "/train/jobs/new/sft/validate/",
        f"/train/jobs/{job.pk}/cancel/",
        f"/train/jobs/{job.pk}/rerun/",
    ]:
        assert client.post(url).status_code == 403, url
    job.refresh_from_db()
    assert not job.cancel_requested
    assert TrainingJob.objects.count() == 1


def test_anonymous_is_sent_to_login(client, job):
    response = client.get("/train/jobs/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_only_admins_get_the_training_link(client, admin_user, annotator):
    client.force_login(annotator)
    assert 'href="/train/jobs/"' not in client.get("/").content.decode()
    client.force_login(admin_user)
    assert 'href="/train/jobs/"' in client.get("/").content.decode()


def test_unknown_kind_is_404(admin_client):
    assert admin_client.get("/train/jobs/new/sparkles/").status_code == 404


# --- the launch form --------------------------------------------------------------------------


def form_data(parent, snapshot, **config) -> dict:
    data = {"parent": parent.pk, "snapshot": snapshot.pk, "time_limit_minutes": 60}
    data.update({f"cfg_{k}": v for k, v in config.items()})
    return data


def test_launch_form_offers_only_ready_snapshots_of_the_right_kind_with_defaults(
    admin_client, base_checkpoint, make_snapshot
):
    preference = make_snapshot("preference")
    sft = make_snapshot("sft")
    DatasetSnapshot.objects.create(
        project=sft.project, name="half built", kind="preference", status="queued"
    )

    page = admin_client.get("/train/jobs/new/dpo/").content.decode()

    assert f'<option value="{preference.pk}">' in page
    assert f'value="{sft.pk}"' not in page
    assert "half built" not in page
    assert 'name="cfg_beta" value="0.1"' in page  # DPO's default
    assert 'name="cfg_learning_rate" value="1e-06"' in page
    assert "optimizer step" in page  # the estimate for the preselected snapshot


def test_launching_from_the_form_queues_the_job_and_shows_it(
    admin_client, base_checkpoint, make_snapshot, django_capture_on_commit_callbacks
):
    snapshot = make_snapshot("sft")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/train/jobs/new/sft/", form_data(base_checkpoint, snapshot, max_steps=3, batch_size=2)
        )
    job = TrainingJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/train/jobs/{job.pk}/"
    assert (job.config["max_steps"], job.config["batch_size"]) == (3, 2)
    assert job.time_limit_seconds == 3600
    assert queued_messages() == 1


def test_launch_form_shows_config_errors_next_to_their_inputs_and_queues_nothing(
    admin_client, base_checkpoint, make_snapshot, django_capture_on_commit_callbacks
):
    snapshot = make_snapshot("sft")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/train/jobs/new/sft/",
            form_data(base_checkpoint, snapshot, max_steps=0, learning_rate="fast"),
        )
    assert response.status_code == 422
    page = response.content.decode()
    assert re.search(r"Max steps.*?Input should be greater than or equal to 1", page, re.S)
    assert "Enter a number." in page  # the learning rate, caught by the form field
    assert not TrainingJob.objects.exists()
    assert queued_messages() == 0


def test_launch_form_refuses_a_snapshot_of_the_wrong_kind(
    admin_client, base_checkpoint, make_snapshot
):
    sft = make_snapshot("sft")
    response = admin_client.post("/train/jobs/new/dpo/", form_data(base_checkpoint, sft))
    assert response.status_code == 422
    assert "Select a valid choice" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_launch_form_without_snapshots_says_what_to_do(admin_client, base_checkpoint):
    page = admin_client.get("/train/jobs/new/reward/").content.decode()
    assert "No ready snapshot of the right kind yet" in page
    response = admin_client.post("/train/jobs/new/reward/", {"parent": base_checkpoint.pk})
    assert response.status_code == 422
    assert "This field is required." in response.content.decode()


def test_htmx_revalidation_returns_only_the_form_with_errors_and_estimate(
    admin_client, base_checkpoint, make_snapshot
):
    snapshot = make_snapshot("sft")
    data = form_data(base_checkpoint, snapshot, epochs=3, batch_size=2)
    response = admin_client.post("/train/jobs/new/sft/validate/", data, headers=HX)
    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith('<form id="launch-form"')
    train_rows = snapshot.row_counts["train"]
    steps = 3 * -(-train_rows // 2)
    assert f"About <strong>{steps}</strong> optimizer steps on {train_rows} training rows" in page

    data["cfg_lora_dropout"] = 1.5
    page = admin_client.post("/train/jobs/new/sft/validate/", data, headers=HX).content.decode()
    assert "Input should be less than 1" in page
    assert "Fix the settings above" in page
    assert not TrainingJob.objects.exists()


def test_unknown_settings_from_other_clients_are_named(admin_user, base_checkpoint, make_snapshot):
    # The form only offers known settings; the service still names a stray one clearly.
    with pytest.raises(services.JobConfigInvalid) as exc:
        services.job_config_clean(kind="sft", raw={"lr": 1})
    assert exc.value.field_errors["lr"][0].startswith("unknown setting for sft (allowed: ")


# --- the job page -----------------------------------------------------------------------------


def test_running_job_page_shows_progress_metrics_log_and_polls(admin_client, job):
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        worker_host="gpu0@box",
        started_at=timezone.now() - timedelta(seconds=30),
        heartbeat_at=timezone.now(),
        step=3,
        total_steps=10,
        metrics={"loss": 1.23456, "learning_rate": 2e-5},
        metric_history=[{"step": 1, "loss": 2.0}, {"step": 3, "loss": 1.23456}],
        log_tail="step 3/10 loss=1.235\n<script>alert(1)</script>",
    )

    page = admin_client.get(f"/train/jobs/{job.pk}/").content.decode()

    assert f'hx-get="/train/jobs/{job.pk}/" hx-trigger="every 1s"' in page
    assert '<progress max="10" value="3"' in page
    assert "<strong>3</strong> / 10 steps" in page
    assert "left" in page  # an ETA once a step has finished
    assert "gpu0@box" in page
    assert "1.235" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the log is escaped
    history = re.search(r'<script id="job-metrics" type="application/json">(.*?)</script>', page)
    assert json.loads(history.group(1))[-1] == {"step": 3, "loss": 1.23456}
    assert "chart.umd.min.js" in page
    assert "Cancel</button>" in page


def test_the_poll_gets_only_the_progress_fragment_and_stops_when_the_job_ends(admin_client, job):
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, heartbeat_at=timezone.now()
    )
    headers = {**HX, "HX-Target": "job-progress"}
    fragment = admin_client.get(f"/train/jobs/{job.pk}/", headers=headers).content.decode()
    assert fragment.lstrip().startswith('<div id="job-progress" hx-get=')
    assert "<h1>" not in fragment

    TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    fragment = admin_client.get(f"/train/jobs/{job.pk}/", headers=headers).content.decode()
    assert fragment.lstrip().startswith('<div id="job-progress">')  # no hx-trigger: polling stops
    assert "Cancel</button>" not in fragment


def test_a_silent_job_is_failed_by_the_sweep_not_by_reading_its_page(admin_client, job, settings):
    silent_since = timezone.now() - timedelta(seconds=settings.VEREDICTO_JOB_STALE_SECONDS + 5)
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, started_at=silent_since, heartbeat_at=silent_since
    )
    admin_client.get(f"/train/jobs/{job.pk}/")
    assert TrainingJob.objects.get(pk=job.pk).status == JobStatus.RUNNING  # a GET changes nothing

    work_sweep()  # what Celery beat runs every VEREDICTO_JOB_SWEEP_SECONDS

    page = admin_client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert "worker stopped responding (no heartbeat since" in page
    assert "Re-run</button>" in page


def test_cancel_and_rerun_buttons(admin_client, job):
    response = admin_client.post(f"/train/jobs/{job.pk}/cancel/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    page = admin_client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert "cancelled" in page.lower()

    response = admin_client.post(f"/train/jobs/{job.pk}/rerun/")
    rerun = TrainingJob.objects.get(previous_attempt=job)
    assert response["Location"] == f"/train/jobs/{rerun.pk}/"
    assert rerun.attempt == 2
    page = admin_client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert f'Re-run as <a href="/train/jobs/{rerun.pk}/"' in page
    assert "Re-run</button>" not in page

    response = admin_client.post(f"/train/jobs/{job.pk}/cancel/", follow=True)
    assert "has already finished" in response.content.decode()


# --- what users wrote -------------------------------------------------------------------------


def test_names_from_users_are_escaped(admin_client, job, base_checkpoint):
    DatasetSnapshot.objects.filter(pk=job.snapshot_id).update(name="<img src=x onerror=alert(1)>")
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.FAILED, error="<b>boom</b>", finished_at=timezone.now()
    )
    for url in ("/train/jobs/", f"/train/jobs/{job.pk}/"):
        page = admin_client.get(url).content.decode()
        assert "<img src=x" not in page and "<b>boom" not in page, url


def test_the_job_list_refreshes_itself_only_while_something_runs(admin_client, job):
    page = admin_client.get("/train/jobs/").content.decode()
    assert (
        '<div id="job-table" hx-get="/train/jobs/" hx-trigger="every 2s"' in page
    )  # job is queued
    fragment = admin_client.get("/train/jobs/", headers={**HX, "HX-Target": "job-table"})
    assert fragment.content.decode().lstrip().startswith('<div id="job-table"')
    assert "<h1>" not in fragment.content.decode()

    TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    assert '<div id="job-table">' in admin_client.get("/train/jobs/").content.decode()
