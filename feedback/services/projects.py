"""Creating projects, prompts, completions and the items annotators work on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from feedback.models import (
    Completion,
    CompletionSource,
    Item,
    ItemCompletion,
    Project,
    Prompt,
    Split,
    TaskKind,
)

from .validation import clean_messages, clean_text

MIN_RANKED, MAX_RANKED = 3, 8


# json.dumps(..., sort_keys=True), built once: json.dumps builds an encoder per call.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True).encode


def prompt_hash(system: str, messages: list[dict[str, str]]) -> str:
    canonical = _CANONICAL_JSON({"system": system, "messages": messages})
    return hashlib.sha256(canonical.encode()).hexdigest()


# What the project form and the API may change; `annotators` is a relation, set apart.
PROJECT_SETTINGS = (
    "name",
    "description",
    "guidelines",
    "task_kinds",
    "overlap",
    "lease_seconds",
    "gold_rate",
    "reveal_models",
    "strength_optional",
    "show_ai_votes",
    "is_active",
    "label_schema",
)


def project_create(
    *,
    name: str,
    task_kinds: Sequence[str],
    overlap: int = 1,
    lease_seconds: int = 1800,
    guidelines: str = "",
    description: str = "",
    label_schema: list[dict] | None = None,
    gold_rate: float = 0.0,
    reveal_models: bool = False,
    strength_optional: bool = False,
    show_ai_votes: bool = False,
    is_active: bool = True,
    annotators: Iterable[AbstractBaseUser] | None = None,
) -> Project:
    """Every setting is checked by the model (Project.full_clean), as the Django admin does."""
    texts = _project_texts(name=name, guidelines=guidelines, description=description)
    project = Project(
        **texts,
        # A tuple is fine; a bare string is not a list of kinds, and the model says so.
        task_kinds=list(task_kinds) if isinstance(task_kinds, list | tuple) else task_kinds,
        overlap=overlap,
        lease_seconds=lease_seconds,
        label_schema=label_schema or [],
        gold_rate=gold_rate,
        reveal_models=reveal_models,
        strength_optional=strength_optional,
        show_ai_votes=show_ai_votes,
        is_active=is_active,
    )
    return _project_save(project, annotators=annotators)


def project_update(
    *,
    project: Project,
    annotators: Iterable[AbstractBaseUser] | None = None,
    **changes: Any,
) -> Project:
    """Change some settings; an invalid value refuses them all and the row stays as it was."""
    unknown = set(changes) - set(PROJECT_SETTINGS)
    if unknown:
        raise ValidationError(f"Unknown project settings: {', '.join(sorted(unknown))}.")
    changes |= _project_texts(**{f: changes[f] for f in _PROJECT_TEXTS if f in changes})
    before = {field: getattr(project, field) for field in changes}
    for field, value in changes.items():
        setattr(project, field, value)
    try:
        return _project_save(project, annotators=annotators)
    except ValidationError:
        for field, value in before.items():  # the caller's object must not keep refused values
            setattr(project, field, value)
        raise


# The project's free texts, and whether each may be blank. The model stores the name in NFC
# (Project.clean), so that names that look the same are the same name.
_PROJECT_TEXTS = {"name": False, "description": True, "guidelines": True}


def _project_texts(**texts: Any) -> dict[str, str]:
    return {
        field: clean_text(value, field=field, allow_blank=_PROJECT_TEXTS[field])
        for field, value in texts.items()
    }


@transaction.atomic
def _project_save(project: Project, *, annotators: Iterable[AbstractBaseUser] | None) -> Project:
    project.full_clean()
    project.save()
    if annotators is not None:
        project.annotators.set(annotators)
    return project


def prompt_create(
    *,
    project: Project,
    messages: list[dict[str, str]] | str,
    system: str = "",
    split: str = Split.TRAIN,
    tags: Sequence[str] = (),
    source: str = "",
    external_id: str = "",
) -> Prompt:
    """A plain string is a one-turn conversation. Duplicates within a project are refused."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    system, messages = clean_messages(messages, system)
    if split not in Split.values:
        raise ValidationError({"split": f"Split is one of {', '.join(Split.values)}."})
    digest = prompt_hash(system, messages)
    if Prompt.objects.filter(project=project, content_hash=digest).exists():
        raise ValidationError(
            {"messages": ValidationError("This prompt is already in the project.", "duplicate")}
        )
    return Prompt.objects.create(
        project=project,
        system=system,
        messages=messages,
        content_hash=digest,
        split=split,
        tags=[str(tag) for tag in tags],
        source=source,
        external_id=external_id,
    )


def completion_create(
    *,
    prompt: Prompt,
    text: str,
    model_name: str = "",
    source: str = CompletionSource.MODEL,
    author: AbstractBaseUser | None = None,
    generation_params: dict[str, Any] | None = None,
) -> Completion:
    if source not in CompletionSource.values:
        raise ValidationError({"source": f"Source is one of {', '.join(CompletionSource.values)}."})
    return Completion.objects.create(
        prompt=prompt,
        text=clean_text(text, field="completion"),
        model_name=model_name,
        source=source,
        author=author,
        generation_params=generation_params or {},
    )


@transaction.atomic
def item_create(
    *, project: Project, kind: str, prompt: Prompt, completions: Sequence[Completion] = ()
) -> Item:
    """One unit of work. Pairwise takes exactly two completions, ranking 3 to 8, all of `prompt`."""
    if kind not in project.task_kinds:
        raise ValidationError({"kind": f"Project {project.name!r} does not collect {kind} tasks."})
    if prompt.project_id != project.id:
        raise ValidationError({"prompt": "The prompt belongs to another project."})
    expected = {
        TaskKind.DEMONSTRATION: (0, 0),
        TaskKind.PAIRWISE: (2, 2),
        TaskKind.RANKING: (MIN_RANKED, MAX_RANKED),
    }[TaskKind(kind)]
    if not expected[0] <= len(completions) <= expected[1]:
        raise ValidationError(
            {"completions": f"A {kind} task takes {expected[0]} to {expected[1]} completions."}
        )
    if any(c.prompt_id != prompt.id for c in completions):
        raise ValidationError({"completions": "Every completion must answer this prompt."})
    if len({c.id for c in completions}) != len(completions):
        raise ValidationError({"completions": "A completion may appear only once."})
    item = Item.objects.create(project=project, kind=kind, prompt=prompt)
    ItemCompletion.objects.bulk_create(
        ItemCompletion(item=item, completion=c, position=i) for i, c in enumerate(completions)
    )
    return item
