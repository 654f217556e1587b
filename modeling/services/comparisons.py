"""Closing the loop: a new checkpoint's replies, set against its parent's, become the next round's
pairwise tasks.

    comparisons_request(...)   # validates and queues modeling.tasks.generate_comparisons
    comparisons_generate(...)  # what the task runs: sample both models, create the items

Each request carries a batch id that lands in every completion's `generation_params`, so a message
delivered twice (or resumed after a crash) continues the same batch instead of doubling it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from feedback import services as feedback_services
from feedback.models import Completion, CompletionSource, Project, Prompt, Split, TaskKind
from modeling.models import Checkpoint, CheckpointKind

from .checkpoints import require_admin

logger = logging.getLogger(__name__)

MAX_PROMPTS = 500


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0

    def clean(self) -> SamplingParams:
        errors = {}
        if not 1 <= self.max_new_tokens <= 4096:
            errors["max_new_tokens"] = "Between 1 and 4096 new tokens."
        if not 0 <= self.temperature <= 5:
            errors["temperature"] = "Temperature is between 0 and 5."
        if not 0 < self.top_p <= 1:
            errors["top_p"] = "top_p is in (0, 1]."
        if errors:
            raise ValidationError(errors)
        return self


@dataclass
class ComparisonOutcome:
    items: int = 0
    skipped_empty: int = 0
    skipped_identical: int = 0
    already_done: int = 0


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
    requested_by: AbstractBaseUser | None,
) -> str:
    """Queue generation on a GPU worker; returns the batch id. `reference` defaults to the
    checkpoint's parent."""
    from modeling.tasks import generate_comparisons

    require_admin(requested_by, "generate comparisons")
    sampling = (sampling or SamplingParams()).clean()
    reference = _validate(
        checkpoint=checkpoint, project=project, reference=reference, n_prompts=n_prompts
    )
    batch = uuid.uuid4().hex
    generate_comparisons.apply_async_on_commit(
        (checkpoint.pk, project.pk, reference.pk, n_prompts),
        kwargs={"batch": batch, **asdict(sampling)},
    )
    return batch


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


def _conversation(prompt: Prompt) -> list[dict[str, str]]:
    system = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return system + list(prompt.messages)


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
    from modeling.ml import generate

    reference = _validate(
        checkpoint=checkpoint, project=project, reference=reference, n_prompts=n_prompts
    )
    prompts = _pick_prompts(project, checkpoint, batch, n_prompts)
    outcome = ComparisonOutcome(already_done=n_prompts - len(prompts))
    if not prompts:
        return outcome
    conversations = [_conversation(p) for p in prompts]
    options = {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": sampling.seed,
    }
    new_texts = generate(checkpoint.load_path(), conversations, **options)
    reference_texts = generate(reference.load_path(), conversations, **options)
    for prompt, (new,), (old,) in zip(prompts, new_texts, reference_texts, strict=True):
        new, old = _storable(new), _storable(old)
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


def _storable(text: str) -> str:
    # Model output is untrusted like any text, but a NUL or an over-long reply should cost one
    # character or the tail, not the whole batch.
    return text.replace("\x00", "")[: settings.VEREDICTO_MAX_TEXT_CHARS]


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
