"""The loop proves itself, at CI size: every link of `manage.py demo_loop`'s two rounds holds.

The numbers (task scores) mean nothing at this size; `make demo` is where they should rise.
"""

from __future__ import annotations

import pytest

from evals.ml.definitions import TOY_TASK, TOY_TASK_METRICS
from evals.models import EvalResult, EvalRun, RunStatus
from evals.selectors import arena_battles, chart_metric_of
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
from loop.demo.config import TASK_SCORE
from loop.demo.steps import NO_DEMONSTRATION
from loop.toytask import kind
from modeling.ml import load_causal_lm, load_reward_model
from modeling.models import Checkpoint, CheckpointKind, JobStatus, TrainingJob

# transaction=True: a job's success schedules its evaluations on commit, as in production.
# reset_sequences: at the ci scale, whether round two's few comparisons end in a clear
# preference rests on the simulated annotators' noise, and which reply a noisy vote lands on
# follows the queue's display order, which is keyed by item and annotator ids. Ids from 1, as on
# a fresh database, make the run the same whatever ran before it (with every sequence at 5,000
# round two added no train pair).
pytestmark = pytest.mark.django_db(transaction=True, reset_sequences=True)


@pytest.fixture
def demo_report(settings, tmp_path, tiny_model_dir):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VEREDICTO_MODELS_DIR = ""
    lines: list[str] = []
    report = run_demo_loop(scale="ci", out=lines.append, base_model_path=tiny_model_dir)
    report.lines = lines
    return report


def test_demo_loop_links_every_step_of_both_rounds(demo_report):
    report = demo_report
    project = Project.objects.get(name=PROJECT_NAME)
    assert report.project_id == project.pk
    assert set(project.task_kinds) == {TaskKind.PAIRWISE, TaskKind.RANKING, TaskKind.DEMONSTRATION}

    # Prompts: the planned toy questions, held-out ones stratified by kind.
    scale = SCALES["ci"]
    assert project.prompts.count() == scale.prompts
    assert project.prompts.filter(split=Split.TEST).count() == report.prompts["test"]
    assert report.prompts["test"] == scale.count("test") == report.task_n
    held_kinds = {kind(p.messages[-1]["content"]) for p in project.prompts.filter(split=Split.TEST)}
    assert held_kinds == {"facts", "reversing", "arithmetic", "sorting"}

    # Items: a demonstration for every prompt (held-out ones too: their labels measure the
    # models) but the train prompts left to the cheaper labels, then for every prompt one
    # comparison of the SFT policy's distinct samples with its demonstration, unless a sample
    # says what the demonstration says (then it stands for it): the policy's own answers are
    # kept. A prompt without a demonstration ranks the samples alone.
    prompts = project.prompts.count()
    bare = [p for p in project.prompts.all() if NO_DEMONSTRATION in p.tags]
    assert len(bare) == scale.count("train") - sum(scale.demonstrated.values()) > 0
    assert report.prompts[NO_DEMONSTRATION] == len(bare)
    assert f"({len(bare)} without a demonstration)" in report.summary()
    assert {p.split for p in bare} == {Split.TRAIN}
    assert report.items_created[TaskKind.DEMONSTRATION] == prompts - len(bare)
    assert not Item.objects.filter(kind=TaskKind.DEMONSTRATION, prompt__in=bare).exists()
    comparisons = report.items_created[TaskKind.RANKING] + report.items_created[TaskKind.PAIRWISE]
    assert 0 < comparisons <= prompts
    round_one = Item.objects.filter(project=project).count() - report.next_round["items"]
    assert round_one == sum(report.items_created.values())
    demonstrated = {
        d.item.prompt_id: d.text.strip()
        for d in Demonstration.objects.filter(item__project=project)
    }
    for item in Item.objects.filter(
        project=project, kind__in=[TaskKind.RANKING, TaskKind.PAIRWISE]
    ):
        if item.completions.filter(generation_params__has_key="batch").exists():
            continue  # round two's pair
        completions = list(item.completions.all())
        texts = [c.text.strip() for c in completions]
        assert 2 <= len(texts) == len(set(texts)) <= 8
        humans = [c for c in completions if c.source == CompletionSource.HUMAN]
        if item.prompt_id not in demonstrated:
            assert humans == []  # nothing to rank the samples against
            continue
        sampled_demo = demonstrated[item.prompt_id] in [
            c.text.strip() for c in completions if c.source == CompletionSource.CHECKPOINT
        ]
        assert len(humans) == (0 if sampled_demo else 1)
    sampled_by = set(
        Completion.objects.filter(prompt__project=project, source=CompletionSource.CHECKPOINT)
        .exclude(generation_params__has_key="batch")
        .values_list("generation_params__checkpoint_id", flat=True)
    )
    assert sampled_by == {report.checkpoints["sft"]}

    # Judgements: every item judged (or, all its replies alike, skipped) by simulated
    # annotators, and recorded as such; round two's pairs too.
    demonstrations = Demonstration.objects.filter(item__project=project)
    pairwise = PairwiseJudgement.objects.filter(item__project=project)
    rankings = RankingJudgement.objects.filter(item__project=project)
    assert report.judgements[TaskKind.DEMONSTRATION] == demonstrations.count()
    assert demonstrations.count() == prompts - len(bare)
    assert report.judgements[TaskKind.PAIRWISE] == pairwise.count()
    assert report.judgements[TaskKind.RANKING] == rankings.count()
    judged = [*demonstrations, *pairwise, *rankings]
    assert {j.origin for j in judged} == {Origin.SIMULATED}

    # Snapshots: ready, with training rows, and the same policy gives the same hash again.
    for name, recorded in report.snapshots.items():
        snapshot = DatasetSnapshot.objects.get(pk=recorded["id"])
        assert snapshot.status == Status.SUCCEEDED
        assert snapshot.row_counts["train"] > 0
        if name in ("sft", "prompts"):
            again = feedback_services.snapshot_create(
                project=project, kind=name, name=f"again {name}", policy=snapshot_policy()
            )
            assert again.content_hash == snapshot.content_hash == recorded["hash"]

    # The split invariants: no held-out prompt, nor a held-out sum or list in another phrasing,
    # in any training split of any snapshot; every held-out fact and word is trained on in
    # another phrasing and is in the pretraining corpus, no held-out sum or list is.
    checks = report.split_checks
    assert checks["held_out"] == report.task_n and checks["training_rows"] > 0
    assert checks["held_out_prompts_in_training"] == 0
    assert checks["held_out_sums_and_lists_in_training"] == 0
    assert checks["learnable_held_out_covered_in_training"] == checks["learnable_held_out"]
    # Some with a demonstration (in SFT's rows), some without: the demonstrated and
    # undemonstrated groups the paired table reports.
    assert 0 < checks["learnable_held_out_demonstrated_in_training"] < checks["learnable_held_out"]
    assert checks["learnable_held_out_in_corpus"] == checks["learnable_held_out"] > 0
    assert checks["min_corpus_chats_per_learnable"] >= 1
    assert checks["unlearnable_held_out_in_corpus"] == 0

    # Jobs: each succeeded and produced a checkpoint that loads, with the right lineage.
    ran_ppo = "ppo" in report.jobs
    assert report.ppo_decision.startswith("ran" if ran_ppo else "skipped")
    assert set(report.jobs) == {"sft", "reward", "dpo", "grpo", "round two"} | (
        {"ppo"} if ran_ppo else set()
    )
    checkpoint = {role: Checkpoint.objects.get(pk=pk) for role, pk in report.checkpoints.items()}
    round_one_final = checkpoint["ppo" if ran_ppo else "grpo"]
    parents = {
        "sft": checkpoint["base"],
        "reward": checkpoint["sft"],
        "dpo": checkpoint["sft"],
        "grpo": checkpoint["dpo"],
        "ppo": checkpoint["grpo"],
        "round two": round_one_final,
    }
    for role, recorded in report.jobs.items():
        job = TrainingJob.objects.get(pk=recorded["id"])
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.result.pk == recorded["checkpoint_id"] == report.checkpoints[role]
        assert job.result.parent == parents[role]
        load = load_reward_model if job.result.kind == CheckpointKind.REWARD else load_causal_lm
        assert load(job.result.load_path()) is not None
    dpo = TrainingJob.objects.get(pk=report.jobs["dpo"]["id"])
    assert dpo.config["loss_type"] == ["sigmoid", "sft"]
    grpo = TrainingJob.objects.get(pk=report.jobs["grpo"]["id"])
    assert grpo.reward_model is None and grpo.config["reward_functions"] == ["toy_task"]
    # The online stage trains on train prompts only (a project of its own).
    online = DatasetSnapshot.objects.get(pk=report.snapshots["online prompts"]["id"])
    assert grpo.snapshot == online and online.project_id == report.online_prompts["project_id"]
    train_questions = {p.messages[-1]["content"] for p in project.prompts.filter(split=Split.TRAIN)}
    assert {p.messages[-1]["content"] for p in online.project.prompts.all()} <= train_questions

    # Evaluations: every trained checkpoint's default suites ran here and stored results.
    for role in report.jobs:
        runs = EvalRun.objects.filter(checkpoint_id=report.checkpoints[role])
        assert runs.exists()
        assert {run.status for run in runs} == {RunStatus.SUCCEEDED}, [r.error for r in runs]
        assert EvalResult.objects.filter(run__in=runs).exists()

    # Task scores and sampled accuracy for every policy, on the held-out prompts, and each stage
    # against its parent, paired, by group.
    policies = {"base", "sft", "dpo", "grpo", "round two"} | ({"ppo"} if ran_ppo else set())
    assert set(report.task_scores) == set(report.sampled_kinds) == policies
    for role, by_kind in report.task_kinds.items():  # "right/asked" per kind adds up
        asked = sum(int(count.split("/")[1]) for count in by_kind.values())
        right = sum(int(count.split("/")[0]) for count in by_kind.values())
        assert asked == report.task_n and right == round(report.task_scores[role] * asked)
    # The same task score is each policy's evaluation run on the dashboard, which the demo
    # project's dashboard opens on, with every prompt's reply for Compare to pair.
    for role in policies:
        run = EvalRun.objects.get(checkpoint_id=report.checkpoints[role], task=TOY_TASK)
        assert run.status == RunStatus.SUCCEEDED and run.samples.count() == report.task_n
        score = run.results.get(metric="task_score")
        assert score.value == pytest.approx(report.task_scores[role])
        assert score.ci_low <= score.value <= score.ci_high and score.n == report.task_n
        assert {r.metric for r in run.results.all()} == set(TOY_TASK_METRICS)
    assert chart_metric_of(project=project) == f"generative/{TOY_TASK}/task_score"
    stages = {(row["role"], row["parent"]) for row in report.paired}
    assert {("sft", "base"), ("dpo", "sft"), ("grpo", "dpo"), ("round two", "sft")} <= stages
    for row in report.paired:
        groups = row["groups"]
        assert set(groups) == {"learnable", "demonstrated", "undemonstrated", "unlearnable", "all"}
        halves = groups["demonstrated"]["n"] + groups["undemonstrated"]["n"]
        assert halves == groups["learnable"]["n"]
        for result in groups.values():
            mean, low, high = result["sampled_ci"]
            assert low <= mean <= high and 0 <= result["mcnemar_p"] <= 1
    judgement = report.reward_judgement
    assert judgement["pairs"] > 0 and 0 <= judgement["accuracy"] <= 1
    assert 0 <= judgement["ece"] <= 1 and judgement["best_of"] == scale.eval_samples

    # Round one ends with comparisons of its final policy against the SFT policy, on train
    # prompts; round two's annotators judge them and its snapshot consumes them.
    newest = Checkpoint.objects.get(pk=report.next_round["checkpoint_id"])
    assert newest == round_one_final
    assert report.next_round["reference_id"] == report.checkpoints["sft"]
    assert report.next_round["items"] > 0
    next_items = Item.objects.filter(
        project=project,
        kind=TaskKind.PAIRWISE,
        completions__generation_params__checkpoint_id=newest.pk,
    ).distinct()
    assert next_items.count() == report.next_round["items"]
    assert all(item.prompt.split == Split.TRAIN for item in next_items)
    assert PairwiseJudgement.objects.filter(item__in=next_items).exists()
    second = DatasetSnapshot.objects.get(pk=report.round_two["snapshot_id"])
    first = DatasetSnapshot.objects.get(pk=report.snapshots["preference"]["id"])
    assert second.created_at > first.created_at
    assert report.round_two["new_train_pairs"] > 0
    assert TrainingJob.objects.get(pk=report.jobs["round two"]["id"]).snapshot == second
    # Those votes are arena battles: the project's leaderboard (simulated votes shown) ranks
    # round one's final policy against the SFT policy.
    battles = arena_battles(project=project, include_simulated=True)
    assert len(battles) == PairwiseJudgement.objects.filter(item__in=next_items).count()
    assert {frozenset(battle[:2]) for battle in battles} == {
        frozenset({newest.name, Checkpoint.objects.get(pk=report.checkpoints["sft"]).name})
    }

    # The summary names every stage and prints the task score's definition.
    stages = {"base model", "prompts", "demonstrations", "sft", "samples", "comparisons"}
    stages |= {"snapshots", "reward", "dpo", "online", "evaluation", "ppo", "next round"}
    stages |= {"round two", "report"}
    assert set(report.stage_seconds) == stages
    assert set(report.stage_cpu_seconds) == set(report.stage_seconds)
    assert TASK_SCORE in report.lines[-1] and "cpu s" in report.lines[-1]
    assert "McNemar p" in report.lines[-1]
    # ... and where to look in the app.
    assert f"/evals/projects/{project.pk}/leaderboard/?simulated=1" in report.lines[-1]
    assert f"/evals/dashboard/?project={project.pk}" in report.lines[-1]
    assert (
        f"/evals/dashboard/compare/?a={report.checkpoints['base']}&b={report.checkpoints['sft']}"
        in report.lines[-1]
    )
    print(report.lines[-1])
