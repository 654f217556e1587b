"""Fixtures for the training tests: the real tiny model, real snapshots built from real judgements,
and a real Celery worker on the `gpu` queue of the test Redis.

Heartbeat, stale window and progress throttle are shrunk so that the dead-worker and cancel tests
take seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery.contrib.testing.worker import start_worker

from config.celery import CeleryQueue, app
from feedback import services as feedback_services
from feedback.models import TaskKind
from modeling import services
from modeling.models import CheckpointKind
from tests.factories import ProjectFactory, UserFactory
from tests.modeling.helpers import HEARTBEAT_SECONDS, STALE_SECONDS, purge_gpu_queue

# Short, distinct questions with right and wrong answers: enough rows for a few steps of every
# trainer, and the test split (10% by prompt hash) may take one or two.
QUESTIONS = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a, b in
             [(1, 1), (2, 3), (4, 4), (5, 2), (3, 6), (7, 1), (2, 2), (6, 3)]]  # fmt: skip


@pytest.fixture(autouse=True)
def fast_jobs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VEREDICTO_MODELS_DIR = ""
    settings.VEREDICTO_JOB_HEARTBEAT_SECONDS = HEARTBEAT_SECONDS
    settings.VEREDICTO_JOB_STALE_SECONDS = STALE_SECONDS
    settings.VEREDICTO_JOB_PROGRESS_SECONDS = 0.2


@pytest.fixture
def base_checkpoint(db, tiny_model_dir):
    return services.checkpoint_register(name="tiny", storage_path=tiny_model_dir)


@pytest.fixture
def reward_checkpoint(db, tiny_model_dir):
    """The tiny LM registered as a reward model: a real sequence-classification model whose score
    head starts untrained, which is all an online trainer needs to run."""
    return services.checkpoint_register(
        name="tiny-rm", storage_path=tiny_model_dir, kind=CheckpointKind.REWARD
    )


@pytest.fixture
def labelled_project(roles):
    """A project whose prompts each have an accepted demonstration and a pairwise judgement
    (the right answer preferred), all made through the real annotation services."""
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION, TaskKind.PAIRWISE])
    writer = UserFactory(username="writer", roles=["annotator"])
    for question, answer in QUESTIONS:
        prompt = feedback_services.prompt_create(project=project, messages=question)
        feedback_services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
        pair = [
            feedback_services.completion_create(prompt=prompt, text=text, model_name=name)
            for name, text in (("good", answer), ("bad", "I do not know."))
        ]
        feedback_services.item_create(
            project=project, kind=TaskKind.PAIRWISE, prompt=prompt, completions=pair
        )
    for kind in (TaskKind.DEMONSTRATION, TaskKind.PAIRWISE):
        while a := feedback_services.task_next_for_annotator(
            project=project, annotator=writer, kind=kind
        ):
            if kind == TaskKind.DEMONSTRATION:
                answer = dict(QUESTIONS)[a.item.prompt.messages[-1]["content"]]
                feedback_services.demonstration_submit(
                    assignment_id=a.pk, annotator=writer, text=answer
                )
            else:
                feedback_services.pairwise_submit(
                    assignment_id=a.pk, annotator=writer, choice="a", strength="clear"
                )
    return project


@pytest.fixture
def make_snapshot(labelled_project, admin_user) -> Callable:
    def make(kind: str):
        return feedback_services.snapshot_create(
            project=labelled_project, kind=kind, name=f"{kind} round 1", created_by=admin_user
        )

    return make


@pytest.fixture
def empty_gpu_queue():
    purge_gpu_queue()
    yield
    purge_gpu_queue()


@pytest.fixture
def gpu_worker(transactional_db, empty_gpu_queue):
    """A real worker consuming the `gpu` queue through Redis, in a thread of this process."""
    with start_worker(
        app,
        pool="solo",
        queues=[CeleryQueue.GPU.value],
        perform_ping_check=False,
        shutdown_timeout=60,
    ) as worker:
        yield worker
