"""The playground end to end on a real Celery worker of the `gpu` queue: the page asks, the
worker launches the reply in its own process with the tiny model, the htmx poll brings it; the
same seed gives the same reply, and a conversation goes on from it.

These tests commit (transaction=True) because the worker reads the rows from its own
connection."""

from __future__ import annotations

import re

import pytest

from jobs.models import Status
from modeling.models import PlaygroundTurn
from modeling.tasks import playground_reply
from tests.modeling.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HX = {"HTTP_HX_REQUEST": "true"}
# Sampled, not greedy: a seed must matter for "same seed, same reply" to mean anything.
SETTINGS = {"temperature": "1.0", "top_p": "1.0", "max_new_tokens": "12"}


def ask(client, checkpoint, *, seed: int, previous: PlaygroundTurn | None = None, **fields):
    data = {**SETTINGS, "prompt": "What is 2 plus 3?", "seed": str(seed), **fields}
    if previous is not None:
        data["previous"] = str(previous.pk)
    response = client.post(f"/train/checkpoints/{checkpoint.pk}/playground/", data, **HX)
    assert response.status_code == 200, response.content.decode()
    return PlaygroundTurn.objects.latest("id")


def reply_shown(client, turn: PlaygroundTurn) -> str:
    """Poll as the page does until the reply is there; the reply's text as the page shows it."""
    poll = f"/train/checkpoints/{turn.checkpoint_id}/playground/{turn.pk}/"

    def finished() -> str | None:
        page = client.get(poll, **HX).content.decode()
        return None if "hx-trigger" in page else page

    page = wait_for(finished, timeout=240, what=f"the reply to turn {turn.pk}")
    turn.refresh_from_db()
    assert turn.status == Status.SUCCEEDED, turn.error
    return page


def test_replies_come_from_the_worker_and_a_seed_repeats_them(
    gpu_worker, admin_client, base_checkpoint
):
    first = ask(admin_client, base_checkpoint, seed=1, system="Answer with a number.")
    again = ask(admin_client, base_checkpoint, seed=1, system="Answer with a number.")
    other = ask(admin_client, base_checkpoint, seed=2, system="Answer with a number.")

    page = reply_shown(admin_client, first)
    for turn in (again, other):
        reply_shown(admin_client, turn)
    first.refresh_from_db()
    assert first.worker_host == gpu_worker.hostname and first.backend == "local"
    assert first.reply.strip(), "the tiny model gave an empty reply: pick another seed"
    text = re.search(r'<div class="text">(.*?)</div>', page, re.S)[1]
    assert text.strip()
    assert again.reply == first.reply  # same seed, same settings: same reply
    assert other.reply != first.reply  # another seed samples another reply

    # The conversation goes on from the reply, and the model reads all of it.
    follow = ask(
        admin_client,
        base_checkpoint,
        seed=1,
        previous=first,
        prompt="And 3 plus 3?",
        system="Answer with a number.",  # the form keeps it
    )
    reply_shown(admin_client, follow)
    assert [m["role"] for m in follow.messages] == ["user", "assistant", "user"]
    assert follow.messages[1]["content"] == first.reply
    assert follow.system == "Answer with a number."

    # A message delivered twice is answered once.
    assert playground_reply.delay(first.pk).get(timeout=60) == Status.SUCCEEDED
    assert PlaygroundTurn.objects.count() == 4
