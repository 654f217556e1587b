"""AI help with labelling, with the real tiny models: a policy checkpoint drafts demonstrations,
a reward checkpoint pre-votes on comparisons, through runs with the shared lifecycle."""

from __future__ import annotations

import shutil

import pytest
import torch
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import CommandError, call_command

from feedback import services as feedback_services
from feedback.models import (
    AssignmentStatus,
    DemonstrationDraft,
    Item,
    Origin,
    PairwiseJudgement,
    TaskKind,
)
from feedback.services.assist import draft_store
from jobs.models import Status
from modeling import services
from modeling.ml import generate, load_reward_model, load_tokenizer
from modeling.ml.scoring import reward_scores
from modeling.models import AIAnnotator, AssistRun, CheckpointKind, ProjectDrafter
from modeling.sampling import SamplingParams
from tests.factories import ProjectFactory, make_item
from tests.modeling.helpers import queued_messages, wait_for

pytestmark = pytest.mark.django_db

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, seed=0)


@pytest.fixture(scope="session")
def scoring_rm_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny LM with a seeded, saved score head, scaled up so that its margins spread past
    the tie threshold: a reward model that scores the same on every load."""
    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir)
    with torch.no_grad():
        model.score.weight.mul_(300)
    path = tmp_path_factory.mktemp("rm") / "scoring-rm"
    model.save_pretrained(path)
    load_tokenizer(tiny_model_dir).save_pretrained(path)
    return str(path)


@pytest.fixture
def scoring_rm(db, scoring_rm_dir):
    return services.checkpoint_register(
        name="scoring-rm", storage_path=scoring_rm_dir, kind=CheckpointKind.REWARD
    )


@pytest.fixture
def demo_project(roles):
    return ProjectFactory(name="Write", task_kinds=[TaskKind.DEMONSTRATION], overlap=1)


@pytest.fixture
def pair_project(roles):
    return ProjectFactory(name="Compare", task_kinds=[TaskKind.PAIRWISE], overlap=2)


def conversation(item: Item) -> list[dict]:
    return list(item.prompt.messages)


# --- drafts ------------------------------------------------------------------------------------


def test_a_drafting_run_drafts_each_open_demonstration_once(
    demo_project, base_checkpoint, admin_user, annotator
):
    items = [make_item(demo_project, TaskKind.DEMONSTRATION) for _ in range(3)]
    done = items[2]  # already written by its one annotator: no draft needed
    a = feedback_services.task_next_for_annotator(project=demo_project, annotator=annotator)
    assert a.item_id == items[0].pk
    Item.objects.filter(pk=done.pk).update(submitted_count=1)
    services.project_drafter_set(
        project=demo_project, checkpoint=base_checkpoint, set_by=admin_user
    )

    run = services.assist_request(
        kind="drafts", project=demo_project, requested_by=admin_user, sampling=GREEDY
    )
    run = services.assist_run_run(run=run)

    assert run.status == Status.SUCCEEDED, run.error
    assert run.checkpoint == base_checkpoint
    assert run.outcome["drafted"] + run.outcome["skipped_empty"] == 2
    expected = generate(
        base_checkpoint.load_path(), [conversation(i) for i in items[:2]], **_options(GREEDY)
    )
    drafts = {d.item_id: d for d in DemonstrationDraft.objects.all()}
    assert done.pk not in drafts
    for item, (text,) in zip(items[:2], expected, strict=True):
        if text.strip():
            assert drafts[item.pk].text == text
            assert drafts[item.pk].model_name == "tiny"
            assert drafts[item.pk].model_ref == f"checkpoint:{base_checkpoint.pk}"
    assert len(drafts) == run.outcome["drafted"]

    again = services.assist_run_run(
        run=services.assist_request(
            kind="drafts", project=demo_project, requested_by=admin_user, sampling=GREEDY
        )
    )
    assert again.outcome == {"drafted": 0, "skipped_empty": run.outcome["skipped_empty"]}
    assert DemonstrationDraft.objects.count() == len(drafts)


def _options(sampling: SamplingParams) -> dict:
    return dict(
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        seed=sampling.seed,
    )


def test_a_draft_is_shown_to_the_annotator_and_the_edit_recorded(
    client, demo_project, base_checkpoint, annotator
):
    item = make_item(demo_project, TaskKind.DEMONSTRATION)
    draft_store(
        item=item, text="A draft.", model_name="tiny", model_ref=f"checkpoint:{base_checkpoint.pk}"
    )
    client.force_login(annotator)
    page = client.get(f"/projects/{demo_project.pk}/work/", follow=True).content.decode()
    assert "Draft written by <strong>tiny</strong> — edit it" in page
    assert ">A draft.</textarea>" in page


# --- AI votes ----------------------------------------------------------------------------------


def test_a_reward_model_votes_by_its_margin_as_an_ai_annotator(
    pair_project, scoring_rm, admin_user, annotator
):
    items = [make_item(pair_project, TaskKind.PAIRWISE) for _ in range(3)]
    gold = make_item(pair_project, TaskKind.PAIRWISE)
    Item.objects.filter(pk=gold.pk).update(is_gold=True, gold_answer={"choice": "a"})

    run = services.assist_request(
        kind="votes", project=pair_project, checkpoint=scoring_rm, requested_by=admin_user
    )
    run = services.assist_run_run(run=run)

    assert run.status == Status.SUCCEEDED, run.error
    assert run.outcome["voted"] == 4
    assert run.outcome["ties"] < 4  # the scaled head tells some pairs apart
    voter = AIAnnotator.objects.get(checkpoint=scoring_rm).user
    assert voter.username == f"ai-{scoring_rm.pk}-scoring-rm"
    assert not voter.is_active and not voter.has_usable_password() and not voter.groups.exists()
    model = load_reward_model(scoring_rm.load_path())
    tokenizer = load_tokenizer(scoring_rm.load_path())
    for item in [*items, gold]:
        vote = PairwiseJudgement.objects.get(item=item)
        assert vote.annotator == voter and vote.origin == Origin.AI
        assert vote.source == f"checkpoint:{scoring_rm.pk}"
        assert vote.assignment.status == AssignmentStatus.AI
        a, b = item.ordered_completions()
        score_a, score_b = reward_scores(
            model,
            tokenizer,
            [
                [*conversation(item), {"role": "assistant", "content": reply.text}]
                for reply in (a, b)
            ],
        )
        assert (vote.choice, vote.strength) == services.vote_from_margin(score_a - score_b)
        assert f"margin {score_a - score_b:+.4f}" in vote.rationale
    assert set(
        Item.objects.filter(project=pair_project).values_list("submitted_count", flat=True)
    ) == {0}
    # People still get every item.
    assignment = feedback_services.task_next_for_annotator(
        project=pair_project, annotator=annotator
    )
    assert assignment is not None

    again = services.assist_run_run(
        run=services.assist_request(
            kind="votes",
            project=pair_project,
            checkpoint=scoring_rm,
            requested_by=admin_user,
        )
    )
    assert again.outcome == {"voted": 0, "ties": 0}
    assert PairwiseJudgement.objects.count() == 4


@pytest.mark.parametrize(
    ("margin", "vote"),
    [
        (0.0, ("tie", "")),
        (-0.099, ("tie", "")),
        (0.1, ("a", "slight")),
        (-0.99, ("b", "slight")),
        (1.0, ("a", "clear")),
        (-1.99, ("b", "clear")),
        (2.0, ("a", "strong")),
        (-30.0, ("b", "strong")),
    ],
)
def test_the_margin_gives_the_choice_and_its_size_the_strength(margin, vote):
    assert services.vote_from_margin(margin) == vote


def test_a_vote_run_goes_through_a_real_gpu_worker(
    transactional_db, roles, gpu_worker, reward_checkpoint, admin_user
):
    project = ProjectFactory(name="Worker", task_kinds=[TaskKind.PAIRWISE])
    make_item(project, TaskKind.PAIRWISE)
    run = services.assist_request(
        kind="votes", project=project, checkpoint=reward_checkpoint, requested_by=admin_user
    )
    wait_for(lambda: AssistRun.objects.get(pk=run.pk).is_finished, timeout=180, what="run")
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    assert run.worker_host and run.outcome["voted"] == 1
    assert PairwiseJudgement.objects.get().origin == Origin.AI


# --- bad input ---------------------------------------------------------------------------------


def test_only_a_reward_model_may_vote_and_only_a_policy_may_draft(
    pair_project, demo_project, base_checkpoint, reward_checkpoint, admin_user
):
    with pytest.raises(ValidationError) as refused:
        services.assist_request(
            kind="votes", project=pair_project, checkpoint=base_checkpoint, requested_by=admin_user
        )
    assert refused.value.message_dict["checkpoint"] == [
        "tiny is a policy model; only a reward model can vote on comparisons."
    ]
    with pytest.raises(
        ValidationError, match=r"only a policy \(a model that writes replies\) can draft"
    ):
        services.project_drafter_set(
            project=demo_project, checkpoint=reward_checkpoint, set_by=admin_user
        )
    with pytest.raises(ValidationError, match="does not collect pairwise comparisons"):
        services.assist_request(
            kind="votes",
            project=demo_project,
            checkpoint=reward_checkpoint,
            requested_by=admin_user,
        )
    with pytest.raises(ValidationError, match="names no drafting model: choose one first"):
        services.assist_request(kind="drafts", project=demo_project, requested_by=admin_user)
    with pytest.raises(ValidationError, match="Choose the reward model that votes"):
        services.assist_request(kind="votes", project=pair_project, requested_by=admin_user)
    with pytest.raises(ValidationError, match="Between 1 and 5000 items"):
        services.assist_request(
            kind="votes",
            project=pair_project,
            checkpoint=reward_checkpoint,
            requested_by=admin_user,
            max_items=0,
        )
    assert not AssistRun.objects.exists() and not ProjectDrafter.objects.exists()


def test_only_admins_ask_for_ai_help(pair_project, reward_checkpoint, annotator):
    with pytest.raises(PermissionDenied):
        services.assist_request(
            kind="votes", project=pair_project, checkpoint=reward_checkpoint, requested_by=annotator
        )
    assert not AssistRun.objects.exists()


def test_a_checkpoint_whose_files_are_gone_fails_the_run_with_its_reason(
    pair_project, tiny_model_dir, tmp_path, admin_user
):
    copy = tmp_path / "rm-copy"
    shutil.copytree(tiny_model_dir, copy)
    gone = services.checkpoint_register(
        name="gone-rm", storage_path=str(copy), kind=CheckpointKind.REWARD
    )
    make_item(pair_project, TaskKind.PAIRWISE)
    shutil.rmtree(copy)

    run = services.assist_run_run(
        run=services.assist_request(
            kind="votes", project=pair_project, checkpoint=gone, requested_by=admin_user
        )
    )

    assert run.status == Status.FAILED
    assert str(copy) in run.error
    assert not PairwiseJudgement.objects.exists()


def test_the_command_names_a_missing_checkpoint_and_votes_with_a_real_one(
    pair_project, base_checkpoint, reward_checkpoint, capsys
):
    make_item(pair_project, TaskKind.PAIRWISE)
    with pytest.raises(CommandError, match="No checkpoint 'nope'"):
        call_command("assist", "votes", "--project", "Compare", "--checkpoint", "nope")
    with pytest.raises(CommandError, match="only a reward model can vote"):
        call_command("assist", "votes", "--project", "Compare", "--checkpoint", "tiny")
    assert not AssistRun.objects.exists()

    call_command("assist", "votes", "--project", "Compare", "--checkpoint", "tiny-rm")

    assert "AI pre-votes on comparisons #" in capsys.readouterr().out
    assert PairwiseJudgement.objects.get().origin == Origin.AI


# --- the page ----------------------------------------------------------------------------------


def test_the_ai_help_page_sets_the_drafter_and_queues_runs(
    admin_client,
    demo_project,
    base_checkpoint,
    reward_checkpoint,
    empty_gpu_queue,
    django_capture_on_commit_callbacks,
):
    url = f"/train/projects/{demo_project.pk}/assist/"
    page = admin_client.get(url).content.decode()
    assert "Choose a drafting model first." in page

    saved = admin_client.post(url + "drafter/", {"checkpoint": base_checkpoint.pk})
    assert saved.status_code == 302
    assert ProjectDrafter.objects.get(project=demo_project).checkpoint == base_checkpoint

    with django_capture_on_commit_callbacks(execute=True):  # the message goes on commit
        queued = admin_client.post(
            url + "drafts/",
            {"max_items": 10, "max_new_tokens": 8, "temperature": 0, "top_p": 1, "seed": 0},
        )
    assert queued.status_code == 302
    run = AssistRun.objects.get()
    assert (run.kind, run.checkpoint, run.max_items) == ("drafts", base_checkpoint, 10)
    assert run.sampling["max_new_tokens"] == 8
    assert queued_messages() == 1
    page = admin_client.get(url).content.decode()
    assert "Draft demonstrations" in page and "Queued" in page

    # A project without comparisons: the reward model's vote is refused, with the reason.
    refused = admin_client.post(
        url + "votes/", {"checkpoint": reward_checkpoint.pk, "max_items": 5}
    )
    assert refused.status_code == 422
    assert "does not collect pairwise comparisons" in refused.content.decode()
    # A checkpoint that does not exist (or is no reward model) is not a choice.
    missing = admin_client.post(url + "votes/", {"checkpoint": 99999, "max_items": 5})
    assert missing.status_code == 422
    assert "Select a valid choice" in missing.content.decode()
    assert AssistRun.objects.count() == 1


def test_only_admins_see_the_ai_help_page(client, annotator, reviewer, demo_project):
    for user in (annotator, reviewer):
        client.force_login(user)
        assert client.get(f"/train/projects/{demo_project.pk}/assist/").status_code == 403
