"""Every reward checkpoint's default evaluation carries the diagnostics beside its accuracy, and
the dashboard shows them with their definitions and directions."""

from __future__ import annotations

import html
import json

import pytest

from evals.models import RunStatus, Suite
from evals.selectors.results import lower_is_better, metric_definition
from feedback.models import DatasetSnapshot, SnapshotKind
from jobs.models import Status
from modeling.models import CheckpointKind
from tests.evals.test_runs import PREFERENCE_ROWS, make_checkpoint, queue, run_now
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def reward(db):
    return make_checkpoint("tiny-rm", CheckpointKind.REWARD)


@pytest.fixture
def preference_snapshot(db):
    """A snapshot test split whose rows carry the export's metadata."""
    snapshot = DatasetSnapshot.objects.create(
        project=ProjectFactory(),
        name="prefs with votes",
        kind=SnapshotKind.PREFERENCE,
        status=Status.SUCCEEDED,
        directory="snapshots/prefs",
        row_counts={"train": 0, "test": len(PREFERENCE_ROWS)},
    )
    meta = [(1.0, 3, 3), (0.6667, 3, 1), (1.0, 1, 2)]
    rows = [
        {**row, "outcome": "chosen", "agreement": a, "annotator_count": n, "strength": s}
        for row, (a, n, s) in zip(PREFERENCE_ROWS, meta, strict=True)
    ]
    snapshot.path().mkdir(parents=True)
    (snapshot.path() / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return snapshot


def test_the_shipped_pairs_run_stores_calibration_length_and_best_of_n(reward):
    run = run_now(queue(reward, Suite.REWARD_ACCURACY, params={"limit": 6, "batch_size": 8}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    metrics = {r.metric: r for r in run.results.all()}
    assert {"accuracy", "brier", "ece", "length_correlation"} <= set(metrics)
    assert metrics["brier"].n == 6 and 0 <= metrics["brier"].value <= 1
    assert 0 <= metrics["ece"].value <= 1
    bon = {name: metrics[f"best_of_n/{name}"] for name in ("reward", "random", "oracle")}
    assert all(result.n == 6 for result in bon.values())  # the limit applies to the prompts
    assert bon["random"].value == pytest.approx(6 * 0.25 / 6) and bon["oracle"].value == 1
    # The shipped pairs carry no annotator metadata: no bucket is made up.
    assert not any(name.startswith("accuracy/") for name in metrics)


def test_a_snapshot_run_buckets_accuracy_by_agreement_and_strength(reward, preference_snapshot):
    run = run_now(queue(reward, Suite.REWARD_ACCURACY, snapshot=preference_snapshot))
    assert run.status == RunStatus.SUCCEEDED, run.error
    metrics = {r.metric: r.n for r in run.results.all()}
    assert metrics["accuracy/agreement=unanimous"] == 1
    assert metrics["accuracy/agreement=0.5-0.75"] == 1
    assert metrics["accuracy/agreement=single"] == 1
    assert metrics["accuracy/strength=strong"] == metrics["accuracy/strength=slight"] == 1
    assert "best_of_n/reward" not in metrics  # a snapshot has no gold answers


def test_the_dashboard_shows_the_diagnostics_beside_accuracy_with_their_meaning(
    admin_client, reward
):
    run_now(queue(reward, Suite.REWARD_ACCURACY, params={"limit": 4}))
    page = html.unescape(admin_client.get("/evals/dashboard/").content.decode())
    for metric in ("accuracy", "brier", "ece", "length_correlation", "best_of_n/reward"):
        assert f"<strong>{metric}</strong>" in page, metric
    assert "Brier score (Brier 1950)" in page and "Expected calibration error" in page
    assert lower_is_better("brier") and lower_is_better("ece")
    assert not lower_is_better("best_of_n/reward")
    assert metric_definition(Suite.REWARD_ACCURACY, "accuracy/agreement=unanimous").startswith(
        "Accuracy (chosen scored strictly above rejected) on the pairs whose annotators agreed"
    )
    assert "RewardBench" in metric_definition(Suite.REWARD_ACCURACY, "accuracy")
