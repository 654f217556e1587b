"""Active sampling: label first the comparisons the reward model is least sure of.

An ensemble of reward checkpoints (two or more, trained with different seeds on the same labels)
scores both replies of every pairwise item still waiting for judgements, and each item's
`priority` (feedback.models.Item; the queue serves higher first) is set from the margins
m_k = r_k(A) − r_k(B) of the K members:

    disagreement   std_k σ(m_k)                    the members disagree on which side wins:
                                                   what the labels so far leave open
    uncertainty    0.5 − |σ(mean_k m_k) − 0.5|     the ensemble's P(A ≻ B) is near a coin flip
    random         0 for every item                the plain first-come order

P(A ≻ B) = σ(r_A − r_B) is the Bradley-Terry model TRL's RewardTrainer fits (its loss is
−log σ(r_chosen − r_rejected)). Rows are scored as the trainer builds them (evals.ml.reward).

Disagreement is the spread of the members' probabilities, not of their raw margins: a margin's
spread grows with its size, so it ranks first the pairs every member gets right by a wide but
different margin (a right answer against "I do not know."). bench/active_sampling.py measured
both: the margins' std labelled mostly such easy and both-wrong pairs and ended below random;
the probabilities' std went to the hard pairs (README, "Active sampling").

    items_prioritise(project=..., reward_models=[rm1, rm2], strategy="disagreement")

runs in this process (the `prioritise_items` command); a comparison batch with a strategy runs it
on its GPU worker once its items exist (loop.comparisons).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import QuerySet

from feedback.models import Item, Project, TaskKind
from modeling.models import Checkpoint, CheckpointKind

logger = logging.getLogger(__name__)

# Rows of priorities written per statement (and per transaction): the queue locks item rows
# too, so a long update must not hold thousands of them at once.
WRITE_CHUNK = 500


class Strategy(models.TextChoices):
    RANDOM = "random", "Random (first come, first served)"
    UNCERTAINTY = "uncertainty", "Uncertainty: P(A ≻ B) nearest 0.5"
    DISAGREEMENT = "disagreement", "Disagreement: the ensemble's members differ on P(A ≻ B)"


@dataclass
class PriorityOutcome:
    strategy: str
    items: int  # pairwise items whose priority was set
    members: int  # reward models in the ensemble (0 for random)
    top: float  # the highest priority set


def waiting_pairwise(project: Project) -> QuerySet[Item]:
    """The project's pairwise items that still need judgements (gold items are not ordinary
    work: the queue mixes them in by their own rate)."""
    return Item.objects.filter(
        project=project,
        kind=TaskKind.PAIRWISE,
        is_gold=False,
        submitted_count__lt=project.overlap,
    )


def ensemble_validate(*, strategy: str, reward_models: Sequence[Checkpoint]) -> None:
    """Raise ValidationError (keys `strategy`, `reward_models`) unless the strategy is known and,
    for a model-based one, the ensemble has at least two distinct reward models."""
    if strategy not in Strategy.values:
        raise ValidationError({"strategy": f"Strategy is one of {', '.join(Strategy.values)}."})
    if strategy == Strategy.RANDOM:
        return
    wrong = [c.name for c in reward_models if c.kind != CheckpointKind.REWARD]
    if wrong:
        raise ValidationError(
            {"reward_models": f"Not reward models: {', '.join(wrong)}. Choose reward checkpoints."}
        )
    if len({c.pk for c in reward_models}) < 2:
        raise ValidationError(
            {
                "reward_models": (
                    f"The {strategy} strategy needs an ensemble: at least two reward models "
                    "trained with different seeds."
                )
            }
        )


def items_prioritise(
    *,
    project: Project,
    reward_models: Sequence[Checkpoint],
    strategy: str,
    batch_size: int = 16,
) -> PriorityOutcome:
    """Set the priority of every waiting pairwise item of `project` by `strategy` (see the module
    docstring). Raises ValidationError for an unknown strategy, fewer than two reward models, a
    model that is not a reward model, or a project with no pairwise items waiting."""
    ensemble_validate(strategy=strategy, reward_models=reward_models)
    waiting = waiting_pairwise(project)
    if not waiting.exists():
        raise ValidationError(
            {"project": f"Project {project.name!r} has no pairwise items waiting for judgements."}
        )
    if strategy == Strategy.RANDOM:
        count = waiting.update(priority=0.0)
        return PriorityOutcome(strategy=strategy, items=count, members=0, top=0.0)

    items = list(waiting.select_related("prompt").prefetch_related("item_completions__completion"))
    margins = [_margins(member, items, batch_size=batch_size) for member in reward_models]
    for item, item_margins in zip(items, zip(*margins, strict=True), strict=True):
        item.priority = pair_priority(strategy, item_margins)
    for start in range(0, len(items), WRITE_CHUNK):
        Item.objects.bulk_update(items[start : start + WRITE_CHUNK], ["priority"])
    top = max(item.priority for item in items)
    logger.info("Prioritised %d items of %s by %s (top %.4f)", len(items), project, strategy, top)
    return PriorityOutcome(strategy=strategy, items=len(items), members=len(margins), top=top)


def pair_priority(strategy: str, margins: Sequence[float]) -> float:
    """An item's priority from its members' margins r_k(A) − r_k(B): higher is labelled first."""
    n = len(margins)
    mean = sum(margins) / n
    if strategy == Strategy.DISAGREEMENT:
        wins = [_sigmoid(m) for m in margins]
        mean_win = sum(wins) / n
        return math.sqrt(sum((p - mean_win) ** 2 for p in wins) / n)
    if strategy == Strategy.UNCERTAINTY:
        return 0.5 - abs(_sigmoid(mean) - 0.5)
    raise ValueError(f"No priority for strategy {strategy!r}")


def _sigmoid(x: float) -> float:
    # Written both ways so a large margin of either sign cannot overflow exp().
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    z = math.exp(x)
    return z / (1 + z)


def _margins(member: Checkpoint, items: list[Item], *, batch_size: int) -> list[float]:
    """r(A) − r(B) of each item by one reward model, loaded as a reward evaluation loads it (on
    the GPU in bf16 where there is one) and released on return."""
    from evals.ml.reward import reward_scores
    from evals.services.suites import free_memory, load_reward

    try:
        model, tokenizer = load_reward(member)
    except (OSError, ValueError) as exc:  # EvalInputError is a ValueError
        raise ValidationError(
            {"reward_models": f"{member.name} does not load as a reward model: {exc}"}
        ) from exc
    rows = []
    for item in items:
        conversation = item.prompt.conversation()
        rows += [[*conversation, {"role": "assistant", "content": c.text}] for c in _pair(item)]
    scores = reward_scores(model, tokenizer, rows, batch_size=batch_size)
    del model
    free_memory()
    if not all(math.isfinite(score) for score in scores):
        # A NaN priority would sort above every number on PostgreSQL: refuse, change nothing.
        raise ValidationError(
            {"reward_models": f"{member.name} gave scores that are not numbers (NaN or inf)."}
        )
    return [a - b for a, b in zip(scores[::2], scores[1::2], strict=True)]


def _pair(item: Item):
    """Side A (position 0) and side B of a pairwise item."""
    return [link.completion for link in item.item_completions.all()]
