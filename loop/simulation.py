"""Simulated annotators (the AlpacaFarm idea): dry runs of the loop without people.

They work the queue through the same services as humans — leases, validation, idempotent
submits — and every judgement they make is marked ``origin=simulated``, which snapshots leave out
unless asked. Their preferences come from an oracle that can tell a correct toy-task answer
from a wrong one (loop.toytask), blurred by configurable noise and position bias; their
demonstrations come from the task's solver, with some deliberate mistakes.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group

from core.roles import Role
from feedback import services
from feedback.models import Assignment, Origin, Project, TaskKind
from feedback.selectors import task_view
from loop.toytask import is_correct, solve

USERNAME_PREFIX = "simulated-"


@dataclass(frozen=True)
class SimulationConfig:
    # Chance a judgement ignores the oracle and picks at random (in a ranking: that one reply is
    # graded at random).
    noise: float = 0.1
    position_bias: float = 0.0  # chance of simply picking whatever is shown on the left
    seconds: float = 20.0  # median seconds per task (log-normal around it)
    demonstration_error_rate: float = 0.1  # chance a written answer is deliberately wrong
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("noise", "position_bias", "demonstration_error_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.seconds <= 0:
            raise ValueError("seconds must be positive")


def simulated_annotators(count: int) -> list[AbstractBaseUser]:
    """Users named simulated-1…n in the annotator group (created once, unusable passwords)."""
    group, _ = Group.objects.get_or_create(name=Role.ANNOTATOR)
    users = []
    for n in range(1, count + 1):
        user, created = get_user_model().objects.get_or_create(
            username=f"{USERNAME_PREFIX}{n}", defaults={"first_name": "Simulated"}
        )
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        user.groups.add(group)
        users.append(user)
    return users


def _question(assignment: Assignment) -> str:
    return assignment.item.prompt.messages[-1]["content"]


def _score(question: str, text: str, rng: random.Random) -> float:
    verdict = is_correct(question, text)
    # Not a toy question: no oracle, so the simulated annotator has no real preference.
    return rng.random() if verdict is None else float(verdict)


def pairwise_side(
    question: str, left: str, right: str, config: SimulationConfig, rng: random.Random
) -> str:
    """What a simulated annotator answers for two replies as shown: "left", "right", "tie" or
    "both_bad" (bench/active_sampling.py asks it directly, without the queue)."""
    if rng.random() < config.position_bias:
        return "left"
    if rng.random() < config.noise:
        return rng.choice(["left", "right", "tie", "both_bad"])
    left_score, right_score = _score(question, left, rng), _score(question, right, rng)
    if left_score == right_score:
        return "tie" if left_score >= 0.5 else "both_bad"
    return "left" if left_score > right_score else "right"


def _pairwise(assignment: Assignment, config: SimulationConfig, rng: random.Random) -> dict:
    view = task_view(assignment=assignment)
    left, right = view.completions
    a_id = view.item.item_completions.get(position=0).completion_id
    side = pairwise_side(_question(assignment), left.text, right.text, config, rng)
    if side in ("tie", "both_bad"):
        return {"choice": side, "strength": ""}
    chosen = left if side == "left" else right
    return {
        "choice": "a" if chosen.pk == a_id else "b",
        "strength": rng.choice(["clear", "strong"]) if config.noise < 0.5 else "slight",
    }


def _ranking(assignment: Assignment, config: SimulationConfig, rng: random.Random) -> dict | None:
    """Best-first groups: replies graded alike are tied (two wrong answers are equally wrong, so
    the ranking claims no order between them). `noise` is here the chance that one reply is
    misjudged (graded by a coin), so a ranking of many replies is not wholly random when one is;
    with `position_bias` the ranking is the order shown. None (skip) when all are tied: a ranking
    must order something."""
    view = task_view(assignment=assignment)
    completions = list(view.completions)
    if rng.random() < config.position_bias:
        return {"ranking": [[c.pk] for c in completions]}
    question = _question(assignment)
    groups: dict[float, list[int]] = {}
    for completion in completions:
        if rng.random() < config.noise:
            grade = float(rng.random() < 0.5)
        else:
            grade = _score(question, completion.text, rng)
        groups.setdefault(grade, []).append(completion.pk)
    if len(groups) == 1:
        return None
    return {"ranking": [groups[grade] for grade in sorted(groups, reverse=True)]}


def _demonstration(assignment: Assignment, config: SimulationConfig, rng: random.Random) -> dict:
    question = _question(assignment)
    answer = solve(question) or "I would answer this carefully and briefly."
    if rng.random() < config.demonstration_error_rate:
        answer = _wrong(answer, rng)
    return {"text": answer}


def _wrong(answer: str, rng: random.Random) -> str:
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice([-2, -1, 1, 2]))
    return answer[::-1] if len(answer) > 1 else answer + answer


_DECIDE = {
    TaskKind.PAIRWISE: (_pairwise, services.pairwise_submit),
    TaskKind.RANKING: (_ranking, services.ranking_submit),
    TaskKind.DEMONSTRATION: (_demonstration, services.demonstration_submit),
}


def simulate(
    *,
    project: Project,
    annotators: int = 3,
    max_tasks: int | None = None,
    config: SimulationConfig | None = None,
) -> Counter:
    """Work the project's queue round-robin until it is empty (or max_tasks judgements)."""
    config = config or SimulationConfig()
    rng = random.Random(config.seed)
    users = simulated_annotators(annotators)
    done: Counter = Counter()
    active = list(users)
    while active and (max_tasks is None or sum(done.values()) < max_tasks):
        for user in list(active):
            assignment = services.task_next_for_annotator(project=project, annotator=user)
            if assignment is None:
                active.remove(user)
                continue
            decide, submit = _DECIDE[TaskKind(assignment.item.kind)]
            decision = decide(assignment, config, rng)
            if decision is None:
                services.assignment_skip(
                    assignment_id=assignment.pk, annotator=user, reason="Nothing to tell apart."
                )
                done["skipped"] += 1
                continue
            submit(
                assignment_id=assignment.pk,
                annotator=user,
                seconds_spent=round(config.seconds * math.exp(rng.gauss(0, 0.4)), 1),
                origin=Origin.SIMULATED,
                **decision,
            )
            done[assignment.item.kind] += 1
            if max_tasks is not None and sum(done.values()) >= max_tasks:
                break
    return done
