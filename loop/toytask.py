"""The demo's verifiable toy task: questions a program can answer and check.

Four kinds, phrased as in the tiny model's corpus (loop/corpus.py, which generates them):
small arithmetic, sorting a short list of numbers, reversing a word, and facts from a small table.
`solve` reads a question and returns the right answer (None if it is not a toy question);
`is_correct` grades a model's reply leniently, as a person would: "The answer is 102." is right
for "What is 17 × 6?".
"""

from __future__ import annotations

import random
import re

from loop.corpus import FACTS, TASKS

_ARITHMETIC = re.compile(r"(-?\d+)\s*([+\-*×x])\s*(-?\d+)")
_NUMBER = re.compile(r"-?\d+")
_REVERSE = re.compile(
    r"^(?:Reverse the word ([A-Za-z]+)\.?|Spell ([A-Za-z]+) backwards\.?|Reverse: ([A-Za-z]+))$"
)
_SORT = re.compile(r"^Sort[^:]*:\s*([-\d,\s]+)$")
_FACTS = {question: answer for _, question, answer, _ in FACTS}


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


def is_correct(question: str, reply: str) -> bool | None:
    """None when the question is not a toy question."""
    answer = solve(question)
    if answer is None:
        return None
    reply = reply.strip()
    if _SORT.match(question.strip()):
        return _NUMBER.findall(reply) == _NUMBER.findall(answer)
    if answer.lstrip("-").isdigit():
        numbers = _NUMBER.findall(reply)
        return bool(numbers) and numbers[0] == answer
    words = re.findall(r"[A-Za-z]+", reply.lower())
    return answer.lower() in words


def sample(n: int, *, seed: int = 1) -> list[tuple[str, str]]:
    """n (question, answer) pairs drawn like the corpus, but from another seed."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        question, answer = rng.choice(TASKS)(rng)
        pairs.append((question, answer))
    return pairs
