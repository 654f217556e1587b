"""The Ray backend against a real local Ray head (CPU only) that this module starts on
127.0.0.1 and stops afterwards: jobs are submitted through Ray's job submission API by a real
Celery worker, report progress and logs from the Ray job, stop on cancel, and fail with the
entry point's reason."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jobs.models import Status
from modeling import services
from modeling.models import Checkpoint, TrainingJob
from tests.modeling.helpers import wait_for, wait_until_finished

pytestmark = pytest.mark.django_db(transaction=True)

RAY = str(Path(sys.executable).with_name("ray"))
FEW = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3}
FOREVER = {"max_steps": 5000, "batch_size": 2, "learning_rate": 1e-3}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on loopback, torn down with `ray stop`. Short temp path: Ray's unix
    socket names must fit in 107 bytes."""
    temp = Path(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))
    dashboard = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(_free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--include-dashboard", "true", "--num-cpus", "2", "--num-gpus", "0",
         "--temp-dir", str(temp), "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        address = f"http://127.0.0.1:{dashboard}"
        _wait_until_it_runs_jobs(address)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_until_it_runs_jobs(address: str, timeout: float = 90) -> None:
    """A fresh head answers HTTP before its job agent registers: run one trivial job first."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            client = JobSubmissionClient(address)
            probe = client.submit_job(entrypoint="true")
            break
        except (RuntimeError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    while str(client.get_job_status(probe)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray at {address} did not run a trivial job")
        time.sleep(0.5)


@pytest.fixture
def on_ray(settings, ray_head):
    settings.VEREDICTO_JOB_BACKEND = "ray"
    settings.VEREDICTO_RAY_ADDRESS = ray_head


def launch(admin_user, parent, snapshot, config) -> TrainingJob:
    return services.job_launch(
        kind="sft", parent=parent, snapshot=snapshot, config=config, launched_by=admin_user
    )


def test_a_job_runs_as_a_ray_job_and_its_progress_and_log_reach_the_job_page(
    on_ray, gpu_worker, admin_user, admin_client, base_checkpoint, make_snapshot
):
    job = wait_until_finished(launch(admin_user, base_checkpoint, make_snapshot("sft"), FEW))
    assert job.status == Status.SUCCEEDED, job.error
    assert job.backend == "ray" and job.launch_id.startswith("veredicto-trainingjob-")
    assert job.step == 3 and "Training sft from tiny" in job.log_tail
    assert Checkpoint.objects.filter(job=job).exists()
    page = admin_client.get(f"/train/jobs/{job.pk}/").content.decode()
    assert f"Ray job <code>{job.launch_id}</code>" in page and "saved to" in page


def test_cancel_stops_the_ray_job(
    on_ray, gpu_worker, admin_user, base_checkpoint, make_snapshot, ray_head
):
    from ray.job_submission import JobSubmissionClient

    job = launch(admin_user, base_checkpoint, make_snapshot("sft"), FOREVER)
    wait_for(
        lambda: TrainingJob.objects.filter(pk=job.pk, step__gte=1).exists(),
        timeout=240,
        what="the Ray job to train",
    )
    services.job_cancel(job=job, cancelled_by=admin_user)
    job = wait_until_finished(job, timeout=60)
    assert job.status == Status.CANCELLED
    # Two paths end the Ray job, and either may win: the worker's poll sees the request and
    # stops the job (STOPPED), or the entry point sees it at a step boundary, ends the row
    # itself and exits (SUCCEEDED). The row can read cancelled a moment before Ray has noticed
    # the exit, so wait for Ray's verdict rather than read it once.
    client = JobSubmissionClient(ray_head)
    wait_for(
        lambda: str(client.get_job_status(job.launch_id)) in ("STOPPED", "SUCCEEDED"),
        timeout=60,
        what="the Ray job to end after the cancel",
    )
    assert not Checkpoint.objects.filter(job=job).exists()


def test_a_failing_entry_point_ends_failed_with_its_reason(
    on_ray, gpu_worker, admin_user, make_snapshot, tiny_model_dir, tmp_path
):
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "damaged"))
    damaged = services.checkpoint_register(name="damaged", storage_path=str(copy))
    (copy / "config.json").write_text("{not json")
    job = wait_until_finished(launch(admin_user, damaged, make_snapshot("sft"), FEW))
    assert job.status == Status.FAILED
    assert "config.json" in job.error
