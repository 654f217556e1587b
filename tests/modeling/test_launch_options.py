"""Launch-time refusals of issue #14's options (QLoRA on a deployment without bitsandbytes) and
their storage on the job row, against the real database and queue."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from modeling import services
from modeling.models import TrainingJob
from tests.modeling.helpers import queued_messages

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_gpu_queue")]

QLORA = {"max_steps": 2, "lora": True, "quantization": "4bit"}


def test_qlora_is_refused_at_launch_where_the_workers_have_no_bitsandbytes(
    admin_user, base_checkpoint, make_snapshot, settings, django_capture_on_commit_callbacks
):
    settings.VEREDICTO_GPU_BITSANDBYTES = False
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(ValidationError) as exc:
        services.job_launch(
            kind="sft",
            parent=base_checkpoint,
            snapshot=make_snapshot("sft"),
            config=QLORA,
            launched_by=admin_user,
        )
    message = exc.value.message_dict["quantization"][0]
    assert "needs GPU workers with CUDA and bitsandbytes" in message
    assert 'pip install ".[gpu]"' in message and "VEREDICTO_GPU_BITSANDBYTES=true" in message
    assert callbacks == []
    assert not TrainingJob.objects.exists()
    assert queued_messages() == 0


def test_qlora_is_queued_where_the_deployment_declares_bitsandbytes(
    admin_user, base_checkpoint, make_snapshot, settings
):
    settings.VEREDICTO_GPU_BITSANDBYTES = True
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={**QLORA, "warmup_ratio": 0.1, "lr_scheduler_type": "cosine", "packing": True},
        launched_by=admin_user,
        enqueue=False,
    )
    assert job.config["quantization"] == "4bit"
    assert (job.config["warmup_ratio"], job.config["lr_scheduler_type"]) == (0.1, "cosine")
    assert job.config["packing"] is True


def test_the_launch_form_shows_the_qlora_refusal(admin_client, base_checkpoint, make_snapshot):
    snapshot = make_snapshot("sft")
    data = {"parent": base_checkpoint.pk, "snapshot": snapshot.pk, "time_limit_minutes": 60}
    data.update({"cfg_lora": "on", "cfg_quantization": "4bit", "cfg_max_steps": 2})
    response = admin_client.post("/train/jobs/new/sft/", data)
    assert response.status_code == 422
    assert "needs GPU workers with CUDA and bitsandbytes" in response.content.decode()
    assert not TrainingJob.objects.exists()
