"""The demo's measurements: each policy on the held-out prompts, each stage against its parent,
and the reward model judged by what it would be used for.

Every policy answers the same held-out prompts twice: greedily (the task score, right or wrong
per prompt) and eval_samples times at T=1 (sampled accuracy: each prompt's share of right
samples). A stage is compared with its parent on those same prompts, paired
(evals.ml.paired): a 95% interval on the mean per-prompt difference, and McNemar's exact test on
the greedy verdicts. Learnable kinds (their facts and words are in the pretraining corpus) and
unlearnable ones (held-out sums and lists are not) are reported apart, then together.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from evals.ml.definitions import TOY_TASK
from evals.ml.paired import mcnemar_p, paired_difference
from evals.models import Suite
from feedback.models import DatasetSnapshot, Project, Prompt, Split
from loop.toytask import is_correct, subject
from loop.toytask import kind as toy_kind
from modeling.models import Checkpoint

from .config import LEARNABLE_KINDS, DemoScale
from .steps import NO_DEMONSTRATION, conversation


@dataclass
class HeldOut:
    """The held-out prompts, in a fixed order every policy is measured on."""

    prompts: list[Prompt]
    # The facts and words (loop.toytask.subject) training asks without a demonstration: only
    # rankings of the policy's samples and the online stage teach those.
    undemonstrated: frozenset = frozenset()

    @classmethod
    def of(cls, project: Project) -> HeldOut:
        prompts = Prompt.objects.filter(project=project).order_by("id")
        return cls(
            [p for p in prompts if p.split == Split.TEST],
            frozenset(
                subject(p.messages[-1]["content"])
                for p in prompts
                if p.split == Split.TRAIN and NO_DEMONSTRATION in p.tags
            ),
        )

    @property
    def questions(self) -> list[str]:
        return [p.messages[-1]["content"] for p in self.prompts]

    def groups(self) -> dict[str, list[int]]:
        """Prompt indexes per group: the learnable kinds (and, when training leaves some
        without a demonstration, those with one and those without), the unlearnable, all."""
        kinds = [toy_kind(q) for q in self.questions]
        learnable = [i for i, k in enumerate(kinds) if k in LEARNABLE_KINDS]
        groups = {"learnable": learnable}
        if self.undemonstrated:
            bare = [i for i in learnable if subject(self.questions[i]) in self.undemonstrated]
            groups["demonstrated"] = [i for i in learnable if i not in bare]
            groups["undemonstrated"] = bare
        groups["unlearnable"] = [i for i, k in enumerate(kinds) if k not in LEARNABLE_KINDS]
        groups["all"] = list(range(len(kinds)))
        return groups


@dataclass
class PolicyScores:
    greedy: list[bool]  # per held-out prompt
    sampled: list[float]  # per held-out prompt: share of right samples
    samples: list[list[str]]  # the samples themselves (best-of-n reuses them)
    replies: list[str] = field(default_factory=list)  # the greedy replies


def measure_policy(checkpoint: Checkpoint, held_out: HeldOut, config: DemoScale) -> PolicyScores:
    from modeling.ml import generate

    conversations = [conversation(p) for p in held_out.prompts]
    options = {"max_new_tokens": config.max_new_tokens, "batch_size": 32}
    greedy = generate(checkpoint.load_path(), conversations, temperature=0, **options)
    samples = generate(
        checkpoint.load_path(),
        conversations,
        n=config.eval_samples,
        temperature=1.0,
        seed=config.seed + 1000,
        **options,
    )
    questions = held_out.questions
    return PolicyScores(
        greedy=[bool(is_correct(q, r[0])) for q, r in zip(questions, greedy, strict=True)],
        sampled=[
            sum(bool(is_correct(q, s)) for s in texts) / len(texts)
            for q, texts in zip(questions, samples, strict=True)
        ],
        samples=samples,
        replies=[r[0] for r in greedy],
    )


def record_scores(checkpoint_id: int, scores: PolicyScores, held_out: HeldOut) -> None:
    """The task score and its companions as the checkpoint's evaluation run (TOY_TASK), with
    each held-out prompt's greedy reply and verdict: the dashboard charts it, Compare pairs it."""
    from evals.services import eval_run_record, mean_of, proportion_metric
    from evals.services.suites import Outcome

    learnable = held_out.groups()["learnable"]
    metrics = [
        proportion_metric("task_score", scores.greedy),
        proportion_metric("task_score/learnable", [scores.greedy[i] for i in learnable]),
        mean_of("sampled_accuracy", scores.sampled),
        mean_of("sampled_accuracy/learnable", [scores.sampled[i] for i in learnable]),
    ]
    samples = [
        {"position": i, "prompt": question, "output": reply, "correct": right}
        for i, (question, reply, right) in enumerate(
            zip(held_out.questions, scores.replies, scores.greedy, strict=True)
        )
    ]
    eval_run_record(
        checkpoint=Checkpoint.objects.get(pk=checkpoint_id),
        suite=Suite.GENERATIVE,
        task=TOY_TASK,
        outcome=Outcome(metrics=metrics, samples=samples),
        params={"prompts": len(samples), "measured_by": "demo_loop"},
        host="demo_loop",
    )


def by_kind(scores: PolicyScores, held_out: HeldOut) -> tuple[dict[str, str], dict[str, float]]:
    """Greedy "right/asked" and sampled accuracy per kind of question."""
    greedy: dict[str, list[int]] = {}
    sampled: dict[str, list[float]] = {}
    for question, right, share in zip(
        held_out.questions, scores.greedy, scores.sampled, strict=True
    ):
        greedy.setdefault(toy_kind(question), []).append(right)
        sampled.setdefault(toy_kind(question), []).append(share)
    return (
        {k: f"{sum(v)}/{len(v)}" for k, v in sorted(greedy.items())},
        {k: sum(v) / len(v) for k, v in sorted(sampled.items())},
    )


def compare(
    role: str, parent: str, scores: dict[str, PolicyScores], held_out: HeldOut
) -> dict[str, Any]:
    """`role` against `parent` on the same held-out prompts, by group."""
    groups = {}
    for group, index in held_out.groups().items():
        if len(index) < 2:
            continue
        before, after = scores[parent], scores[role]
        greedy_before = [before.greedy[i] for i in index]
        greedy_after = [after.greedy[i] for i in index]
        greedy = paired_difference(
            [float(x) for x in greedy_before], [float(x) for x in greedy_after]
        )
        sampled = paired_difference(
            [before.sampled[i] for i in index], [after.sampled[i] for i in index]
        )
        groups[group] = {
            "n": len(index),
            "greedy": str(greedy),
            "greedy_ci": (greedy.mean, greedy.low, greedy.high),
            "mcnemar_p": mcnemar_p(greedy_before, greedy_after),
            "sampled": str(sampled),
            "sampled_ci": (sampled.mean, sampled.low, sampled.high),
        }
    return {"role": role, "parent": parent, "groups": groups}


def judge_reward_model(
    reward: Checkpoint,
    preference: DatasetSnapshot,
    policy_role: str,
    policy: PolicyScores,
    held_out: HeldOut,
) -> dict[str, Any]:
    """What the reward model is good for, measured:

    - accuracy on the preference snapshot's held-out pairs (RewardBench's convention: a tie is
      wrong) and calibration of its Bradley-Terry probability sigmoid(r_chosen - r_rejected):
      expected calibration error over 5 bins of confidence in [0.5, 1] (Guo et al. 2017), and the
      Brier score of that probability for "chosen is preferred";
    - best-of-n: on the held-out prompts, the policy's n samples (the ones sampled accuracy
      counts), the one the reward model scores highest against a random one (whose expected
      correctness is the sampled accuracy), paired. The only use PPO would make of it is to
      push the policy towards its best-of-n, so PPO runs only when this is above zero.
    """
    from evals.ml.reward import reward_scores
    from modeling.ml import load_reward_model, load_tokenizer

    model = load_reward_model(reward.load_path())
    tokenizer = load_tokenizer(reward.load_path())
    pairs = []
    test_path = preference.path() / "test.jsonl"
    if test_path.is_file():
        with open(test_path, encoding="utf-8") as rows:
            pairs = [json.loads(line) for line in rows if line.strip()]
    rows = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
    scores = reward_scores(model, tokenizer, rows, batch_size=32) if rows else []
    margins = [c - r for c, r in zip(scores[: len(pairs)], scores[len(pairs) :], strict=True)]
    probability = [1 / (1 + math.exp(-m)) for m in margins]
    accuracy = sum(m > 0 for m in margins) / len(margins) if margins else float("nan")
    brier = sum((1 - p) ** 2 for p in probability) / len(probability) if margins else float("nan")
    ece = expected_calibration_error(margins)

    candidates = [
        [*conversation(prompt), {"role": "assistant", "content": text}]
        for prompt, texts in zip(held_out.prompts, policy.samples, strict=True)
        for text in texts
    ]
    flat = reward_scores(model, tokenizer, candidates, batch_size=64)
    n = len(policy.samples[0]) if policy.samples else 0
    best = []
    for i, (question, texts) in enumerate(zip(held_out.questions, policy.samples, strict=True)):
        mine = flat[i * n : (i + 1) * n]
        best.append(float(bool(is_correct(question, texts[mine.index(max(mine))]))))
    result = {"pairs": len(pairs), "accuracy": accuracy, "ece": ece, "brier": brier}
    result |= {"best_of": n, "policy": policy_role}
    for group, index in held_out.groups().items():
        if group not in ("learnable", "all") or len(index) < 2:
            continue
        diff = paired_difference([policy.sampled[i] for i in index], [best[i] for i in index])
        key = "best_of_n" if group == "all" else f"best_of_n_{group}"
        result[key] = str(diff)
        result[f"{key}_ci"] = (diff.mean, diff.low, diff.high)
    return result


def expected_calibration_error(margins: list[float], bins: int = 5) -> float:
    """ECE of the reward model's pairwise verdicts: confidence sigmoid(|margin|) in [0.5, 1]
    against the share of right verdicts (margin > 0), weighted by bin size."""
    if not margins:
        return float("nan")
    filled: dict[int, list[tuple[float, float]]] = {}
    for margin in margins:
        confidence = 1 / (1 + math.exp(-abs(margin)))
        index = min(int((confidence - 0.5) * 2 * bins), bins - 1)
        filled.setdefault(index, []).append((confidence, float(margin > 0)))
    return sum(
        len(members)
        / len(margins)
        * abs(sum(c for c, _ in members) / len(members) - sum(r for _, r in members) / len(members))
        for members in filled.values()
    )
