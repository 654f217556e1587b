"""Active sampling: an ensemble of real tiny reward models sets the priorities the queue serves."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from evals.ml.reward import reward_scores
from feedback import services as feedback_services
from feedback.models import Item, TaskKind
from jobs.models import Status
from jobs.services import work_claim
from loop.active import Strategy, items_prioritise, pair_priority
from loop.comparisons import SamplingParams, comparison_batch_execute, comparisons_request
from loop.models import ComparisonBatch
from loop.testing import torch_threads
from modeling import services
from modeling.ml import load_reward_model, load_tokenizer
from modeling.models import CheckpointKind
from tests.factories import ProjectFactory, annotator

pytestmark = pytest.mark.django_db

PAIRS = [
    ("What is 2 plus 3?", "2 plus 3 is 5.", "I do not know."),
    ("Reverse the word cat.", "tac", "cat"),
    ("Sort these numbers: 3, 1, 2", "1, 2, 3", "3, 2, 1"),
    ("What color is snow?", "White.", "Snow is green, I think, or maybe blue."),
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def member_dirs(tiny_model_dir, tmp_path_factory):
    """Two tiny reward models whose score heads start from different seeds: an ensemble whose
    members disagree, as members trained with different seeds do."""
    dirs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = load_reward_model(tiny_model_dir)
        path = tmp_path_factory.mktemp(f"rm-seed{seed}")
        model.save_pretrained(path)
        load_tokenizer(tiny_model_dir).save_pretrained(path)
        dirs.append(str(path))
    return dirs


@pytest.fixture
def ensemble(member_dirs):
    return [
        services.checkpoint_register(
            name=f"rm-seed{n}", storage_path=path, kind=CheckpointKind.REWARD, evaluate=False
        )
        for n, path in enumerate(member_dirs, start=1)
    ]


@pytest.fixture
def pairwise_project(roles):
    project = ProjectFactory(overlap=1, task_kinds=[TaskKind.PAIRWISE, TaskKind.DEMONSTRATION])
    for question, a, b in PAIRS:
        prompt = feedback_services.prompt_create(project=project, messages=question)
        replies = [
            feedback_services.completion_create(prompt=prompt, text=text, model_name=name)
            for name, text in (("a", a), ("b", b))
        ]
        feedback_services.item_create(
            project=project, kind=TaskKind.PAIRWISE, prompt=prompt, completions=replies
        )
    return project


def margins_by_hand(member_dirs) -> list[list[float]]:
    """Each member's r(A) − r(B) for PAIRS, scored outside the service."""
    result = []
    for path in member_dirs:
        model, tokenizer = load_reward_model(path), load_tokenizer(path)
        rows = []
        for question, a, b in PAIRS:
            prompt = [{"role": "user", "content": question}]
            rows += [[*prompt, {"role": "assistant", "content": text}] for text in (a, b)]
        scores = reward_scores(model, tokenizer, rows)
        result.append([scores[i] - scores[i + 1] for i in range(0, len(scores), 2)])
    return result


def priorities(project) -> list[float]:
    return list(project.items.order_by("id").values_list("priority", flat=True))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_disagreement_is_the_spread_of_the_members_win_probabilities(
    pairwise_project, ensemble, member_dirs
):
    outcome = items_prioritise(
        project=pairwise_project, reward_models=ensemble, strategy=Strategy.DISAGREEMENT
    )
    assert (outcome.items, outcome.members) == (len(PAIRS), 2)
    by_member = margins_by_hand(member_dirs)
    expected = [
        statistics.pstdev([sigmoid(m) for m in pair]) for pair in zip(*by_member, strict=True)
    ]
    assert priorities(pairwise_project) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert len(set(expected)) == len(PAIRS) and min(expected) > 0
    assert outcome.top == pytest.approx(max(expected), rel=1e-4)


def test_uncertainty_is_how_near_the_mean_margins_probability_is_to_a_coin(
    pairwise_project, ensemble, member_dirs
):
    items_prioritise(project=pairwise_project, reward_models=ensemble, strategy="uncertainty")
    by_member = margins_by_hand(member_dirs)
    p_a = [sigmoid(statistics.fmean(pair)) for pair in zip(*by_member, strict=True)]
    expected = [0.5 - abs(p - 0.5) for p in p_a]
    assert priorities(pairwise_project) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_the_queue_then_serves_the_most_doubtful_pair_first(pairwise_project, ensemble):
    items_prioritise(project=pairwise_project, reward_models=ensemble, strategy="disagreement")
    order = list(pairwise_project.items.order_by("-priority", "id").values_list("pk", flat=True))
    served = []
    for n in range(len(PAIRS)):
        user = annotator(f"active{n}")
        assignment = feedback_services.task_next_for_annotator(
            project=pairwise_project, annotator=user
        )
        served.append(assignment.item_id)
    assert served == order


def test_only_waiting_ordinary_pairwise_items_are_rescored_and_random_resets_them(
    pairwise_project, ensemble
):
    done, gold, *waiting = pairwise_project.items.order_by("id")
    Item.objects.filter(pk=done.pk).update(submitted_count=1, priority=-7.0)
    Item.objects.filter(pk=gold.pk).update(is_gold=True, priority=-8.0)
    outcome = items_prioritise(
        project=pairwise_project, reward_models=ensemble, strategy="disagreement"
    )
    assert outcome.items == len(waiting)
    assert priorities(pairwise_project)[:2] == [-7.0, -8.0]
    assert all(p > 0 for p in priorities(pairwise_project)[2:])

    outcome = items_prioritise(project=pairwise_project, reward_models=[], strategy="random")
    assert (outcome.items, outcome.members) == (len(waiting), 0)
    assert priorities(pairwise_project) == [-7.0, -8.0] + [0.0] * len(waiting)


def test_priorities_of_extreme_margins_stay_finite():
    assert pair_priority("uncertainty", [5000.0, 4000.0]) == 0.0
    assert pair_priority("uncertainty", [-5000.0, -4000.0]) == 0.0
    assert pair_priority("uncertainty", [0.0, 0.0]) == 0.5
    assert pair_priority("disagreement", [5000.0, -5000.0]) == 0.5
    assert pair_priority("disagreement", [2.0, 2.0]) == 0.0


def test_one_reward_model_is_not_an_ensemble(pairwise_project, ensemble):
    with pytest.raises(ValidationError, match="at least two reward models"):
        items_prioritise(
            project=pairwise_project, reward_models=ensemble[:1], strategy="disagreement"
        )
    with pytest.raises(ValidationError, match="at least two reward models"):
        items_prioritise(
            project=pairwise_project, reward_models=[ensemble[0]] * 2, strategy="uncertainty"
        )
    assert set(priorities(pairwise_project)) == {0.0}


def test_a_policy_checkpoint_is_refused_as_a_member(pairwise_project, ensemble, base_checkpoint):
    with pytest.raises(ValidationError, match="Not reward models: tiny"):
        items_prioritise(
            project=pairwise_project,
            reward_models=[ensemble[0], base_checkpoint],
            strategy="disagreement",
        )


def test_a_member_that_does_not_load_is_a_clear_error(pairwise_project, ensemble, tmp_path):
    broken = services.checkpoint_register(
        name="rm-broken", storage_path=ensemble[0].storage_path, kind=CheckpointKind.REWARD
    )
    broken.storage_path = str(tmp_path / "gone")
    broken.save()
    with pytest.raises(ValidationError, match="rm-broken does not load as a reward model"):
        items_prioritise(
            project=pairwise_project, reward_models=[ensemble[0], broken], strategy="disagreement"
        )
    assert set(priorities(pairwise_project)) == {0.0}


def test_a_member_scoring_nan_is_refused_and_nothing_changes(
    pairwise_project, ensemble, tiny_model_dir, tmp_path
):
    model = load_reward_model(tiny_model_dir)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path)
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path)
    broken = services.checkpoint_register(
        name="rm-nan", storage_path=str(tmp_path), kind=CheckpointKind.REWARD, evaluate=False
    )
    with pytest.raises(ValidationError, match="rm-nan gave scores that are not numbers"):
        items_prioritise(
            project=pairwise_project, reward_models=[ensemble[0], broken], strategy="uncertainty"
        )
    assert set(priorities(pairwise_project)) == {0.0}


def test_a_project_without_waiting_pairwise_items_is_a_clear_error(roles, ensemble):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    with pytest.raises(ValidationError, match="no pairwise items waiting"):
        items_prioritise(project=project, reward_models=ensemble, strategy="disagreement")
    with pytest.raises(ValidationError, match="Strategy is one of"):
        items_prioritise(project=project, reward_models=ensemble, strategy="loudest")


def test_the_command_prioritises_and_says_what_is_wrong(pairwise_project, ensemble, capsys):
    call_command(
        "prioritise_items",
        "--project",
        str(pairwise_project.pk),
        "--strategy",
        "uncertainty",
        "--reward-models",
        "rm-seed1",
        str(ensemble[1].pk),
    )
    assert f"Prioritised {len(PAIRS)} waiting pairwise items" in capsys.readouterr().out
    assert all(0 < p <= 0.5 for p in priorities(pairwise_project))
    with pytest.raises(CommandError, match="at least two reward models"):
        call_command(
            "prioritise_items", "--project", pairwise_project.name, "--reward-models", "rm-seed1"
        )
    with pytest.raises(CommandError, match="No checkpoint 'nope'"):
        call_command(
            "prioritise_items", "--project", pairwise_project.name, "--reward-models", "nope"
        )


def test_a_batch_with_a_strategy_prioritises_the_projects_waiting_pairs(
    pairwise_project, ensemble, base_checkpoint, admin_user, admin_client
):
    from loop.testing import tiny_model_dir

    other = services.checkpoint_register(name="tiny-other", storage_path=str(tiny_model_dir()))
    batch = comparisons_request(
        checkpoint=base_checkpoint,
        reference=other,
        project=pairwise_project,
        n_prompts=2,
        sampling=SamplingParams(max_new_tokens=8, temperature=1.0, seed=1),
        strategy="disagreement",
        reward_models=ensemble,
        requested_by=admin_user,
    )
    assert work_claim(ComparisonBatch, pk=batch.pk, worker_host="test")
    batch = comparison_batch_execute(batch)
    assert batch.status == Status.SUCCEEDED, batch.error
    waiting = pairwise_project.items.filter(kind=TaskKind.PAIRWISE).count()
    assert batch.outcome["prioritised"] == waiting == len(PAIRS) + batch.outcome["items"]
    assert all(p > 0 for p in priorities(pairwise_project))
    page = admin_client.get(f"/loop/batches/{batch.pk}/").content.decode()
    assert "by rm-seed2, rm-seed1" in page  # the registry's order: newest first
    assert f"<dt>Prioritised</dt><dd>{waiting} waiting pairwise items" in page


def test_a_batch_asking_for_an_ensemble_of_one_is_refused_and_nothing_is_queued(
    pairwise_project, ensemble, base_checkpoint, admin_user
):
    with pytest.raises(ValidationError) as raised:
        comparisons_request(
            checkpoint=base_checkpoint,
            reference=base_checkpoint,
            project=pairwise_project,
            strategy="uncertainty",
            reward_models=ensemble[:1],
            requested_by=admin_user,
        )
    assert "reward_models" in raised.value.message_dict
    assert not ComparisonBatch.objects.exists()


def test_the_next_round_form_shows_the_ensemble_error_on_its_field(
    admin_client, pairwise_project, ensemble, base_checkpoint
):
    other = services.checkpoint_register(name="tiny-2", storage_path=base_checkpoint.storage_path)
    response = admin_client.post(
        f"/loop/checkpoints/{base_checkpoint.pk}/next-round/",
        {
            "project": pairwise_project.pk,
            "reference": other.pk,
            "n_prompts": 2,
            "strategy": "disagreement",
            "reward_models": [ensemble[0].pk],
            "max_new_tokens": 8,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 0,
        },
    )
    assert response.status_code == 422
    assert "at least two reward models" in response.content.decode()
    assert not ComparisonBatch.objects.exists()
    page = admin_client.get(f"/loop/checkpoints/{base_checkpoint.pk}/next-round/").content.decode()
    assert "rm-seed1" in page and "Disagreement" in page
