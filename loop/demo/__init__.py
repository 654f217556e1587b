"""The loop proves that feedback helps: two rounds of the whole loop on the toy tasks, in one
process.

    python manage.py demo_loop [--scale demo|ci] [--seed S]   # `make demo`: this, then the app

Round one. Base model (built if missing) -> 760 toy prompts, 400 held out (prompt_plan:
stratified by kind; held-out facts and words asked in training in another phrasing only) -> a
demonstration of every held-out prompt and of half the train prompts (DemoScale.demonstrated;
the others are taught by the cheaper labels below only) by simulated annotators -> SFT from the
base -> sft_samples replies of the SFT policy to every prompt, ranked with the demonstration
where there is one (the policy's own right answers kept) ->
preference and prompts snapshots -> a reward model, and DPO with an SFT term (RPO) from the SFT
policy -> an online stage: GRPO from the DPO policy with the strict checker as verifiable reward,
on the train prompts the policy gets right sometimes -> the reward model judged (held-out
accuracy, calibration, best-of-8 against a random sample); PPO against it only if best-of-8
beats a random sample -> the final policy's replies against the SFT policy's as pairwise items.

Round two. Simulated annotators judge those pairs -> a new preference snapshot -> DPO (with the
SFT term) again, from round one's final policy.

Every policy is measured on the same held-out prompts, greedy and sampled (loop/demo/measure.py),
and each stage compared with its parent, paired. The task score (TASK_SCORE) is greedy accuracy
on all held-out prompts under the strict checker; the learnable kinds are reported apart.

Every step goes through the same services as the app (validation included); only the workers
are replaced: training jobs are launched with `enqueue=False` and run here with
run_training_job, and no message is sent for the duration (jobs.services.sends_held): the
evaluations that a job's success schedules (and the base model's, scheduled here) stay queued and
run here, in this process, right after (steps.run_queued_evaluations). No Redis or worker is
needed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Literal

from evals.ml.definitions import TOY_TASK
from evals.models import EvalRun, Suite
from evals.services import chart_default_set, schedule_default_evals
from jobs.services import sends_held

from .config import PROJECT_NAME, SCALES, DemoReport, DemoScale
from .measure import (
    HeldOut,
    PolicyScores,
    by_kind,
    compare,
    judge_reward_model,
    measure_policy,
    record_scores,
)
from .steps import (
    base_checkpoint,
    comparison_items,
    demo_project,
    demonstration_items,
    eval_results,
    import_prompts,
    next_round,
    online_prompts,
    run_queued_evaluations,
    sample_replies,
    simulate_round,
    snapshot_policy,
    split_checks,
    take_snapshot,
    train,
)

__all__ = ["PROJECT_NAME", "SCALES", "DemoReport", "DemoScale", "run_demo_loop", "snapshot_policy"]


class _Stages:
    def __init__(self, report: DemoReport, out: Callable[[str], Any]):
        self.report, self.out = report, out

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.out(f"[demo] {name} ...")
        started, cpu_started = time.monotonic(), time.process_time()
        try:
            yield
        finally:
            seconds, cpu = time.monotonic() - started, time.process_time() - cpu_started
            self.report.stage_seconds[name] = round(seconds, 1)
            self.report.stage_cpu_seconds[name] = round(cpu, 1)
            self.out(f"[demo] {name} done in {seconds:.1f} s ({cpu:.1f} CPU s)")


def run_demo_loop(
    *,
    scale: Literal["demo", "ci"] = "demo",
    out: Callable[[str], Any] = print,
    base_model_path: str | None = None,
    seed: int = 0,
) -> DemoReport:
    """Run both rounds (see the module docstring) and return what every step made.

    base_model_path: a model directory to start from (tests pass their session tiny model);
    default var/models/tiny-demo-<key> (see demo_model_dir), built with the scale's pretraining
    steps when missing. seed: of the simulated annotators, the sampling and the training jobs
    (not of the base model or the prompts), to see how much a result owes to luck.
    """
    config = SCALES[scale]
    if seed:
        config = replace(
            config,
            seed=seed,
            **{
                stage: {**getattr(config, stage), "seed": seed}
                for stage in ("sft", "reward", "dpo", "grpo", "ppo")
            },
        )
    report = DemoReport(scale=scale)
    stage = _Stages(report, out)
    scores: dict[str, PolicyScores] = {}
    with sends_held():
        with stage("base model"):
            base = base_checkpoint(config, base_model_path, out)
            report.base_checkpoint_id = base.pk
            report.checkpoints["base"] = base.pk
        with stage("prompts"):
            project = demo_project(config)
            report.project_id = project.pk
            report.prompts = import_prompts(project, config)
            held_out = HeldOut.of(project)
        with stage("demonstrations"):
            report.items_created.update(demonstration_items(project))
            report.judgements.update(simulate_round(project, config, seed=config.seed))
            snapshots = {"sft": take_snapshot(project, "sft")}
        with stage("sft"):
            sft = train(report, "sft", base, snapshots["sft"], config.sft)
        with stage("samples"):
            # The SFT policy's own replies, ranked with the demonstration: pairs on-policy for
            # DPO, right answers (its own or, failing those, the demonstration) over wrong ones.
            replies = sample_replies(project, sft, config.sft_samples, config)
            report.items_created.update(comparison_items(project, replies))
        with stage("comparisons"):
            report.judgements.update(simulate_round(project, config, seed=config.seed + 1))
        with stage("snapshots"):
            snapshots |= {kind: take_snapshot(project, kind) for kind in ("preference", "prompts")}
            _record_snapshots(report, snapshots)
        with stage("reward"):
            reward = train(report, "reward", sft, snapshots["preference"], config.reward)
        with stage("dpo"):
            dpo = train(report, "dpo", sft, snapshots["preference"], config.dpo)
        with stage("online"):
            grouped = config.grpo["batch_size"] // config.grpo["num_generations"]
            online, report.online_prompts = online_prompts(project, dpo, config, 2 * grouped)
            snapshots["online prompts"] = online
            _record_snapshots(report, {"online prompts": online})
            final = train(report, "grpo", dpo, online, config.grpo)
        with stage("evaluation"):
            # Trained checkpoints were evaluated when their jobs succeeded; the registered base
            # has no job, so its suites are asked for here (once).
            if config.full_evals and not EvalRun.objects.filter(checkpoint=base).exists():
                schedule_default_evals(checkpoint=base)
                run_queued_evaluations()
            for role in ("base", "sft", "dpo", "grpo"):
                scores[role] = measure_policy(_checkpoint(report, role), held_out, config)
            report.reward_judgement = judge_reward_model(
                reward, snapshots["preference"], "grpo", scores["grpo"], held_out
            )
        with stage("ppo"):
            low = report.reward_judgement["best_of_n_ci"][1]
            if low > 0:
                report.ppo_decision = (
                    f"ran: best-of-{config.eval_samples} by the reward model beats a random "
                    f"sample ({report.reward_judgement['best_of_n']}, CI above zero)"
                )
                final = train(
                    report, "ppo", final, snapshots["prompts"], config.ppo, reward_model=reward
                )
                scores["ppo"] = measure_policy(final, held_out, config)
            else:
                report.ppo_decision = (
                    f"skipped: best-of-{config.eval_samples} by the reward model does not beat a "
                    f"random sample ({report.reward_judgement['best_of_n']}, CI not above zero), "
                    "so PPO against it would chase its errors"
                )
        round_one = "ppo" if "ppo" in scores else "grpo"
        with stage("next round"):
            report.next_round = next_round(project, final, sft, config)
        with stage("round two"):
            report.judgements.update(simulate_round(project, config, seed=config.seed + 3))
            second = take_snapshot(project, "preference")
            snapshots["round two preference"] = second
            _record_snapshots(report, {"round two preference": second})
            consumed = second.row_counts.get("train", 0) - snapshots["preference"].row_counts.get(
                "train", 0
            )
            two = train(report, "dpo", final, second, config.dpo, role="round two")
            scores["round two"] = measure_policy(two, held_out, config)
            report.round_two = {
                "parent": round_one,
                "snapshot_id": second.pk,
                "new_train_pairs": consumed,
                "checkpoint_id": two.pk,
            }
        with stage("report"):
            chain = [("sft", "base"), ("dpo", "sft"), ("grpo", "dpo")]
            chain += [("ppo", "grpo")] if "ppo" in scores else []
            chain += [(round_one, "sft"), ("round two", round_one), ("round two", "sft")]
            report.paired = [compare(role, parent, scores, held_out) for role, parent in chain]
            report.task_n = len(held_out.prompts)
            for role, measured in scores.items():
                record_scores(report.checkpoints[role], measured, held_out)
                report.task_scores[role] = sum(measured.greedy) / max(len(measured.greedy), 1)
                report.task_kinds[role], report.sampled_kinds[role] = by_kind(measured, held_out)
            chart_default_set(project=project, metric=TASK_SCORE_COLUMN, set_by=None)
            report.split_checks = split_checks(project, list(snapshots.values()))
            for role, checkpoint_id in report.checkpoints.items():
                report.evals[role] = eval_results(checkpoint_id)
    report.load_average = os.getloadavg()
    out(report.summary())
    return report


TASK_SCORE_COLUMN = f"{Suite.GENERATIVE}/{TOY_TASK}/task_score"  # the demo project's chart


def _checkpoint(report: DemoReport, role: str):
    from modeling.models import Checkpoint

    return Checkpoint.objects.get(pk=report.checkpoints[role])


def _record_snapshots(report: DemoReport, snapshots: dict) -> None:
    for kind, snap in snapshots.items():
        report.snapshots[kind] = {
            "id": snap.pk,
            "hash": snap.content_hash,
            "rows": dict(snap.row_counts),
        }
