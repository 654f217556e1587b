"""The one checkpoint page: lineage, files, training metrics, the evaluations and generations
sections that evals and loop contribute, the old evaluations address sending there; and the
playground's rules: who may use it, what input it refuses (keeping what was typed), which
conversation a message may continue. Replies on a real worker: test_playground_worker.py."""

from __future__ import annotations

import json
import re

import pytest
from django.utils import timezone

from evals.models import EvalResult, EvalRun, RunStatus, Suite
from jobs.models import Status
from jobs.services import work_claim
from loop.models import ComparisonBatch
from modeling import services
from modeling.models import Checkpoint, JobStatus, PlaygroundTurn, TrainingJob
from modeling.sampling import SamplingParams
from tests.factories import ProjectFactory
from tests.modeling.helpers import queued_tasks

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
SETTINGS = {"temperature": "0.7", "top_p": "0.9", "max_new_tokens": "16", "seed": "3"}


@pytest.fixture
def trained(admin_user, base_checkpoint, make_snapshot, tiny_model_dir):
    """base → tiny-sft-1, made by a finished SFT job with a metric history, evaluated twice
    (each with a result) and with a comparison batch sampled from it."""
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={"max_steps": 10},
        launched_by=admin_user,
        enqueue=False,
    )
    history = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.1}, {"step": 3, "loss": 1.75}]
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED, step=3, total_steps=3, metric_history=history
    )
    checkpoint = Checkpoint.objects.create(
        name="tiny-sft-1",
        kind="policy",
        storage_path=tiny_model_dir,
        base_model=base_checkpoint,
        parent=base_checkpoint,
        job=job,
        snapshot=job.snapshot,
        metrics={"train_loss": 1.75},
        size_bytes=2_000_000,
    )
    now = timezone.now()
    for model, accuracy in ((base_checkpoint, 0.25), (checkpoint, 0.625)):
        run = EvalRun.objects.create(
            checkpoint=model,
            suite=Suite.MULTIPLE_CHOICE,
            task="facts_mc",
            status=RunStatus.SUCCEEDED,
            started_at=now,
            finished_at=now,
        )
        EvalResult.objects.create(
            run=run, metric="acc", value=accuracy, ci_low=accuracy - 0.1, ci_high=accuracy + 0.1
        )
    ComparisonBatch.objects.create(
        checkpoint=checkpoint,
        reference=base_checkpoint,
        project=ProjectFactory(name="Next round maths"),
        n_prompts=7,
        batch="b1",
        status=Status.SUCCEEDED,
        outcome={"items": 5},
    )
    return checkpoint


def url(checkpoint: Checkpoint, tail: str = "") -> str:
    return f"/train/checkpoints/{checkpoint.pk}/{tail}"


def playground_post(client, checkpoint, *, htmx: bool = True, **fields):
    data = {**SETTINGS, "prompt": "What is 2 plus 2?", **fields}
    return client.post(url(checkpoint, "playground/"), data, **(HX if htmx else {}))


# --- the page ----------------------------------------------------------------------------------


def test_the_page_shows_lineage_files_training_evaluations_and_generations(
    admin_client, trained, base_checkpoint
):
    page = admin_client.get(url(trained)).content.decode()

    lineage = page[page.index('<ol class="lineage">') : page.index("</ol>")]
    assert lineage.index(">tiny</a>") < lineage.index(">tiny-sft-1</a>")  # base first
    job = trained.job
    assert f'<a href="/train/jobs/{job.pk}/">SFT job #{job.pk}</a>' in lineage
    assert f'href="/snapshots/{job.snapshot_id}/"' in lineage
    # files with sizes, read from the directory
    assert "model.safetensors" in page and "config.json" in page
    assert re.search(r"<td>[\d.]+\xa0(KB|MB)</td>", page)
    # training: the final metrics and the job's history for the chart
    assert "train_loss" in page and "1.75" in page
    history = re.search(r'<script id="job-metrics" type="application/json">(.*?)</script>', page)
    assert [point["loss"] for point in json.loads(history[1])] == [2.5, 2.1, 1.75]
    # evaluations (the evals app's section): the latest result and a chart along the lineage
    evaluations = page[page.index('<section id="evaluations"') :]
    assert "facts_mc" in evaluations and "0.625" in evaluations
    series = re.search(r'<script id="lineage-series" type="application/json">(.*?)</script>', page)
    series = json.loads(series[1])
    assert series["labels"] == ["tiny", "tiny-sft-1"]
    assert series["datasets"][0]["data"] == [0.25, 0.625]
    assert "Run an evaluation" in evaluations
    # generations (the loop app's section)
    generations = page[page.index('<section id="generations"') :]
    assert "Next round maths" in generations and 'href="/loop/batches/' in generations
    assert f'href="/loop/checkpoints/{trained.pk}/next-round/"' in generations
    # and the playground
    assert 'id="playground-form"' in page and "hx-post" in page


def test_the_metric_shown_along_the_lineage_is_chosen_in_the_url(admin_client, trained):
    EvalResult.objects.create(run=trained.eval_runs.get(), metric="acc_norm", value=0.5)
    page = admin_client.get(url(trained) + "?metric=multiple_choice/facts_mc/acc_norm")
    series = re.search(
        r'<script id="lineage-series" type="application/json">(.*?)</script>',
        page.content.decode(),
    )
    series = json.loads(series[1])
    # only the models that have the metric: the base was never scored on acc_norm
    assert (series["labels"], series["datasets"][0]["data"]) == (["tiny-sft-1"], [0.5])


def test_every_link_to_a_checkpoint_leads_to_the_one_page(admin_client, trained):
    old = admin_client.get(f"/evals/dashboard/checkpoints/{trained.pk}/")
    assert old.status_code == 301
    assert old["Location"] == f"/train/checkpoints/{trained.pk}/#evaluations"
    run = trained.eval_runs.get()
    for page in ("/evals/dashboard/", f"/evals/runs/{run.pk}/", "/train/jobs/"):
        content = admin_client.get(page).content.decode()
        assert f'href="/train/checkpoints/{trained.pk}/"' in content, page
        assert "/evals/dashboard/checkpoints/" not in content, page


def test_reviewers_see_the_page_without_admin_links(client, reviewer, trained):
    client.force_login(reviewer)
    response = client.get(url(trained))
    assert response.status_code == 200
    page = response.content.decode()
    assert "tiny-sft-1" in page and "facts_mc" in page and "Next round maths" in page
    assert "/train/jobs/" not in page  # job pages are admins' only
    assert "Train from here" not in page and "Run an evaluation" not in page
    assert "next-round" not in page and 'href="/loop/batches/' not in page
    assert 'id="playground-form"' in page


@pytest.mark.parametrize("who", ["annotator", "nobody"])
def test_other_roles_get_403(client, request, who, trained):
    client.force_login(request.getfixturevalue(who))
    assert client.get(url(trained)).status_code == 403
    assert playground_post(client, trained).status_code == 403
    assert not PlaygroundTurn.objects.exists()


def test_a_reward_model_has_no_playground(admin_client, reward_checkpoint):
    page = admin_client.get(url(reward_checkpoint)).content.decode()
    assert 'id="playground"' not in page
    response = playground_post(admin_client, reward_checkpoint)
    assert response.status_code == 422
    assert "tiny-rm is a reward model; it cannot reply." in response.content.decode()


# --- the playground: asking --------------------------------------------------------------------


def test_a_message_queues_one_turn_for_a_gpu_worker(
    client, reviewer, trained, django_capture_on_commit_callbacks, empty_gpu_queue
):
    client.force_login(reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        response = playground_post(client, trained, system="Answer briefly.")
    assert response.status_code == 200
    turn = PlaygroundTurn.objects.get()
    assert (turn.checkpoint, turn.requested_by, turn.status) == (trained, reviewer, Status.QUEUED)
    assert turn.system == "Answer briefly."
    assert turn.messages == [{"role": "user", "content": "What is 2 plus 2?"}]
    assert turn.sampling == {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "seed": 3}
    assert queued_tasks() == ["modeling.tasks.playground_reply"]
    page = response.content.decode()
    # the partial: the conversation, the reply polling, and the form kept for the next message
    assert page.lstrip().startswith('<div id="playground"')
    assert f'hx-get="/train/checkpoints/{trained.pk}/playground/{turn.pk}/"' in page
    assert 'hx-trigger="every 1s"' in page
    assert f'name="previous" value="{turn.pk}"' in page
    assert 'value="0.7"' in page and "Answer briefly." in page


def test_without_javascript_the_form_redirects_to_the_page_with_the_turn(admin_client, trained):
    response = playground_post(admin_client, trained, htmx=False)
    turn = PlaygroundTurn.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/train/checkpoints/{trained.pk}/?turn={turn.pk}#playground"
    page = admin_client.get(response["Location"]).content.decode()
    assert "What is 2 plus 2?" in page and "waiting for a GPU worker" in page


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"prompt": ""}, "Type a message for the model."),
        ({"prompt": "   \n "}, "Type a message for the model."),
        ({"temperature": "7"}, "Ensure this value is less than or equal to 5.0."),
        ({"temperature": "-1"}, "Ensure this value is greater than or equal to 0."),
        ({"top_p": "0"}, "Ensure this value is greater than or equal to 0.01."),
        ({"max_new_tokens": "100000"}, "At most 1024 new tokens."),
        ({"max_new_tokens": "0"}, "At least 1 new token."),
        ({"seed": "-5"}, "Ensure this value is greater than or equal to 0."),
        ({"prompt": "x" * 20_001}, "Is 20,001 characters long; the limit is 20,000."),
        ({"previous": "999999"}, "That conversation is gone: start a new one."),
    ],
)
def test_bad_input_gets_a_form_error_and_keeps_what_was_typed(admin_client, trained, fields, error):
    typed = {"system": "You are <b>terse</b>.", "seed": "3", **fields}
    response = playground_post(admin_client, trained, **typed)

    assert response.status_code == 422
    page = response.content.decode()
    assert error in page
    assert "You are &lt;b&gt;terse&lt;/b&gt;." in page  # kept, escaped
    if fields.get("prompt", "").strip() and len(fields["prompt"]) < 100:
        assert fields["prompt"] in page
    elif "prompt" not in fields:
        assert "What is 2 plus 2?" in page
    assert not PlaygroundTurn.objects.exists()


def test_without_javascript_an_error_renders_the_whole_page(admin_client, trained):
    response = playground_post(admin_client, trained, htmx=False, temperature="9")
    assert response.status_code == 422
    page = response.content.decode()
    assert "<html" in page and 'id="lineage"' in page and "What is 2 plus 2?" in page


def test_the_service_refuses_settings_the_form_would(admin_user, trained):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        services.playground_turn_request(
            checkpoint=trained,
            prompt="\x00",
            sampling=SamplingParams(max_new_tokens=2000, temperature=6, top_p=0, seed=-1),
            requested_by=admin_user,
        )
    assert set(refused.value.message_dict) == {
        "prompt",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
    }


# --- the playground: conversations -------------------------------------------------------------


def finished(turn: PlaygroundTurn, reply: str = "Four.", status: str = Status.SUCCEEDED):
    error = "boom" if status == Status.FAILED else ""
    PlaygroundTurn.objects.filter(pk=turn.pk).update(status=status, reply=reply, error=error)
    turn.refresh_from_db()
    return turn


def test_a_conversation_goes_on_after_the_reply(admin_client, admin_user, trained):
    playground_post(admin_client, trained, system="Be brief.")
    first = finished(PlaygroundTurn.objects.get())

    response = playground_post(
        admin_client, trained, prompt="And 3 plus 3?", system="Be brief.", previous=first.pk
    )
    assert response.status_code == 200
    second = PlaygroundTurn.objects.latest("id")
    assert second.previous == first and second.system == "Be brief."
    assert second.messages == [
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And 3 plus 3?"},
    ]
    # The page shows the latest conversation, the whole of it.
    page = admin_client.get(url(trained)).content.decode()
    conversation = page[page.index('class="conversation"') :]
    assert conversation.index("What is 2 plus 2?") < conversation.index("Four.")
    assert conversation.index("Four.") < conversation.index("And 3 plus 3?")


def test_the_next_message_waits_for_the_reply(admin_client, trained):
    playground_post(admin_client, trained)
    first = PlaygroundTurn.objects.get()
    response = playground_post(admin_client, trained, prompt="Hello?", previous=first.pk)
    assert response.status_code == 422
    assert "Wait for the reply before you send the next message." in response.content.decode()
    assert "Hello?" in response.content.decode()
    assert PlaygroundTurn.objects.count() == 1


def test_after_a_failure_the_same_question_can_be_asked_again(admin_client, trained):
    playground_post(admin_client, trained)
    failed = finished(PlaygroundTurn.objects.get(), reply="", status=Status.FAILED)
    page = admin_client.get(url(trained)).content.decode()
    assert "boom" in page
    # the form offers the failed message again
    form = page[page.index('id="playground-form"') :]
    assert "What is 2 plus 2?</textarea>" in form

    playground_post(admin_client, trained, max_new_tokens="8", previous=failed.pk)
    again = PlaygroundTurn.objects.latest("id")
    assert again.messages == [{"role": "user", "content": "What is 2 plus 2?"}]


def test_start_over_sends_the_message_as_a_new_conversation(admin_client, trained):
    playground_post(admin_client, trained)
    first = finished(PlaygroundTurn.objects.get())
    playground_post(admin_client, trained, prompt="Hi", previous=first.pk, new="1")
    assert PlaygroundTurn.objects.latest("id").messages == [{"role": "user", "content": "Hi"}]


def test_nobody_reads_or_continues_anothers_conversation(client, admin_client, reviewer, trained):
    playground_post(admin_client, trained, prompt="My secret question")
    theirs = finished(PlaygroundTurn.objects.get(), reply="My secret answer")

    client.force_login(reviewer)
    assert "My secret" not in client.get(url(trained)).content.decode()
    assert "My secret" not in client.get(url(trained) + f"?turn={theirs.pk}").content.decode()
    poll = client.get(url(trained, f"playground/{theirs.pk}/"), **HX)
    assert poll.status_code == 404
    response = playground_post(client, trained, previous=theirs.pk)
    assert response.status_code == 422
    assert "That conversation is not one of yours on this checkpoint." in response.content.decode()
    assert "My secret" not in response.content.decode()
    assert PlaygroundTurn.objects.count() == 1


def test_the_poll_stops_once_the_reply_is_there_and_escapes_it(admin_client, trained):
    playground_post(admin_client, trained)
    turn = PlaygroundTurn.objects.get()
    poll_url = url(trained, f"playground/{turn.pk}/")
    assert 'hx-trigger="every 1s"' in admin_client.get(poll_url, **HX).content.decode()

    finished(turn, reply="<script>alert(1)</script> Four.")
    page = admin_client.get(poll_url, **HX).content.decode()
    assert "hx-trigger" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Four." in page and "<script>" not in page
    # without htmx, the poll address is the page itself
    assert admin_client.get(poll_url)["Location"].endswith(f"?turn={turn.pk}#playground")


def test_a_reply_longer_than_the_model_reads_fails_with_the_reason(admin_client, trained):
    # The tiny model reads 512 tokens; 1,000 new ones cannot fit whatever the prompt. Sampled
    # in this process, as the launched one would (test_playground_worker.py goes through it).
    playground_post(admin_client, trained, max_new_tokens="1000")
    turn = PlaygroundTurn.objects.get()
    assert work_claim(PlaygroundTurn, pk=turn.pk, worker_host="here")
    turn = services.playground_turn_execute(turn)

    assert turn.status == Status.FAILED
    assert turn.error.startswith("The conversation is ")  # the reason, not an exception's name
    assert "this model reads at most 512 tokens in all" in turn.error
    page = admin_client.get(url(trained)).content.decode()
    assert "ask for fewer new tokens or start a new conversation" in page
