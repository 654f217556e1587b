import pytest

from loop.corpus import TASKS
from loop.toytask import is_correct, kind, sample, solve


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is 17 × 6?", "102"),
        ("Compute 40 - 15.", "25"),
        ("3 * 4 = ?", "12"),
        ("Sort these numbers from smallest to largest: 42, 7, 19, 3", "3, 7, 19, 42"),
        ("Sort: 5, 1", "1, 5"),
        ("Reverse the word garden.", "nedrag"),
        ("Spell cat backwards.", "tac"),
        ("What is the capital of Peru?", "Lima"),
    ],
)
def test_solver_answers_the_toy_questions(question, answer):
    assert solve(question) == answer


def test_every_generated_question_is_solved_correctly():
    import random

    rng = random.Random(7)
    for _ in range(500):
        question, answer = rng.choice(TASKS)(rng)
        assert solve(question) == answer, question


def test_grading_accepts_only_the_answer_up_to_form():
    assert is_correct("What is 17 × 6?", "102")
    assert is_correct("What is 17 × 6?", " 102. ")
    assert not is_correct("What is 17 × 6?", "96")
    assert is_correct("Sort: 3, 1, 2", "1, 2, 3")
    assert is_correct("Sort: 3, 1, 2", "1 2 3")
    assert is_correct("Sort: 3, 1, 2", "1,2,3.")
    assert not is_correct("Sort: 3, 1, 2", "3, 2, 1")
    assert is_correct("What is the capital of Peru?", "lima")
    assert not is_correct("What is the capital of Peru?", "Lisbon")
    assert is_correct("Explain recursion.", "anything") is None


@pytest.mark.parametrize(
    ("question", "reply"),
    [
        # A right word among wrong ones: what a lenient checker passed, and RL would learn.
        ("Reverse the word cat.", "yob tac god"),
        ("Reverse the word cat.", "tac tac"),
        ("What is 17 × 6?", "The answer is 102."),
        ("What is 17 × 6?", "102 or 96"),
        ("What is 17 × 6?", "1020"),
        ("Sort: 3, 1, 2", "1, 2, 3, 4"),
        ("Sort: 3, 1, 2", "The sorted list is 1, 2, 3"),
        ("What is the capital of Peru?", "It is Lima."),
        ("What is the capital of Peru?", "Lima Paris Rome"),
        ("What is the capital of Peru?", ""),
    ],
)
def test_grading_rejects_a_reply_that_is_not_just_the_answer(question, reply):
    assert is_correct(question, reply) is False


def test_sample_is_reproducible():
    assert sample(20, seed=3) == sample(20, seed=3)
    assert all(solve(q) == a for q, a in sample(50))


def test_every_generated_question_has_the_kind_of_its_generator():
    import random

    rng = random.Random(3)
    names = {"arithmetic": "arithmetic", "sorting": "sorting", "reversing": "reversing"}
    for _ in range(400):
        task = rng.choice(TASKS)
        question, _ = task(rng)
        assert kind(question) == names.get(task.__name__, "facts"), question
    assert kind("Explain recursion.") is None
