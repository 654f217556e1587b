"""Closing the loop: a new checkpoint's replies, set against its parent's, become the next round's
pairwise tasks.

    comparisons_request(...)     # validates, records a ComparisonBatch, queues loop.tasks
    comparison_batch_run(batch)  # what the task runs: claim, sample both models, create items

A batch is background work with the shared lifecycle (jobs.services): claimed once, so a message
delivered twice does nothing. Its batch id lands in every completion's `generation_params`, so
generating again for the same batch continues it instead of doubling it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from core.roles import require_admin
from core.text import storable_text
from feedback import services as feedback_services
from feedback.models import Completion, CompletionSource, Project, Prompt, Split, TaskKind
from jobs.models import Status
from jobs.services import Heartbeat, failure_reason, work_claim, work_enqueue, work_finish
from loop.active import Strategy, ensemble_validate, items_prioritise, waiting_pairwise
from loop.models import ComparisonBatch
from modeling.models import Checkpoint, CheckpointKind
from modeling.sampling import SamplingParams

logger = logging.getLogger(__name__)

MAX_PROMPTS = 500


@dataclass
class ComparisonOutcome:
    items: int = 0
    skipped_empty: int = 0
    skipped_identical: int = 0
    already_done: int = 0
    engine: str = ""  # what sampled the replies: "vllm" or "hf" (modeling.ml.sampling_engine)
    prioritised: int = 0  # waiting pairwise items given a priority by active sampling


def _validate(
    *, checkpoint: Checkpoint, project: Project, reference: Checkpoint | None, n_prompts: int
) -> Checkpoint:
    errors: dict[str, str] = {}
    if checkpoint.kind != CheckpointKind.POLICY:
        errors["checkpoint"] = f"{checkpoint.name} is a {checkpoint.kind} model; it cannot reply."
    if TaskKind.PAIRWISE not in project.task_kinds:
        errors["project"] = f"Project {project.name!r} does not collect pairwise comparisons."
    reference = reference or checkpoint.parent
    if reference is None:
        errors["reference"] = "A base model has no parent: choose a checkpoint to compare with."
    elif reference.pk == checkpoint.pk:
        errors["reference"] = "Compare the checkpoint with a different model."
    elif reference.kind != CheckpointKind.POLICY:
        errors["reference"] = f"{reference.name} is a {reference.kind} model; it cannot reply."
    if not 1 <= n_prompts <= MAX_PROMPTS:
        errors["n_prompts"] = f"Between 1 and {MAX_PROMPTS} prompts."
    if errors:
        raise ValidationError(errors)
    return reference


def comparisons_request(
    *,
    checkpoint: Checkpoint,
    project: Project,
    reference: Checkpoint | None = None,
    n_prompts: int = 20,
    sampling: SamplingParams | None = None,
    strategy: str = Strategy.RANDOM,
    reward_models: Sequence[Checkpoint] = (),
    requested_by: AbstractBaseUser | None,
) -> ComparisonBatch:
    """Record a batch and queue it for a GPU worker. `reference` defaults to the checkpoint's
    parent. With a `strategy` other than random, the worker then orders the project's waiting
    pairwise items by what the `reward_models` ensemble is least sure of (loop.active)."""
    require_admin(requested_by, "generate comparisons")
    sampling = (sampling or SamplingParams()).clean()
    ensemble_validate(strategy=strategy, reward_models=reward_models)
    reference = _validate(
        checkpoint=checkpoint, project=project, reference=reference, n_prompts=n_prompts
    )
    batch = ComparisonBatch.objects.create(
        checkpoint=checkpoint,
        reference=reference,
        project=project,
        n_prompts=n_prompts,
        sampling=asdict(sampling),
        batch=uuid.uuid4().hex,
        strategy=strategy,
        requested_by=requested_by,
    )
    if strategy != Strategy.RANDOM:
        batch.reward_models.set(reward_models)
    work_enqueue(batch)
    return batch


def comparison_batch_run(*, batch: ComparisonBatch, worker_host: str = "") -> ComparisonBatch:
    """Claim a queued batch and generate it in this process (tests); workers launch the same
    work in its own process (loop.tasks.generate_comparisons)."""
    if not work_claim(ComparisonBatch, pk=batch.pk, worker_host=worker_host):
        return ComparisonBatch.objects.get(pk=batch.pk)
    with Heartbeat(ComparisonBatch, batch.pk):
        return comparison_batch_execute(batch)


def comparison_batch_execute(batch: ComparisonBatch) -> ComparisonBatch:
    """Generate a claimed batch: what jobs/entrypoint.py runs. The outcome, or the reason it
    failed, is written to the row, never raised."""
    batch = ComparisonBatch.objects.select_related("checkpoint", "reference", "project").get(
        pk=batch.pk
    )
    try:
        outcome = comparisons_generate(
            checkpoint=batch.checkpoint,
            project=batch.project,
            reference=batch.reference,
            n_prompts=batch.n_prompts,
            batch=batch.batch,
            sampling=SamplingParams(**batch.sampling),
        )
        # Only a model-based strategy rewrites priorities: a random batch leaves those an
        # earlier batch set as they are.
        if batch.strategy != Strategy.RANDOM and waiting_pairwise(batch.project).exists():
            outcome.prioritised = items_prioritise(
                project=batch.project,
                reward_models=list(batch.reward_models.all()),
                strategy=batch.strategy,
            ).items
    except Exception as exc:
        logger.warning("Comparison batch %s failed", batch.pk, exc_info=True)
        work_finish(ComparisonBatch, pk=batch.pk, status=Status.FAILED, error=failure_reason(exc))
        return ComparisonBatch.objects.get(pk=batch.pk)
    work_finish(ComparisonBatch, pk=batch.pk, status=Status.SUCCEEDED, outcome=asdict(outcome))
    return ComparisonBatch.objects.get(pk=batch.pk)


def _pick_prompts(project: Project, checkpoint: Checkpoint, batch: str, n: int) -> list[Prompt]:
    """Train prompts this checkpoint has not yet answered in a comparison, oldest first; a resumed
    batch counts the prompts it already covered. Held-out prompts stay out: their labels could
    only ever land in a snapshot's test split, and the next round is meant to be trained on."""
    answered = Completion.objects.filter(
        prompt__project=project,
        source=CompletionSource.CHECKPOINT,
        generation_params__checkpoint_id=checkpoint.pk,
    )
    done_in_batch = answered.filter(generation_params__batch=batch).values("prompt_id").distinct()
    remaining = n - done_in_batch.count()
    if remaining <= 0:
        return []
    return list(
        Prompt.objects.filter(project=project, split=Split.TRAIN)
        .exclude(pk__in=answered.values("prompt_id"))
        .order_by("id")[:remaining]
    )


def comparisons_generate(
    *,
    checkpoint: Checkpoint,
    project: Project,
    reference: Checkpoint,
    n_prompts: int,
    batch: str,
    sampling: SamplingParams,
) -> ComparisonOutcome:
    """Sample one reply from each model per prompt and create a pairwise item for each pair
    (A = the new checkpoint; annotators see sides shuffled anyway). Empty or identical pairs are
    skipped: nobody can judge them."""
    from modeling.ml import generate, sampling_engine

    reference = _validate(
        checkpoint=checkpoint, project=project, reference=reference, n_prompts=n_prompts
    )
    prompts = _pick_prompts(project, checkpoint, batch, n_prompts)
    outcome = ComparisonOutcome(already_done=n_prompts - len(prompts))
    if not prompts:
        return outcome
    conversations = [p.conversation() for p in prompts]
    options = {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": sampling.seed,
    }
    outcome.engine = sampling_engine()
    new_texts = generate(checkpoint.load_path(), conversations, **options)
    reference_texts = generate(reference.load_path(), conversations, **options)
    for prompt, (new,), (old,) in zip(prompts, new_texts, reference_texts, strict=True):
        new, old = storable_text(new), storable_text(old)
        if not new.strip() or not old.strip():
            outcome.skipped_empty += 1
            continue
        if new.strip() == old.strip():
            outcome.skipped_identical += 1
            continue
        with transaction.atomic():
            completions = [
                _completion(prompt, text, model, batch, sampling)
                for model, text in ((checkpoint, new), (reference, old))
            ]
            feedback_services.item_create(
                project=project, kind=TaskKind.PAIRWISE, prompt=prompt, completions=completions
            )
        outcome.items += 1
    logger.info("Comparisons %s for %s vs %s: %s", batch, checkpoint, reference, outcome)
    return outcome


def _completion(
    prompt: Prompt, text: str, model: Checkpoint, batch: str, sampling: SamplingParams
) -> Completion:
    params: dict[str, Any] = {
        "checkpoint_id": model.pk,
        "checkpoint_name": model.display_name,
        "batch": batch,
        **asdict(sampling),
    }
    return feedback_services.completion_create(
        prompt=prompt,
        text=text,
        model_name=model.display_name,
        source=CompletionSource.CHECKPOINT,
        generation_params=params,
    )
