"""The demo's prompt plan: held out by kind, disjoint from training by subject."""

from collections import Counter

import pytest

from loop.corpus import read_corpus, task_key
from loop.demo.config import SCALES
from loop.demo.steps import prompt_plan
from loop.toytask import kind, solve


def subject(question):
    if kind(question) == "reversing":
        return ("reversing", solve(question)[::-1])
    if kind(question) == "facts":
        return ("facts", question)
    return task_key(question)


@pytest.mark.parametrize("scale", ["demo", "ci"])
def test_no_held_out_question_is_asked_in_training_in_any_phrasing(scale):
    plan = prompt_plan(SCALES[scale])
    held = {subject(q) for q, split in plan if split == "test"}
    train = {subject(q) for q, split in plan if split == "train"}
    assert held and train and not held & train
    assert len({q for q, _ in plan}) == len(plan)


def test_the_demo_holds_out_400_prompts_stratified_by_kind():
    plan = prompt_plan(SCALES["demo"])
    held = Counter(kind(q) for q, split in plan if split == "test")
    assert held == {"facts": 60, "reversing": 120, "arithmetic": 110, "sorting": 110}
    assert sum(split == "train" for _, split in plan) == 360


def test_learnable_held_out_subjects_are_in_the_corpus_and_the_others_are_not():
    asked = Counter(
        subject(turn["content"])
        for doc in read_corpus()
        for turn in doc.get("messages", [])
        if turn["role"] == "user" and kind(turn["content"])
    )
    for question, split in prompt_plan(SCALES["demo"]):
        if split != "test":
            continue
        if kind(question) in ("facts", "reversing"):
            assert asked[subject(question)] >= 5, question
        else:
            assert asked[subject(question)] == 0, question


@pytest.mark.parametrize(
    ("sampled", "stored"),
    [("tac", "tac"), (" ", "(no reply)"), ("\x00", "(no reply)"), ("a\x00b", "ab")],
)
def test_a_sample_with_no_text_is_stored_as_no_reply(sampled, stored):
    from loop.demo.steps import storable_reply

    assert storable_reply(sampled) == stored
