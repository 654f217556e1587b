"""An evaluation run says which engine sampled its answers (transformers on this host: vLLM is
not installed and there is no GPU; tests/modeling/test_sampling_engine.py covers the choice)."""

from __future__ import annotations

import pytest

from evals.models import RunStatus, Suite
from tests.evals.test_runs import make_checkpoint, queue, run_now

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_a_generative_run_records_and_shows_its_sampling_engine(admin_client):
    policy = make_checkpoint("tiny")
    run = run_now(
        queue(policy, Suite.GENERATIVE, "toy_qa_gen", params={"limit": 2, "max_new_tokens": 2})
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.summary["engine"] == "hf"
    assert "engine: hf" in admin_client.get(f"/evals/runs/{run.pk}/").content.decode()
