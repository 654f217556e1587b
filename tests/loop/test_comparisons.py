"""Next-round comparisons: a batch row, generated once by a real worker, shown to admins."""

from __future__ import annotations

import pytest

from evals.models import EvalRun
from feedback.models import Completion, CompletionSource, Item, Prompt, Split, TaskKind
from jobs.models import Status
from loop.comparisons import SamplingParams, comparisons_request
from loop.models import ComparisonBatch
from loop.tasks import generate_comparisons
from modeling import services
from tests.factories import ProjectFactory
from tests.modeling.helpers import purge_gpu_queue, queued_messages, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FEW_STEPS = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}
FORM = {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "seed": 0}


@pytest.fixture
def trained(admin_user, base_checkpoint, make_snapshot):
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config=FEW_STEPS,
        launched_by=admin_user,
        enqueue=False,
    )
    checkpoint = services.run_training_job(job=job).result
    # Its automatic evaluations are not this file's subject: each is a process of its own on the
    # one test worker (~30 s on a busy machine), and four of them ahead of the batch outlast
    # its wait. Forget them before any worker starts.
    EvalRun.objects.filter(checkpoint=checkpoint).delete()
    purge_gpu_queue()
    return checkpoint


def test_generated_comparisons_become_pairwise_tasks_once(
    trained, gpu_worker, admin_user, admin_client, base_checkpoint, labelled_project
):  # `trained` first: its evaluations are forgotten before the worker starts
    items_before = Item.objects.filter(kind=TaskKind.PAIRWISE).count()
    # The oldest prompt is held out: the next round is trained on, so it must not get items.
    held_out = labelled_project.prompts.order_by("id").first()
    Prompt.objects.filter(pk=held_out.pk).update(split=Split.TEST)

    batch = comparisons_request(
        checkpoint=trained,
        project=labelled_project,
        n_prompts=3,
        sampling=SamplingParams(max_new_tokens=12, temperature=1.0, seed=1),
        requested_by=admin_user,
    )
    wait_for(
        lambda: ComparisonBatch.objects.get(pk=batch.pk).is_finished, timeout=180, what="batch"
    )
    batch.refresh_from_db()
    assert batch.status == Status.SUCCEEDED, batch.error
    assert batch.worker_host and batch.started_at <= batch.finished_at
    outcome = batch.outcome
    assert outcome["items"] + outcome["skipped_empty"] + outcome["skipped_identical"] == 3
    assert outcome["items"] >= 1
    # No vLLM and no GPU here: transformers sampled (tests/modeling/test_sampling_engine.py).
    assert outcome["engine"] == "hf"
    page = admin_client.get(f"/loop/batches/{batch.pk}/").content.decode()
    assert "<dt>Sampled with</dt><dd>transformers generate</dd>" in page

    # A redelivered message finds nothing to claim: no second set of items.
    assert generate_comparisons.delay(batch.pk).get(timeout=60) == Status.SUCCEEDED
    new_items = Item.objects.filter(kind=TaskKind.PAIRWISE).order_by("id")[items_before:]
    assert len(new_items) == outcome["items"]
    for item in new_items:
        first, second = item.ordered_completions()
        assert first.source == second.source == CompletionSource.CHECKPOINT
        assert (first.model_name, second.model_name) == (trained.display_name, "tiny")
        assert first.generation_params["checkpoint_id"] == trained.pk
        assert second.generation_params["checkpoint_id"] == base_checkpoint.pk
        assert first.generation_params["batch"] == batch.batch
    completions = Completion.objects.filter(generation_params__batch=batch.batch)
    assert completions.count() == 2 * len(new_items)
    assert held_out.pk not in {item.prompt_id for item in new_items}


def test_the_next_round_page_queues_a_batch_and_shows_its_status(
    admin_client, trained, labelled_project, empty_gpu_queue
):
    ProjectFactory(name="Demos only", task_kinds=["demonstration"])
    page = admin_client.get(f"/loop/checkpoints/{trained.pk}/next-round/").content.decode()
    assert labelled_project.name in page
    assert "Demos only" not in page  # only projects that collect comparisons are offered

    data = {"project": labelled_project.pk, "n_prompts": 4, **FORM}
    response = admin_client.post(f"/loop/checkpoints/{trained.pk}/next-round/", data)
    batch = ComparisonBatch.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/loop/batches/{batch.pk}/"
    assert queued_messages() == 1
    page = admin_client.get(response["Location"]).content.decode()
    assert "Queued" in page and 'hx-trigger="every 2s"' in page
    checkpoint_page = admin_client.get(f"/train/checkpoints/{trained.pk}/").content.decode()
    assert f'href="/loop/checkpoints/{trained.pk}/next-round/"' in checkpoint_page


def test_a_base_model_needs_a_reference_and_nothing_is_queued(
    admin_client, base_checkpoint, labelled_project, empty_gpu_queue
):
    data = {"project": labelled_project.pk, "n_prompts": 4, **FORM}
    response = admin_client.post(f"/loop/checkpoints/{base_checkpoint.pk}/next-round/", data)
    assert response.status_code == 422
    assert "A base model has no parent: choose a checkpoint to compare with." in (
        response.content.decode()
    )
    assert queued_messages() == 0 and not ComparisonBatch.objects.exists()


def test_only_admins_see_the_loop_pages(client, annotator, reviewer, trained):
    for user in (annotator, reviewer):
        client.force_login(user)
        assert client.get(f"/loop/checkpoints/{trained.pk}/next-round/").status_code == 403
