"""The demo loop's steps, each through the same services as the app."""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from evals.models import EvalRun
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

from .config import BASE_NAME, GUIDELINES, PROJECT_NAME, DemoReport, DemoScale

# --- the steps ---------------------------------------------------------------------------------


def base_checkpoint(config: DemoScale, path: str | None, out: Callable) -> Checkpoint:
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
        name=unique_checkpoint_name(stem=BASE_NAME) if taken else BASE_NAME,
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


def demo_project(config: DemoScale) -> Project:
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


def import_prompts(project: Project, config: DemoScale) -> dict[str, int]:
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


def conversation(prompt: Prompt) -> list[dict[str, str]]:
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return system + list(prompt.messages)


def demonstration_items(project: Project) -> Counter:
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


def sample_replies(
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
    replies = generate(checkpoint.load_path(), [conversation(p) for p in unanswered], **params)
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


def comparison_items(project: Project, replies: dict[int, list[Completion]]) -> Counter:
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


def simulate_round(project: Project, config: DemoScale, *, seed: int) -> Counter:
    return simulate(
        project=project,
        annotators=max(config.annotators, config.overlap),
        config=SimulationConfig(noise=config.noise, seed=seed),
    )


def take_snapshot(project: Project, kind: str) -> DatasetSnapshot:
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


def train(
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
    job = services.run_training_job(job=job)
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


def eval_results(checkpoint_id: int) -> list[dict[str, Any]]:
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


def task_scores(
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
            [conversation(p) for p in held_out],
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


def next_round(
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
