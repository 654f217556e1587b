"""The loop proves itself: one round of the whole feedback loop on the toy tasks, in one process.

    python manage.py demo_loop [--scale demo|ci] [--prompts N] [--seed S]   # `make demo`: this,
                                                                             # then the app

Base model (built if missing) -> toy prompts (20% held out) -> a demonstration item per prompt,
worked by simulated annotators -> sft snapshot -> SFT from the base -> for every prompt, replies
sampled from the base and from the SFT policy, ranked together with the prompt's demonstration
-> preference and prompts snapshots -> a reward model and DPO, both from the SFT checkpoint, and
PPO from the DPO policy scored by that reward model -> every checkpoint evaluated -> the next
round's comparisons from the newest checkpoint against the SFT policy.

Why in that order (InstructGPT's): pairs of two base replies carried almost no signal, because
the base model's sampled replies are rarely right (about 2% of them, with the first corpus): 3%
of those pairs had exactly one right side, and annotators can only prefer where one is. Ranking
the SFT policy's own samples with the demonstration gives nearly every prompt right-over-wrong
pairs, and DPO then learns from pairs of the policy it starts from (on-policy), not of the base.
The held-out prompts get labels too, which the snapshots keep out of training: the SFT model's
held-out loss and the reward model's held-out accuracy are measured on them.

Every step goes through the same services as the app (validation included); only the workers
are replaced: training jobs are launched with `enqueue=False` and run here with
run_training_job, and Celery runs eagerly for the duration, so the evaluations that a job's
success schedules (and the base model's, scheduled here) run in this process too. No Redis or
worker is needed.

The "task score" is the exact-match accuracy of greedy answers to the held-out toy prompts, graded
by loop.toytask.is_correct; it is the number that should rise from the base to the final policy.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Literal

from evals.models import EvalRun
from evals.services import schedule_default_evals

from .config import PROJECT_NAME, SCALES, DemoReport, DemoScale
from .steps import (
    base_checkpoint,
    comparison_items,
    demo_project,
    demonstration_items,
    eval_results,
    import_prompts,
    next_round,
    sample_replies,
    simulate_round,
    snapshot_policy,
    take_snapshot,
    task_scores,
    train,
)

__all__ = ["PROJECT_NAME", "SCALES", "DemoReport", "DemoScale", "run_demo_loop", "snapshot_policy"]


@contextlib.contextmanager
def _celery_in_process() -> Iterator[None]:
    """Tasks sent while the loop runs (the evaluations a job's success schedules) run right here."""
    from celery import current_app as app  # config.celery's app: the project has one

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = before


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
    prompts: int | None = None,
    seed: int = 0,
) -> DemoReport:
    """Run one round of the loop (see the module docstring) and return what every step made.

    base_model_path: a model directory to start from (tests pass their session tiny model);
    default var/models/tiny-demo-<key> (see demo_model_dir), built with the scale's pretraining
    steps when missing.
    Re-running reuses the project, its prompts and the base checkpoint, and trains again on
    whatever the project then holds.
    prompts: import this many toy prompts instead of the scale's (at most RESERVED_DEMO_PROMPTS,
    the ones pretraining never saw); seed: of the simulated annotators, the sampling and the
    training jobs (not of the base model or the prompts), to see how much a result owes to luck.
    """
    config = SCALES[scale]
    if prompts is not None:
        from loop.corpus import RESERVED_DEMO_PROMPTS

        if not 10 <= prompts <= RESERVED_DEMO_PROMPTS:
            raise ValueError(f"prompts must be between 10 and {RESERVED_DEMO_PROMPTS}")
        config = replace(config, prompts=prompts)
    if seed:
        config = replace(
            config,
            seed=seed,
            **{
                stage: {**getattr(config, stage), "seed": seed}
                for stage in ("sft", "reward", "dpo", "ppo")
                if getattr(config, stage) is not None
            },
        )
    report = DemoReport(scale=scale)
    stage = _Stages(report, out)
    with _celery_in_process():
        with stage("base model"):
            base = base_checkpoint(config, base_model_path, out)
            report.base_checkpoint_id = base.pk
            report.checkpoints["base"] = base.pk
        with stage("prompts"):
            project = demo_project(config)
            report.project_id = project.pk
            report.prompts = import_prompts(project, config)
        with stage("demonstrations"):
            report.items_created.update(demonstration_items(project))
            report.judgements.update(simulate_round(project, config, seed=config.seed))
            snapshots = {"sft": take_snapshot(project, "sft")}
        with stage("sft"):
            sft = train(report, "sft", base, snapshots["sft"], config.sft)
        with stage("samples"):
            # The base's replies and the SFT policy's, ranked together with the demonstration:
            # the SFT samples make the pairs on-policy for DPO, the demonstration gives nearly
            # every prompt a right answer to prefer (few samples are right), the base's replies
            # (hedges among them) show the reward model what the habit to unlearn looks like.
            replies = sample_replies(project, base, config.base_samples, config)
            for prompt_id, texts in sample_replies(
                project, sft, config.sft_samples, config
            ).items():
                replies.setdefault(prompt_id, []).extend(texts)
            report.items_created.update(comparison_items(project, replies))
        with stage("comparisons"):
            report.judgements.update(simulate_round(project, config, seed=config.seed + 1))
        with stage("snapshots"):
            snapshots |= {kind: take_snapshot(project, kind) for kind in ("preference", "prompts")}
            for kind, snap in snapshots.items():
                report.snapshots[kind] = {
                    "id": snap.pk,
                    "hash": snap.content_hash,
                    "rows": dict(snap.row_counts),
                }
        with stage("reward"):
            reward = train(report, "reward", sft, snapshots["preference"], config.reward)
        with stage("dpo"):
            final = train(report, "dpo", sft, snapshots["preference"], config.dpo)
        if config.ppo is not None:
            with stage("ppo"):
                # From the DPO policy, scored by the reward model: the lineage stays one line
                # (base -> sft -> dpo -> ppo) and the newest checkpoint is the final one.
                final = train(
                    report, "ppo", final, snapshots["prompts"], config.ppo, reward_model=reward
                )
        with stage("evaluation"):
            # Trained checkpoints were evaluated when their jobs succeeded; the registered base
            # has no job, so its suites are asked for here (once).
            if config.full_evals and not EvalRun.objects.filter(checkpoint=base).exists():
                schedule_default_evals(checkpoint=base)
            for role, checkpoint_id in report.checkpoints.items():
                report.evals[role] = eval_results(checkpoint_id)
            report.task_n, report.task_scores, report.task_kinds = task_scores(
                project, report.checkpoints, config
            )
        with stage("next round"):
            report.next_round = next_round(project, final, sft, config)
    report.load_average = os.getloadavg()
    out(report.summary())
    return report
