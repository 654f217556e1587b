from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from feedback import services
from feedback.models import Demonstration, Origin, PairwiseJudgement, RankingJudgement, TaskKind
from loop.simulation import SimulationConfig, simulate
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def toy_item(project, question, replies=None, kind=TaskKind.PAIRWISE):
    prompt = services.prompt_create(project=project, messages=question)
    completions = [services.completion_create(prompt=prompt, text=r) for r in replies or []]
    return services.item_create(project=project, kind=kind, prompt=prompt, completions=completions)


def test_noiseless_simulators_prefer_the_correct_answer_whatever_side_it_is_on(roles):
    project = ProjectFactory(overlap=3)
    for n in range(10):
        toy_item(project, f"What is {n} + 2?", [str(n + 2), str(n + 5)])
    done = simulate(project=project, annotators=3, config=SimulationConfig(noise=0))
    assert done == {"pairwise": 30}
    choices = set(PairwiseJudgement.objects.values_list("choice", flat=True))
    assert choices == {"a"}
    assert set(PairwiseJudgement.objects.values_list("origin", flat=True)) == {Origin.SIMULATED}
    assert {j.shown_left for j in PairwiseJudgement.objects.all()} == {"a", "b"}


def test_position_bias_shows_in_the_left_share(roles):
    project = ProjectFactory(overlap=1)
    for n in range(40):
        toy_item(project, f"What is {n} + 1?", [str(n + 1), str(n + 3)])
    simulate(project=project, annotators=1, config=SimulationConfig(noise=0, position_bias=1.0))
    judgements = PairwiseJudgement.objects.all()
    assert all(j.choice == j.shown_left for j in judgements)


def test_rankings_and_demonstrations_come_from_the_solver(roles):
    project = ProjectFactory(overlap=1)
    toy_item(project, "Sort: 3, 1, 2", ["3, 2, 1", "1, 2, 3", "2, 1, 3"], TaskKind.RANKING)
    toy_item(project, "Reverse the word tree.", kind=TaskKind.DEMONSTRATION)
    simulate(
        project=project, annotators=1, config=SimulationConfig(noise=0, demonstration_error_rate=0)
    )
    ranking = RankingJudgement.objects.get().ranking
    best = RankingJudgement.objects.get().item.completions.get(pk=ranking[0][0])
    assert best.text == "1, 2, 3"
    assert Demonstration.objects.get().text == "eert"


def test_a_ranking_ties_replies_graded_alike_and_is_skipped_when_all_are(roles):
    project = ProjectFactory(overlap=1)
    toy_item(project, "What is 2 + 3?", ["6", "5", "I am not sure.", "7"], TaskKind.RANKING)
    all_wrong = toy_item(project, "What is 4 + 4?", ["9", "7", "6"], TaskKind.RANKING)
    done = simulate(project=project, annotators=1, config=SimulationConfig(noise=0))
    assert done == {"ranking": 1, "skipped": 1}
    judgement = RankingJudgement.objects.get()
    texts = [
        sorted(judgement.item.completions.get(pk=pk).text for pk in group)
        for group in judgement.ranking
    ]
    assert texts == [["5"], ["6", "7", "I am not sure."]]
    # Nothing to tell apart: skipped, so it gives no preference row.
    assert not RankingJudgement.objects.filter(item=all_wrong).exists()
    assert all_wrong.assignments.get().status == "skipped"


def test_simulated_labels_stay_out_of_snapshots_unless_asked(roles, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    project = ProjectFactory(overlap=1)
    toy_item(project, "What is 2 + 2?", ["4", "5"])
    simulate(project=project, annotators=1, config=SimulationConfig(noise=0))
    assert services.snapshot_create(project=project, kind="preference").row_counts == {
        "train": 0,
        "test": 0,
    }
    included = services.snapshot_create(
        project=project, kind="preference", policy={"include_simulated": True, "test_fraction": 0}
    )
    assert included.row_counts["train"] == 1


def test_command_reports_and_validates(roles):
    project = ProjectFactory(name="Sim", overlap=1)
    toy_item(project, "What is 1 + 1?", ["2", "3"])
    out = StringIO()
    call_command("simulate_annotators", project="Sim", annotators=2, stdout=out)
    assert "1 pairwise" in out.getvalue()
    with pytest.raises(CommandError):
        call_command("simulate_annotators", project="Sim", noise=2)
