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
from typing import Any, NamedTuple

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
from loop.toytask import is_correct, sample, subject
from loop.toytask import kind as toy_kind
from modeling import services
from modeling.models import Checkpoint, JobStatus
from modeling.services.checkpoints import unique_checkpoint_name

from .config import BASE_NAME, GUIDELINES, LEARNABLE_KINDS, PROJECT_NAME, DemoReport, DemoScale

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
            started = time.monotonic()

            def progress(step: int, steps: int, loss: float) -> None:
                spent = time.monotonic() - started
                left = spent / step * (steps - step)
                out(
                    f"[demo]   pretraining step {step}/{steps}, loss {loss:.2f}, "
                    f"{spent:.0f} s so far, about {left:.0f} s left"
                )

            build_tiny_model(str(building), pretrain_steps=config.pretrain_steps, progress=progress)
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
        evaluate=False,  # its evaluation stage asks for the base's suites (run_demo_loop)
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


class Planned(NamedTuple):
    question: str
    split: str
    demonstrated: bool  # gets a demonstration item (every held-out prompt does)


# The tag of a train prompt that gets no demonstration: only rankings and the online stage see it.
NO_DEMONSTRATION = "no-demonstration"


def prompt_plan(config: DemoScale) -> list[Planned]:
    """The demo's toy prompts, held-out ones first, stratified by kind.

    Facts and words: training covers what is held out, in another phrasing. Every held-out fact
    or word is asked in training too, but never in its held-out phrasing: "Spell lamp
    backwards." held out, "Reverse: lamp" in training. That is what a held-out set training can
    move looks like (the demo measures whether feedback teaches the model to answer, not new
    facts), and every such subject is also asked in the pretraining corpus (what makes them
    learnable at 2M parameters). Sums and lists are among the reserved questions the corpus
    never asks (loop.corpus.reserved_keys), one phrasing each, never in both splits: those
    measure generalisation.

    Of the train prompts, the first `config.demonstrated[kind]` of each kind get a demonstration
    (SFT's data); the others are trained on through rankings and the online stage only. So half
    the held-out facts and words are covered by a demonstration in another phrasing, half by
    cheaper labels only."""
    from loop.corpus import (
        FACT_PHRASINGS,
        FACT_TABLE,
        RESERVED_DEMO_PROMPTS,
        REVERSE_WORDS,
        REVERSING_TEMPLATES,
        task_key,
    )

    rng = random.Random(7)
    facts = [question for _, question, _, _ in FACT_TABLE]
    words = list(REVERSE_WORDS)
    rng.shuffle(facts)
    rng.shuffle(words)
    # Each fact or word's phrasings in a fixed random order: the first is its held-out one, the
    # second its training one.
    phrasings = {
        "facts": [[p.format(q=q) for p in rng.sample(FACT_PHRASINGS, 2)] for q in facts],
        "reversing": [[t.format(w=w) for t in rng.sample(REVERSING_TEMPLATES, 2)] for w in words],
    }
    # One phrasing per sum or list: "What is 3 + 4?" held out and "Compute 3 + 4." in training
    # would be the same question.
    open_ended: dict[str, list[str]] = {"arithmetic": [], "sorting": []}
    keys: set[tuple] = set()
    for question, _ in sample(RESERVED_DEMO_PROMPTS, seed=7):
        pool = open_ended.get(toy_kind(question))
        if pool is not None and task_key(question) not in keys:
            keys.add(task_key(question))
            pool.append(question)
    plan: list[Planned] = []
    for split, sizes, which in ((Split.TEST, config.held_out, 0), (Split.TRAIN, config.train, 1)):
        for kind in (*phrasings, *open_ended):
            if kind in phrasings:
                asked = [phrasings[kind][i][which] for i in range(sizes[kind])]
            else:  # after the held-out ones
                start = 0 if split == Split.TEST else config.held_out[kind]
                asked = open_ended[kind][start : start + sizes[kind]]
            taught = len(asked) if split == Split.TEST else config.demonstrated[kind]
            plan += [Planned(q, split, i < taught) for i, q in enumerate(asked)]
    return plan


def import_prompts(project: Project, config: DemoScale) -> dict[str, int]:
    """The planned toy prompts (prompt_plan); existing ones are kept. Returns how many were
    created per split, and how many of them get no demonstration."""
    created: Counter = Counter()
    for position, (question, split, demonstrated) in enumerate(prompt_plan(config)):
        messages = [{"role": "user", "content": question}]
        if Prompt.objects.filter(project=project, content_hash=prompt_hash("", messages)).exists():
            continue
        feedback_services.prompt_create(
            project=project,
            messages=messages,
            split=split,
            tags=["toy", "demo-loop", toy_kind(question)]
            + ([] if demonstrated else [NO_DEMONSTRATION]),
            source="demo_loop",
            external_id=f"toy-{position}",
        )
        created[split] += 1
        created[NO_DEMONSTRATION] += not demonstrated
    return {
        Split.TRAIN: created[Split.TRAIN],
        Split.TEST: created[Split.TEST],
        NO_DEMONSTRATION: created[NO_DEMONSTRATION],
    }


def conversation(prompt: Prompt) -> list[dict[str, str]]:
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return system + list(prompt.messages)


def demonstration_items(project: Project) -> Counter:
    """A demonstration item for every prompt without one, except those tagged NO_DEMONSTRATION.
    Held-out prompts get theirs too: the snapshots keep a prompt imported as test out of
    training, and its labels measure the trained models (the SFT model's held-out loss, the
    reward model's held-out accuracy)."""
    made: Counter = Counter()
    for prompt in Prompt.objects.filter(project=project).exclude(
        items__kind=TaskKind.DEMONSTRATION
    ):
        if NO_DEMONSTRATION in prompt.tags:
            continue
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
    replies = generate(
        checkpoint.load_path(), [conversation(p) for p in unanswered], batch_size=32, **params
    )
    stored = {}
    with transaction.atomic():
        for prompt, texts in zip(unanswered, replies, strict=True):
            stored[prompt.pk] = [
                feedback_services.completion_create(
                    prompt=prompt,
                    text=storable_reply(text),
                    model_name=checkpoint.display_name,
                    source=CompletionSource.CHECKPOINT,
                    generation_params={"checkpoint_id": checkpoint.pk, "sample": i, **params},
                )
                for i, text in enumerate(texts)
            ]
    return stored


def storable_reply(text: str) -> str:
    """A sampled reply as a completion can hold it: no NUL, and "(no reply)" for one with no
    text at all (only whitespace), which a completion must not be."""
    text = text.replace("\x00", "")
    return text if text.strip() else "(no reply)"


def comparison_items(project: Project, replies: dict[int, list[Completion]]) -> Counter:
    """For every prompt with new replies, one item comparing the distinct replies with its
    demonstration (the same text twice is one candidate: nobody can tell copies apart): a
    ranking of up to MAX_RANKED, a pairwise item when only two differ, nothing when all agree.

    A sampled reply that says what the demonstration says stays, and stands for it: the
    policy's own right answers are what on-policy preference pairs must prefer (dropping them
    left only "demonstration vs the policy's wrong answers"). Which replies are right is never
    looked at here, only by the (simulated) annotators."""
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
        texts: set[str] = set()
        candidates = []
        for completion in completions:
            if completion.text.strip() not in texts:
                texts.add(completion.text.strip())
                candidates.append(completion)
        if demonstration is not None and demonstration.text.strip() in texts:
            demonstration = None  # the policy wrote it itself
        candidates = candidates[: MAX_RANKED - (demonstration is not None)]
        if len(candidates) + (demonstration is not None) < 2:
            continue
        # In no telling order (a position bias must not line up with the source).
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
    role: str | None = None,
) -> Checkpoint:
    """Launch and run one job; `role` (default: its kind) names it in the report."""
    role = role or kind
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
    report.jobs[role] = {
        "id": job.pk,
        "status": job.status,
        "error": job.error,
        "steps": job.step,
        "checkpoint_id": result.pk if result else None,
        "checkpoint": result.name if result else "",
        "metrics": dict(job.metrics or {}),
    }
    if result is None:
        raise RuntimeError(f"The {role} job #{job.pk} {job.status}: {job.error}")
    report.checkpoints[role] = result.pk
    run_queued_evaluations()  # its default evaluations, queued on commit
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


def next_round(
    project: Project, newest: Checkpoint, reference: Checkpoint, config: DemoScale
) -> dict[str, Any]:
    """Round one's last act: the newest checkpoint against the SFT policy that the preference
    stages started from, on every train prompt, as pairwise items that round two's annotators
    judge. (Against its direct parent, most same-seed pairs came out identical and were
    skipped.) Held-out prompts are never asked: comparisons_generate takes train prompts."""
    before = Item.objects.filter(project=project).count()
    outcome = comparisons_generate(
        checkpoint=newest,
        project=project,
        reference=reference,
        n_prompts=config.next_round_prompts,
        batch=f"demo-loop-{newest.pk}",
        sampling=SamplingParams(
            max_new_tokens=config.max_new_tokens, temperature=1.0, top_p=1.0, seed=config.seed
        ),
    )
    return {
        "checkpoint_id": newest.pk,
        "reference_id": reference.pk,
        "items": outcome.items,
        "skipped_identical": outcome.skipped_identical,
        "skipped_empty": outcome.skipped_empty,
        "open_items": Item.objects.filter(project=project).count() - before,
    }


def online_prompts(
    project: Project, policy: Checkpoint, config: DemoScale, minimum: int
) -> tuple[DatasetSnapshot, dict[str, Any]]:
    """The online stage's prompts: the train prompts `policy` answers right sometimes
    (probe_samples samples at T=1, graded by the checker that is the stage's reward), copied
    into a project of their own whose prompts snapshot the job trains on. A prompt it always or
    never gets right gives every sample of its group the same reward: no advantage, no signal.
    Fewer than `minimum` such prompts (a barely trained model): every train prompt."""
    from modeling.ml import generate

    prompts = list(Prompt.objects.filter(project=project, split=Split.TRAIN).order_by("id"))
    questions = [p.messages[-1]["content"] for p in prompts]
    samples = generate(
        policy.load_path(),
        [conversation(p) for p in prompts],
        n=config.probe_samples,
        temperature=1.0,
        max_new_tokens=config.max_new_tokens,
        batch_size=32,
        seed=config.seed + 2,
    )
    right = [
        sum(bool(is_correct(q, s)) for s in texts)
        for q, texts in zip(questions, samples, strict=True)
    ]
    chosen = [p for p, r in zip(prompts, right, strict=True) if 0 < r < config.probe_samples]
    summary = {
        "train_prompts": len(prompts),
        "sometimes_right": len(chosen),
        "always_right": sum(r == config.probe_samples for r in right),
        "never_right": right.count(0),
        "by_kind": dict(Counter(toy_kind(p.messages[-1]["content"]) for p in chosen)),
    }
    if len(chosen) < minimum:
        chosen, summary["fallback"] = prompts, "all train prompts"
    online = feedback_services.project_create(
        name=f"{PROJECT_NAME}: online prompts of #{policy.pk} ({time.strftime('%H:%M:%S')})",
        task_kinds=[TaskKind.PAIRWISE],
        overlap=1,
        guidelines=GUIDELINES,
        description="Train prompts of the demo loop that the policy answers right sometimes.",
    )
    for prompt in chosen:
        feedback_services.prompt_create(
            project=online,
            messages=prompt.messages,
            split=Split.TRAIN,
            tags=prompt.tags,
            source="demo_loop",
            external_id=f"prompt-{prompt.pk}",
        )
    summary["project_id"] = online.pk
    return take_snapshot(online, "prompts"), summary


def split_checks(project: Project, snapshots: list[DatasetSnapshot]) -> dict[str, Any]:
    """The split invariants, counted: no held-out prompt in any snapshot's training rows, nor a
    held-out sum or list in another phrasing; every held-out fact and word asked in training in
    another phrasing (the coverage relation of prompt_plan), how many of them with a
    demonstration (in SFT's rows), and in the pretraining corpus; no held-out sum or list in the
    corpus."""
    import json

    from loop.corpus import read_corpus

    held = {
        p.messages[-1]["content"] for p in Prompt.objects.filter(project=project, split=Split.TEST)
    }
    learnable = [q for q in held if toy_kind(q) in LEARNABLE_KINDS]
    unlearnable = {subject(q) for q in held if toy_kind(q) not in LEARNABLE_KINDS}
    trained, leaked, open_leaked = 0, 0, 0
    trained_subjects: set = set()
    demonstrated_subjects: set = set()  # in SFT's training rows
    for snapshot in snapshots:
        with open(snapshot.path() / "train.jsonl", encoding="utf-8") as rows:
            for line in rows:
                row = json.loads(line)
                turns = row.get("prompt") or row.get("messages") or []
                users = [t["content"] for t in turns if t.get("role") == "user"]
                question = users[-1] if users else ""
                trained += 1
                leaked += question in held
                open_leaked += subject(question) in unlearnable
                trained_subjects.add(subject(question))
                if snapshot.kind == "sft":
                    demonstrated_subjects.add(subject(question))
    corpus_subjects = Counter(
        subject(turn["content"])
        for doc in read_corpus()
        for turn in doc.get("messages", [])
        if turn["role"] == "user"
    )
    in_corpus = [corpus_subjects[subject(q)] for q in learnable]
    return {
        "held_out": len(held),
        "training_rows": trained,
        "held_out_prompts_in_training": leaked,
        "held_out_sums_and_lists_in_training": open_leaked,
        "learnable_held_out": len(learnable),
        "learnable_held_out_covered_in_training": sum(
            subject(q) in trained_subjects for q in learnable
        ),
        "learnable_held_out_demonstrated_in_training": sum(
            subject(q) in demonstrated_subjects for q in learnable
        ),
        "learnable_held_out_in_corpus": sum(n > 0 for n in in_corpus),
        "min_corpus_chats_per_learnable": min(in_corpus, default=0),
        "unlearnable_held_out_in_corpus": sum(corpus_subjects[key] > 0 for key in unlearnable),
    }


def run_queued_evaluations() -> None:
    """Evaluations left queued (their message goes out on commit, through the outbox) run here:
    the demo has no worker."""
    from evals.services import run_eval

    for run in EvalRun.objects.filter(status="queued"):
        run_eval(run=run, worker_host="demo-loop")
