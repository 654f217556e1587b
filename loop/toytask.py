"""The demo's verifiable toy task: questions a program can answer and check.

Four kinds, phrased as in the tiny model's corpus (loop/corpus.py, which generates them):
small arithmetic, sorting a short list of numbers, reversing a word, and facts from a small table
(each fact in any of FACT_PHRASINGS: "Tell me: What color is snow?" is the same fact).
`solve` reads a question and returns the right answer (None if it is not a toy question);
`is_correct` grades a model's reply strictly: the reply must *be* the answer, up to case,
surrounding whitespace, a final full stop and how list items are separated. "The answer is 102."
is wrong for "What is 17 × 6?", and so is "yob tac god" for "Reverse the word cat.": a lenient
checker (any right word anywhere) is a reward an RL policy learns to game by listing candidates.
The demonstrations and the corpus give bare answers, so strictness costs a right habit nothing.
"""

from __future__ import annotations

import random
import re

from loop.corpus import FACT_PHRASINGS, FACT_TABLE, TASKS

_ARITHMETIC = re.compile(r"(-?\d+)\s*([+\-*×x])\s*(-?\d+)")
_NUMBER = re.compile(r"-?\d+")
_REVERSE = re.compile(
    r"^(?:Reverse the word ([A-Za-z]+)\.?|Spell ([A-Za-z]+) backwards\.?|Reverse: ([A-Za-z]+))$"
)
_SORT = re.compile(r"^Sort[^:]*:\s*([-\d,\s]+)$")
_FACT_QUESTIONS = {
    phrasing.format(q=question): question
    for _, question, _, _ in FACT_TABLE
    for phrasing in FACT_PHRASINGS
}
_FACTS = {
    phrasing.format(q=question): answer
    for _, question, answer, _ in FACT_TABLE
    for phrasing in FACT_PHRASINGS
}


def solve(question: str) -> str | None:
    question = question.strip()
    if question in _FACTS:
        return _FACTS[question]
    if match := _SORT.match(question):
        numbers = [int(n) for n in _NUMBER.findall(match.group(1))]
        return ", ".join(map(str, sorted(numbers))) if numbers else None
    if match := _REVERSE.match(question):
        word = next(group for group in match.groups() if group)
        return word[::-1]
    if match := _ARITHMETIC.search(question):
        a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
        return str({"+": a + b, "-": a - b}.get(op, a * b))
    return None


def kind(question: str) -> str | None:
    """Which of the four toy tasks a question is (None if none): scores are reported by kind."""
    question = question.strip()
    if question in _FACTS:
        return "facts"
    if _SORT.match(question):
        return "sorting"
    if _REVERSE.match(question):
        return "reversing"
    if _ARITHMETIC.search(question):
        return "arithmetic"
    return None


def subject(question: str) -> tuple | None:
    """What a question is about, whatever its phrasing: the word to reverse, the fact (its
    table question), or the operands or list (loop.corpus.task_key)."""
    from loop.corpus import task_key

    question = question.strip()
    found = kind(question)
    if found == "reversing":
        return ("reversing", (solve(question) or "")[::-1])
    if found == "facts":
        return ("facts", _FACT_QUESTIONS[question])
    return task_key(question)


def normalise(text: str) -> str:
    """The form of an answer that grading ignores: case, outer whitespace, one final full stop,
    and whether list items are separated by commas, spaces or both ("1,2, 3" == "1 2 3")."""
    text = text.strip().lower().removesuffix(".").strip()
    return " ".join(part for part in re.split(r"[\s,]+", text) if part)


def is_correct(question: str, reply: str) -> bool | None:
    """Whether the reply is the answer (see normalise); None when the question is not a toy
    question."""
    answer = solve(question)
    if answer is None:
        return None
    return normalise(reply) == normalise(answer)


def sample(n: int, *, seed: int = 1) -> list[tuple[str, str]]:
    """n (question, answer) pairs drawn like the corpus, but from another seed."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        question, answer = rng.choice(TASKS)(rng)
        pairs.append((question, answer))
    return pairs


def toy_task_reward(*, prompts, completions, **_) -> list[float | None]:
    """The strict checker as a verifiable reward for GRPO/RLOO (registered as `toy_task` by
    LoopConfig.ready): 1.0 right, 0.0 wrong, None for a prompt that is not a toy question (TRL
    leaves it out of the weighted sum)."""
    from modeling.ml.rewards import completion_text, prompt_text

    verdicts = (
        is_correct(prompt_text(prompt), completion_text(completion))
        for prompt, completion in zip(prompts, completions, strict=True)
    )
    return [None if verdict is None else float(verdict) for verdict in verdicts]
