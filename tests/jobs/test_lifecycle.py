"""The shared lifecycle (jobs.services) on every kind of background work."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from evals.models import EvalRun
from feedback.models import DataImport, DatasetSnapshot
from jobs.models import Status
from jobs.services import (
    OVERRUN_GRACE_SECONDS,
    background_models,
    work_claim,
    work_fail_orphaned,
    work_finish,
    work_sweep,
)
from loop.models import ComparisonBatch
from modeling.models import AssistRun, PlaygroundTurn, TrainingJob
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def test_every_kind_of_background_work_shares_the_lifecycle():
    assert set(background_models()) == {
        TrainingJob,
        EvalRun,
        ComparisonBatch,
        PlaygroundTurn,
        AssistRun,
        DataImport,
        DatasetSnapshot,
    }


@pytest.fixture
def snapshot(admin_user):
    return DatasetSnapshot.objects.create(
        project=ProjectFactory(), name="s", kind="sft", created_by=admin_user
    )


@pytest.fixture
def data_import(admin_user):
    return DataImport.objects.create(project=ProjectFactory(), file="x.jsonl", original_name="x")


def test_a_row_is_claimed_once(snapshot):
    assert work_claim(DatasetSnapshot, pk=snapshot.pk, worker_host="w1@h")
    assert not work_claim(DatasetSnapshot, pk=snapshot.pk, worker_host="w2@h")  # redelivered
    snapshot.refresh_from_db()
    assert snapshot.status == Status.RUNNING and snapshot.worker_host == "w1@h"
    assert snapshot.started_at == snapshot.heartbeat_at is not None


def test_finish_leaves_a_row_someone_else_decided_alone(snapshot):
    work_claim(DatasetSnapshot, pk=snapshot.pk)
    assert work_finish(DatasetSnapshot, pk=snapshot.pk, status=Status.FAILED, error="swept")
    assert not work_finish(DatasetSnapshot, pk=snapshot.pk, status=Status.SUCCEEDED)
    snapshot.refresh_from_db()
    assert snapshot.status == Status.FAILED and snapshot.error == "swept"


def test_the_sweep_fails_silent_rows_of_every_kind_and_spares_live_ones(
    snapshot, data_import, settings
):
    now = timezone.now()
    silent_since = now - timedelta(seconds=settings.VEREDICTO_JOB_STALE_SECONDS + 1)
    for model, pk in ((DatasetSnapshot, snapshot.pk), (DataImport, data_import.pk)):
        work_claim(model, pk=pk)
    DatasetSnapshot.objects.update(heartbeat_at=silent_since)
    DataImport.objects.update(heartbeat_at=now)  # beating

    assert work_sweep(now=now) == {"feedback.DatasetSnapshot": 1}

    snapshot.refresh_from_db()
    data_import.refresh_from_db()
    assert snapshot.status == Status.FAILED and snapshot.finished_at == now
    assert snapshot.error == (
        "worker stopped responding (no heartbeat since "
        f"{silent_since.isoformat(timespec='seconds')})"
    )
    assert data_import.status == Status.RUNNING
    assert work_sweep(now=now) == {}  # one indexed query per kind, nothing to do


def test_the_sweep_fails_a_row_past_its_hard_time_limit_even_while_it_beats(data_import):
    now = timezone.now()
    work_claim(DataImport, pk=data_import.pk)
    overran = DataImport.time_limit_seconds + OVERRUN_GRACE_SECONDS + 1
    DataImport.objects.update(started_at=now - timedelta(seconds=overran), heartbeat_at=now)

    assert work_sweep(now=now) == {"feedback.DataImport": 1}
    data_import.refresh_from_db()
    assert data_import.error == f"time limit of {DataImport.time_limit_seconds} s exceeded"


def test_a_restarted_worker_fails_only_what_its_previous_process_left_running(
    snapshot, data_import
):
    started = timezone.now()
    for model, pk in ((DatasetSnapshot, snapshot.pk), (DataImport, data_import.pk)):
        work_claim(model, pk=pk, worker_host="cpu0@box")
    DatasetSnapshot.objects.update(started_at=started - timedelta(minutes=1))
    DataImport.objects.update(worker_host="cpu1@box", started_at=started - timedelta(minutes=1))

    failed = work_fail_orphaned(worker_host="cpu0@box", started_before=started)

    assert failed == {"feedback.DatasetSnapshot": 1}
    snapshot.refresh_from_db()
    assert snapshot.error.startswith("worker cpu0@box restarted during the run")
    assert DataImport.objects.get().status == Status.RUNNING
