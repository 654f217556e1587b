"""The loop proves itself, at CI size: every link of `manage.py demo_loop` holds.

The numbers (task scores) mean nothing at this size; `make demo` is where they should rise.
"""

from __future__ import annotations

import pytest

from evals.models import EvalResult, EvalRun, RunStatus
from feedback import services as feedback_services
from feedback.models import (
    Completion,
    CompletionSource,
    DatasetSnapshot,
    Demonstration,
    Item,
    Origin,
    PairwiseJudgement,
    Project,
    RankingJudgement,
    Split,
    TaskKind,
)
from jobs.models import Status
from loop.demo import PROJECT_NAME, SCALES, run_demo_loop, snapshot_policy
from modeling.ml import load_causal_lm, load_reward_model
from modeling.models import Checkpoint, CheckpointKind, JobStatus, TrainingJob

# transaction=True: a job's success schedules its evaluations on commit, as in production.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def demo_report(settings, tmp_path, tiny_model_dir):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VEREDICTO_MODELS_DIR = ""
    lines: list[str] = []
    report = run_demo_loop(scale="ci", out=lines.append, base_model_path=tiny_model_dir)
    report.lines = lines
    return report


def test_demo_loop_links_every_step_of_the_round(demo_report):
    report = demo_report
    project = Project.objects.get(name=PROJECT_NAME)
    assert report.project_id == project.pk
    assert set(project.task_kinds) == {TaskKind.PAIRWISE, TaskKind.RANKING, TaskKind.DEMONSTRATION}

    # Prompts: the toy questions, a fifth held out.
    scale = SCALES["ci"]
    assert project.prompts.count() == scale.prompts
    assert project.prompts.filter(split=Split.TEST).count() == report.prompts["test"] > 0

    # Items: a demonstration for every prompt (held-out ones too: their labels measure the
    # models), then for every prompt one comparison of its demonstration with the distinct
    # replies sampled from the base and the SFT policy (a ranking, or a pair when only two).
    prompts = project.prompts.count()
    assert report.items_created[TaskKind.DEMONSTRATION] == prompts
    comparisons = report.items_created[TaskKind.RANKING] + report.items_created[TaskKind.PAIRWISE]
    assert 0 < comparisons <= prompts
    round_one = Item.objects.filter(project=project).count() - report.next_round["items"]
    assert round_one == sum(report.items_created.values())
    for item in Item.objects.filter(project=project, kind=TaskKind.RANKING):
        texts = [c.text.strip() for c in item.completions.all()]
        assert 3 <= len(texts) == len(set(texts)) <= 8
    sampled_by = set(
        Completion.objects.filter(prompt__project=project, source=CompletionSource.CHECKPOINT)
        .exclude(generation_params__has_key="batch")
        .values_list("generation_params__checkpoint_id", flat=True)
    )
    assert sampled_by == {report.checkpoints["base"], report.checkpoints["sft"]}

    # Judgements: every round-one item judged (or, all its replies alike, skipped) by simulated
    # annotators, and recorded as such.
    demonstrations = Demonstration.objects.filter(item__project=project)
    pairwise = PairwiseJudgement.objects.filter(item__project=project)
    rankings = RankingJudgement.objects.filter(item__project=project)
    assert report.judgements[TaskKind.DEMONSTRATION] == demonstrations.count() == prompts
    assert report.judgements[TaskKind.PAIRWISE] == pairwise.count()
    assert report.judgements[TaskKind.RANKING] == rankings.count()
    # overlap 1: an item is judged once, or skipped by each annotator it was offered to.
    unjudged = comparisons - pairwise.count() - rankings.count()
    assert 0 <= unjudged <= report.judgements["skipped"]
    judged = [*demonstrations, *pairwise, *rankings]
    assert {j.origin for j in judged} == {Origin.SIMULATED}

    # Snapshots: ready, with training rows, and the same policy gives the same hash again.
    for kind, recorded in report.snapshots.items():
        snapshot = DatasetSnapshot.objects.get(pk=recorded["id"])
        assert snapshot.status == Status.SUCCEEDED
        assert snapshot.row_counts["train"] > 0
        again = feedback_services.snapshot_create(
            project=project, kind=kind, name=f"again {kind}", policy=snapshot_policy()
        )
        assert again.content_hash == snapshot.content_hash == recorded["hash"]

    # Jobs: each succeeded and produced a checkpoint that loads, with the right lineage.
    assert set(report.jobs) == {"sft", "reward", "dpo", "ppo"}
    base = Checkpoint.objects.get(pk=report.base_checkpoint_id)
    parents = {
        "sft": base,
        "reward": Checkpoint.objects.get(pk=report.jobs["sft"]["checkpoint_id"]),
        "dpo": Checkpoint.objects.get(pk=report.jobs["sft"]["checkpoint_id"]),
        "ppo": Checkpoint.objects.get(pk=report.jobs["dpo"]["checkpoint_id"]),
    }
    for kind, recorded in report.jobs.items():
        job = TrainingJob.objects.get(pk=recorded["id"])
        assert job.status == JobStatus.SUCCEEDED, job.error
        checkpoint = job.result
        assert checkpoint.pk == recorded["checkpoint_id"] == report.checkpoints[kind]
        assert checkpoint.parent == parents[kind]
        load = load_reward_model if checkpoint.kind == CheckpointKind.REWARD else load_causal_lm
        assert load(checkpoint.load_path()) is not None
    ppo_job = TrainingJob.objects.get(pk=report.jobs["ppo"]["id"])
    assert ppo_job.reward_model_id == report.checkpoints["reward"]

    # Evaluations: every trained checkpoint's default suites ran here and stored results.
    for kind in report.jobs:
        runs = EvalRun.objects.filter(checkpoint_id=report.checkpoints[kind])
        assert runs.exists()
        assert {run.status for run in runs} == {RunStatus.SUCCEEDED}, [r.error for r in runs]
        assert EvalResult.objects.filter(run__in=runs).exists()
        assert len(report.evals[kind]) == runs.count()

    # Task scores for every policy, on the held-out prompts.
    assert set(report.task_scores) == {"base", "sft", "dpo", "ppo"}
    assert report.task_n == report.prompts["test"]
    assert all(0 <= score <= 1 for score in report.task_scores.values())
    for role, by_kind in report.task_kinds.items():  # "right/asked" per kind adds up
        asked = sum(int(count.split("/")[1]) for count in by_kind.values())
        right = sum(int(count.split("/")[0]) for count in by_kind.values())
        assert asked == report.task_n and right == round(report.task_scores[role] * asked)

    # Next round: the newest checkpoint's replies against its parent's, as open pairwise items.
    newest = Checkpoint.objects.get(pk=report.next_round["checkpoint_id"])
    assert newest.pk == report.checkpoints["ppo"]
    assert report.next_round["reference_id"] == report.checkpoints["sft"]
    assert report.next_round["items"] > 0
    next_items = Item.objects.filter(
        project=project,
        kind=TaskKind.PAIRWISE,
        completions__generation_params__checkpoint_id=newest.pk,
        submitted_count=0,
    )
    assert next_items.count() == report.next_round["items"]

    # The summary names every stage.
    stages = {"base model", "prompts", "demonstrations", "sft", "samples", "comparisons"}
    stages |= {"snapshots", "reward", "dpo", "ppo", "evaluation", "next round"}
    assert set(report.stage_seconds) == stages
    assert set(report.stage_cpu_seconds) == set(report.stage_seconds)
    assert "task score" in report.lines[-1] and "cpu s" in report.lines[-1]
    print(report.lines[-1])
