"""Bulk changes from the records browser: mark gold, move to a split, delete. Admins only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from core.roles import require_admin
from feedback.models import Item, Origin, Project, Prompt, Split, TaskKind

from .review import item_mark_gold

MAX_BULK = 1000


def _items(project: Project, item_ids: Collection[int]):
    if not item_ids:
        raise ValidationError("Tick at least one record.")
    if len(item_ids) > MAX_BULK:
        raise ValidationError(f"At most {MAX_BULK} records at a time.")
    return Item.objects.filter(project=project, pk__in=item_ids)


def agreed_answer(item: Item) -> dict | None:
    """The adjudicated answer, else the one every judgement gave (AI votes aside); None when
    they split."""
    adjudication = item.adjudications.first()
    if item.kind == TaskKind.PAIRWISE:
        if adjudication and adjudication.choice:
            return {"choice": adjudication.choice}
        # A model's vote is no answer to measure people by (feedback.services.assist).
        votes = item.pairwisejudgement_set.exclude(origin=Origin.AI)
        choices = Counter(votes.values_list("choice", flat=True))
        return {"choice": next(iter(choices))} if len(choices) == 1 else None
    if item.kind == TaskKind.RANKING:
        if adjudication and adjudication.ranking:
            return {"ranking": adjudication.ranking}
        rankings = {repr(r) for r in item.rankingjudgement_set.values_list("ranking", flat=True)}
        if len(rankings) == 1:
            return {"ranking": item.rankingjudgement_set.first().ranking}
    return None


def items_mark_gold(
    *, project: Project, item_ids: Collection[int], admin: AbstractBaseUser
) -> tuple[int, int]:
    """Mark each item gold with its agreed answer. Returns (marked, skipped): demonstrations and
    items whose judgements split (and were not adjudicated) are skipped."""
    require_admin(admin, "mark gold items")
    marked = skipped = 0
    for item in _items(project, item_ids):
        answer = agreed_answer(item)
        if answer is None:
            skipped += 1
            continue
        item_mark_gold(item_id=item.pk, admin=admin, answer=answer)
        marked += 1
    return marked, skipped


def items_set_split(
    *, project: Project, item_ids: Collection[int], split: str, admin: AbstractBaseUser
) -> int:
    """The split belongs to the prompt: every item on the same prompt moves with it, so a
    prompt is never in both train and test. Returns how many prompts moved."""
    require_admin(admin, "change splits")
    if split not in Split.values:
        raise ValidationError({"split": f"Split is one of {', '.join(Split.values)}."})
    prompt_ids = _items(project, item_ids).values("prompt_id")
    return Prompt.objects.filter(project=project, pk__in=prompt_ids).update(split=split)


@transaction.atomic
def items_delete(*, project: Project, item_ids: Collection[int], admin: AbstractBaseUser) -> int:
    """Delete items with their assignments and judgements. Snapshots already built keep their
    files: they are immutable exports. Returns how many items went."""
    require_admin(admin, "delete records")
    items = _items(project, item_ids)
    count = items.count()
    items.delete()
    return count
