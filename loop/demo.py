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
import hashlib
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from django.db import transaction

from evals.models import EvalRun, RunStatus
from evals.services import schedule_default_evals
from feedback import services as feedback_services
from feedback.models import (
    Completion,
    CompletionSource,
    DatasetSnapshot,
    Demonstration,
    Item,
    Project,
    Prompt,
    Split,
    TaskKind,
)
from feedback.services.projects import MAX_RANKED, prompt_hash
from loop.comparisons import SamplingParams, comparisons_generate
from loop.simulation import SimulationConfig, simulate
from loop.toytask import is_correct, sample
from loop.toytask import kind as toy_kind
from modeling import services
from modeling.models import Checkpoint, CheckpointKind, JobStatus
from modeling.services.checkpoints import unique_checkpoint_name

PROJECT_NAME = "Toy tasks (demo loop)"
BASE_NAME = "tiny-demo-base"
GUIDELINES = (
    "Toy questions with one right answer: arithmetic, sorting a list, reversing a word, facts. "
    "Prefer the reply that gives the right answer; write the answer alone as a demonstration."
)

# The trainers' metrics on the snapshots' held-out rows worth a line in the summary.
HELD_OUT_METRICS = ("eval_loss", "eval_accuracy", "eval_rewards/accuracies", "eval_rewards/margins")


@dataclass(frozen=True)
class DemoScale:
    """How big one round is. `demo` fits `make demo` in 15 minutes on 2 CPU cores; `ci` only has
    to prove every link in seconds (its numbers mean nothing)."""

    prompts: int  # toy prompts imported; test_fraction of them are held out (split=test)
    pretrain_steps: int  # when the base model has to be built
    sft: dict[str, Any]
    reward: dict[str, Any]
    dpo: dict[str, Any]
    ppo: dict[str, Any] | None  # None: no PPO job
    test_fraction: float = 0.2
    # Sampled replies per prompt, ranked with its demonstration (at most MAX_RANKED in all).
    base_samples: int = 2
    sft_samples: int = 3
    sample_temperature: float = 1.0
    max_new_tokens: int = 24  # toy answers are a few tokens
    overlap: int = 1
    annotators: int = 2
    noise: float = 0.1
    next_round_prompts: int = 20
    # The base model's default suites too (trained checkpoints always get theirs, run when their
    # job succeeds, so their evaluation time counts in the sft/reward/dpo stages).
    full_evals: bool = True
    seed: int = 0  # simulated annotators (this and +1), sampling and training jobs


SCALES: dict[str, DemoScale] = {
    "demo": DemoScale(
        # 400 train prompts and 100 held out for the score; each gets a demonstration and a
        # ranking of it with up to 5 distinct sampled replies (about 5 preference rows).
        prompts=500,
        # About 2.5 minutes on 2 idle cores (0.25 s a step), several times that on a busy machine.
        pretrain_steps=600,
        # The base model learnt right answers, near misses and hedges (loop/corpus.py);
        # SFT on the demonstrations only has to make the right habit the likely one.
        sft={"learning_rate": 3e-4, "epochs": 3, "batch_size": 16, "max_length": 128},
        # From the SFT checkpoint. Its held-out accuracy stays near 0.6 whatever the learning
        # rate (5e-5 to 3e-4 gave 0.57-0.62): telling a right answer from a wrong one needs
        # knowing it, which the tiny model often does not (arithmetic, sorting).
        reward={"learning_rate": 3e-4, "epochs": 2, "batch_size": 16, "max_length": 128},
        # 120 updates, about one epoch of the ~1,900 pairs of 500 prompts (each chosen reply is
        # in 4 or 5 of them). A fixed budget, not epochs: a full epoch of 1,200 prompts' 4,900
        # pairs (305 updates) undid what SFT had taught (reversed words right 43 -> 34 of 64),
        # 120 kept it (40 of 64). 5e-6 left DPO so close to SFT that all 100 same-seed
        # next-round pairs were identical.
        dpo={
            "learning_rate": 5e-5,
            "max_steps": 120,
            "batch_size": 16,
            "max_length": 128,
            "beta": 0.1,
        },
        # A short PPO run: 8 updates of 16 rollouts, answers being a few tokens long.
        ppo={
            "learning_rate": 1e-5,
            "max_steps": 8,
            "batch_size": 16,
            "max_completion_length": 16,
            "num_ppo_epochs": 2,
            "missing_eos_penalty": 1.0,
        },
        next_round_prompts=100,
    ),
    "ci": DemoScale(
        prompts=20,
        pretrain_steps=3,
        sft={"learning_rate": 1e-3, "max_steps": 2, "batch_size": 8, "max_length": 96},
        reward={"learning_rate": 1e-3, "max_steps": 2, "batch_size": 8, "max_length": 96},
        dpo={"learning_rate": 1e-4, "max_steps": 2, "batch_size": 8, "max_length": 96},
        ppo={
            "learning_rate": 1e-5,
            "max_steps": 1,
            "batch_size": 4,
            "max_completion_length": 8,
            "num_ppo_epochs": 1,
        },
        max_new_tokens=8,
        next_round_prompts=16,  # every train prompt: tiny steps leave most pairs identical
        full_evals=False,
    ),
}


@dataclass
class DemoReport:
    """Every link of the round, for the summary table and for the test that checks each one."""

    scale: str
    project_id: int | None = None
    prompts: dict[str, int] = field(default_factory=dict)  # split -> prompts created this run
    base_checkpoint_id: int | None = None
    items_created: Counter = field(default_factory=Counter)  # kind -> items
    judgements: Counter = field(default_factory=Counter)  # kind -> simulated judgements
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> id/hash/rows
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> id/status/checkpoint
    checkpoints: dict[str, int] = field(default_factory=dict)  # role (base, sft, ...) -> id
    evals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # role -> runs
    task_scores: dict[str, float] = field(default_factory=dict)  # policy role -> accuracy
    task_kinds: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> kind -> "k/n"
    task_n: int = 0  # held-out prompts the task score is measured on
    next_round: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    # Stage -> CPU seconds of this process (every thread; jobs and evaluations run here): unlike
    # wall time, it hardly depends on what else the machine is doing.
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)
    load_average: tuple[float, float, float] | None = None  # 1/5/15-minute, at the end

    def summary(self) -> str:
        lines = [f"Demo loop ({self.scale}) — project #{self.project_id} {PROJECT_NAME!r}"]
        lines.append(
            f"  prompts      train {self.prompts.get('train', 0)}, test "
            f"{self.prompts.get('test', 0)} (created this run)"
        )
        lines.append(f"  items        {dict(self.items_created)}")
        lines.append(f"  judgements   {dict(self.judgements)} (simulated)")
        for kind, snap in self.snapshots.items():
            lines.append(
                f"  snapshot     {kind:<10} #{snap['id']} {snap['hash'][:12]} rows {snap['rows']}"
            )
        for kind, job in self.jobs.items():
            lines.append(
                f"  job          {kind:<10} #{job['id']} {job['status']:<9} "
                f"-> checkpoint #{job['checkpoint_id']} {job['checkpoint'] or job['error']}"
            )
            # Measured by the trainer on the snapshot's held-out rows (the test prompts' labels).
            held_out = {
                name.removeprefix("eval_"): value
                for name, value in job["metrics"].items()
                if name in HELD_OUT_METRICS
            }
            if held_out:
                lines.append(
                    f"  {'':<12} {'':<10} held out: "
                    + ", ".join(f"{name} {value:.3f}" for name, value in held_out.items())
                )
        lines.append("")
        lines.append(f"  {'checkpoint':<12} {'id':>4}  {'task score':>10}  evaluations")
        for role, checkpoint_id in self.checkpoints.items():
            score = self.task_scores.get(role)
            shown = f"{score:.3f}" if score is not None else "-"
            runs = self.evals.get(role, [])
            ok = sum(run["status"] == RunStatus.SUCCEEDED for run in runs)
            headline = ", ".join(
                f"{run['task']} {run['metric']}={run['value']:.3f}"
                for run in runs
                if run["metric"] and run["suite"] in ("generative", "reward_accuracy")
            )
            lines.append(
                f"  {role:<12} {checkpoint_id:>4}  {shown:>10}  {ok}/{len(runs)} ok  {headline}"
            )
            if role in self.task_kinds:
                kinds = ", ".join(f"{k} {v}" for k, v in self.task_kinds[role].items())
                lines.append(f"  {'':<12} {'':>4}  {'':>10}  right by kind: {kinds}")
        lines.append(f"  (task score: exact match on {self.task_n} held-out toy prompts, greedy)")
        lines.append(f"  next round   {self.next_round}")
        lines.append("")
        lines.extend(self.timing_table())
        return "\n".join(lines)

    def timing_table(self) -> list[str]:
        lines = [f"  {'stage':<14} {'wall s':>8} {'cpu s':>8}"]
        for name, wall in self.stage_seconds.items():
            lines.append(f"  {name:<14} {wall:>8.1f} {self.stage_cpu_seconds.get(name, 0):>8.1f}")
        total_wall, total_cpu = (
            sum(self.stage_seconds.values()),
            sum(self.stage_cpu_seconds.values()),
        )
        lines.append(f"  {'total':<14} {total_wall:>8.1f} {total_cpu:>8.1f}")
        if self.load_average is not None:
            lines.append(
                "  load average at the end: " + ", ".join(f"{v:.2f}" for v in self.load_average)
            )
        return lines


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
            base = _base_checkpoint(config, base_model_path, out)
            report.base_checkpoint_id = base.pk
            report.checkpoints["base"] = base.pk
        with stage("prompts"):
            project = _project(config)
            report.project_id = project.pk
            report.prompts = _import_prompts(project, config)
        with stage("demonstrations"):
            report.items_created.update(_demonstration_items(project))
            report.judgements.update(_simulate(project, config, seed=config.seed))
            snapshots = {"sft": _snapshot(project, "sft")}
        with stage("sft"):
            sft = _train(report, "sft", base, snapshots["sft"], config.sft)
        with stage("samples"):
            # The base's replies and the SFT policy's, ranked together with the demonstration:
            # the SFT samples make the pairs on-policy for DPO, the demonstration gives nearly
            # every prompt a right answer to prefer (few samples are right), the base's replies
            # (hedges among them) show the reward model what the habit to unlearn looks like.
            replies = _sample(project, base, config.base_samples, config)
            for prompt_id, texts in _sample(project, sft, config.sft_samples, config).items():
                replies.setdefault(prompt_id, []).extend(texts)
            report.items_created.update(_comparison_items(project, replies))
        with stage("comparisons"):
            report.judgements.update(_simulate(project, config, seed=config.seed + 1))
        with stage("snapshots"):
            snapshots |= {kind: _snapshot(project, kind) for kind in ("preference", "prompts")}
            for kind, snap in snapshots.items():
                report.snapshots[kind] = {
                    "id": snap.pk,
                    "hash": snap.content_hash,
                    "rows": dict(snap.row_counts),
                }
        with stage("reward"):
            reward = _train(report, "reward", sft, snapshots["preference"], config.reward)
        with stage("dpo"):
            final = _train(report, "dpo", sft, snapshots["preference"], config.dpo)
        if config.ppo is not None:
            with stage("ppo"):
                # From the DPO policy, scored by the reward model: the lineage stays one line
                # (base -> sft -> dpo -> ppo) and the newest checkpoint is the final one.
                final = _train(
                    report, "ppo", final, snapshots["prompts"], config.ppo, reward_model=reward
                )
        with stage("evaluation"):
            # Trained checkpoints were evaluated when their jobs succeeded; the registered base
            # has no job, so its suites are asked for here (once).
            if config.full_evals and not EvalRun.objects.filter(checkpoint=base).exists():
                schedule_default_evals(base)
            for role, checkpoint_id in report.checkpoints.items():
                report.evals[role] = _eval_results(checkpoint_id)
            report.task_n, report.task_scores, report.task_kinds = _task_scores(
                project, report.checkpoints, config
            )
        with stage("next round"):
            report.next_round = _next_round(project, final, sft, config)
    report.load_average = os.getloadavg()
    out(report.summary())
    return report


# --- the steps ---------------------------------------------------------------------------------


def _base_checkpoint(config: DemoScale, path: str | None, out: Callable) -> Checkpoint:
    if path is None:
        target = demo_model_dir(config)
        if not (target / "config.json").is_file():
            from loop.tiny import build_tiny_model

            out(f"[demo] building the tiny model ({config.pretrain_steps} steps) in {target}")
            # Built beside it and renamed: an interrupted build is never taken for a model.
            building = target.with_name(f".{target.name}.building")
            shutil.rmtree(building, ignore_errors=True)
            build_tiny_model(str(building), pretrain_steps=config.pretrain_steps)
            building.rename(target)
        path = str(target)
    resolved = str(Path(path).resolve())
    existing = Checkpoint.objects.filter(storage_path=resolved).order_by("pk").first()
    if existing is not None:
        return existing
    taken = Checkpoint.objects.filter(name=BASE_NAME).exists()
    return services.checkpoint_register(
        name=unique_checkpoint_name(BASE_NAME) if taken else BASE_NAME,
        storage_path=resolved,
        notes="Base model of the demo loop (make demo).",
    )


def demo_model_dir(config: DemoScale) -> Path:
    """var/models/tiny-demo-<key>: the key changes with the corpus, the model's shape and the
    pretraining steps, so an edit to any of them builds (and registers) a new base model instead
    of reusing a stale one."""
    from loop.corpus import CORPUS_PATH
    from loop.tiny import TinyModelConfig

    key = hashlib.sha256(CORPUS_PATH.read_bytes())
    key.update(repr((asdict(TinyModelConfig()), config.pretrain_steps)).encode())
    return Path(settings.VAR_DIR) / "models" / f"tiny-demo-{key.hexdigest()[:10]}"


def _project(config: DemoScale) -> Project:
    project = Project.objects.filter(name=PROJECT_NAME).first()
    if project is not None:
        return project
    return feedback_services.project_create(
        name=PROJECT_NAME,
        task_kinds=[TaskKind.PAIRWISE, TaskKind.RANKING, TaskKind.DEMONSTRATION],
        overlap=config.overlap,
        guidelines=GUIDELINES,
        description="Made by `manage.py demo_loop`: one simulated round of the whole loop.",
    )


def _import_prompts(project: Project, config: DemoScale) -> dict[str, int]:
    """The toy questions (fixed seed), every fifth one held out; existing ones are kept."""
    created: Counter = Counter()
    n_test = round(config.prompts * config.test_fraction)
    seen: set[str] = set()
    for position, (question, _answer) in enumerate(sample(config.prompts * 2, seed=7)):
        if len(seen) >= config.prompts:
            break
        if question in seen:
            continue  # the sampler repeats facts; a project refuses duplicate prompts
        seen.add(question)
        split = Split.TEST if len(seen) <= n_test else Split.TRAIN
        messages = [{"role": "user", "content": question}]
        if Prompt.objects.filter(project=project, content_hash=prompt_hash("", messages)).exists():
            continue
        feedback_services.prompt_create(
            project=project,
            messages=messages,
            split=split,
            tags=["toy", "demo-loop"],
            source="demo_loop",
            external_id=f"toy-{position}",
        )
        created[split] += 1
    return {Split.TRAIN: created[Split.TRAIN], Split.TEST: created[Split.TEST]}


def _conversation(prompt: Prompt) -> list[dict[str, str]]:
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return system + list(prompt.messages)


def _demonstration_items(project: Project) -> Counter:
    """A demonstration item for every prompt without one. Held-out prompts get theirs too: the
    snapshots keep a prompt imported as test out of training, and its labels measure the
    trained models (the SFT model's held-out loss, the reward model's held-out accuracy)."""
    made: Counter = Counter()
    for prompt in Prompt.objects.filter(project=project).exclude(
        items__kind=TaskKind.DEMONSTRATION
    ):
        feedback_services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
        made[TaskKind.DEMONSTRATION.value] += 1
    return made


def _sample(
    project: Project, checkpoint: Checkpoint, n: int, config: DemoScale
) -> dict[int, list[Completion]]:
    """n sampled replies of `checkpoint` to every prompt it has not answered yet, stored as
    completions (prompt id -> completions)."""
    from modeling.ml import generate

    unanswered = list(
        Prompt.objects.filter(project=project)
        .exclude(
            completions__source=CompletionSource.CHECKPOINT,
            completions__generation_params__checkpoint_id=checkpoint.pk,
        )
        .order_by("id")
    )
    if not unanswered or n < 1:
        return {}
    params = {
        "n": n,
        "temperature": config.sample_temperature,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
    }
    replies = generate(checkpoint.load_path(), [_conversation(p) for p in unanswered], **params)
    stored = {}
    with transaction.atomic():
        for prompt, texts in zip(unanswered, replies, strict=True):
            stored[prompt.pk] = [
                feedback_services.completion_create(
                    prompt=prompt,
                    text=text.replace("\x00", "") or "(no reply)",
                    model_name=checkpoint.display_name,
                    source=CompletionSource.CHECKPOINT,
                    generation_params={"checkpoint_id": checkpoint.pk, "sample": i, **params},
                )
                for i, text in enumerate(texts)
            ]
    return stored


def _comparison_items(project: Project, replies: dict[int, list[Completion]]) -> Counter:
    """For every prompt with new replies, one item comparing its demonstration with the distinct
    replies (the same text twice is one candidate: nobody can tell copies apart): a ranking of up
    to MAX_RANKED, a pairwise item when only two differ, nothing when all agree. Which replies
    are right is never looked at here, only by the (simulated) annotators."""
    made: Counter = Counter()
    demonstrations = (
        Demonstration.objects.filter(item__project=project, item__prompt_id__in=list(replies))
        .select_related("item__prompt", "annotator")
        .order_by("pk")
    )
    written = {}
    for demonstration in demonstrations:
        written.setdefault(demonstration.item.prompt_id, demonstration)
    for prompt_id, completions in replies.items():
        demonstration = written.get(prompt_id)
        texts = {demonstration.text.strip()} if demonstration else set()
        candidates = []
        for completion in completions:
            if completion.text.strip() not in texts:
                texts.add(completion.text.strip())
                candidates.append(completion)
        candidates = candidates[: MAX_RANKED - (demonstration is not None)]
        if len(candidates) + (demonstration is not None) < 2:
            continue
        # In no telling order (a position bias must not line up with the source): base and SFT
        # replies mixed, the demonstration anywhere among them.
        random.Random(prompt_id).shuffle(candidates)
        with transaction.atomic():
            if demonstration is not None:
                candidates.insert(
                    random.Random(-prompt_id).randrange(len(candidates) + 1),
                    feedback_services.completion_create(
                        prompt=demonstration.item.prompt,
                        text=demonstration.text,
                        model_name="demonstration",
                        source=CompletionSource.HUMAN,
                        author=demonstration.annotator,
                    ),
                )
            kind = TaskKind.PAIRWISE if len(candidates) == 2 else TaskKind.RANKING
            feedback_services.item_create(
                project=project,
                kind=kind,
                prompt=Prompt.objects.get(pk=prompt_id),
                completions=candidates,
            )
        made[kind.value] += 1
    return made


def _simulate(project: Project, config: DemoScale, *, seed: int) -> Counter:
    return simulate(
        project=project,
        annotators=max(config.annotators, config.overlap),
        config=SimulationConfig(noise=config.noise, seed=seed),
    )


def _snapshot(project: Project, kind: str) -> DatasetSnapshot:
    snapshot = feedback_services.snapshot_create(
        project=project,
        kind=kind,
        name=f"demo loop {kind} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        policy=snapshot_policy(),
    )
    if not snapshot.is_ready:
        raise RuntimeError(f"Snapshot {snapshot.name!r} is {snapshot.status}: {snapshot.error}")
    return snapshot


def snapshot_policy() -> dict[str, Any]:
    # Only the prompts imported as test are held out (no hash split on top): the task score is
    # measured on exactly those.
    return {"include_simulated": True, "test_fraction": 0.0}


def _train(
    report: DemoReport,
    kind: str,
    parent: Checkpoint,
    snapshot: DatasetSnapshot,
    config: dict[str, Any],
    reward_model: Checkpoint | None = None,
) -> Checkpoint:
    job = services.job_launch(
        kind=kind,
        parent=parent,
        snapshot=snapshot,
        config=config,
        reward_model=reward_model,
        launched_by=None,
        enqueue=False,
    )
    job = services.run_training_job(job)
    result = job.result if job.status == JobStatus.SUCCEEDED else None
    report.jobs[kind] = {
        "id": job.pk,
        "status": job.status,
        "error": job.error,
        "steps": job.step,
        "checkpoint_id": result.pk if result else None,
        "checkpoint": result.name if result else "",
        "metrics": dict(job.metrics or {}),
    }
    if result is None:
        raise RuntimeError(f"The {kind} job #{job.pk} {job.status}: {job.error}")
    report.checkpoints[kind] = result.pk
    return result


def _eval_results(checkpoint_id: int) -> list[dict[str, Any]]:
    rows = []
    runs = EvalRun.objects.filter(checkpoint_id=checkpoint_id).prefetch_related("results")
    for run in runs.order_by("pk"):
        results = list(run.results.all())
        main = results[0] if results else None
        rows.append(
            {
                "id": run.pk,
                "suite": run.suite,
                "task": run.task,
                "status": run.status,
                "error": run.error,
                "metric": main.metric if main else "",
                "value": main.value if main else float("nan"),
                "results": {r.metric: r.value for r in results},
            }
        )
    return rows


def _task_scores(
    project: Project, checkpoints: dict[str, int], config: DemoScale
) -> tuple[int, dict[str, float], dict[str, dict[str, str]]]:
    """Greedy exact-match accuracy of each policy on the held-out toy prompts, overall and by
    kind of question (role -> kind -> "right/asked")."""
    from modeling.ml import generate

    held_out = list(Prompt.objects.filter(project=project, split=Split.TEST).order_by("id"))
    questions = [p.messages[-1]["content"] for p in held_out]
    asked = Counter(toy_kind(q) for q in questions)
    scores, by_kind = {}, {}
    for role, checkpoint_id in checkpoints.items():
        checkpoint = Checkpoint.objects.get(pk=checkpoint_id)
        if checkpoint.kind != CheckpointKind.POLICY or not held_out:
            continue
        replies = generate(
            checkpoint.load_path(),
            [_conversation(p) for p in held_out],
            temperature=0,
            max_new_tokens=config.max_new_tokens,
            batch_size=16,
        )
        right = Counter(
            toy_kind(q) for q, r in zip(questions, replies, strict=True) if is_correct(q, r[0])
        )
        scores[role] = right.total() / len(held_out)
        by_kind[role] = {k: f"{right[k]}/{n}" for k, n in sorted(asked.items())}
    return len(held_out), scores, by_kind


def _next_round(
    project: Project, newest: Checkpoint, reference: Checkpoint, config: DemoScale
) -> dict[str, Any]:
    """Round two: the newest checkpoint against the SFT policy that the preference stages started
    from, on train prompts it has not answered. (Against its direct parent, most same-seed pairs
    came out identical and were skipped: DPO and PPO stay close to where they start.)"""
    before = Item.objects.filter(project=project).count()
    outcome = comparisons_generate(
        checkpoint=newest,
        project=project,
        reference=reference,
        n_prompts=config.next_round_prompts,
        batch=f"demo-loop-{newest.pk}",
        sampling=SamplingParams(max_new_tokens=config.max_new_tokens, temperature=1.0),
    )
    return {
        "checkpoint_id": newest.pk,
        "reference_id": reference.pk,
        "items": outcome.items,
        "skipped_identical": outcome.skipped_identical,
        "skipped_empty": outcome.skipped_empty,
        "open_items": Item.objects.filter(project=project).count() - before,
    }
