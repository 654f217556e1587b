"""The demo's prompt plan: held out by kind; training covers every held-out fact and word in
another phrasing, never a held-out prompt itself nor a held-out sum or list."""

from collections import Counter

import pytest

from loop.corpus import read_corpus
from loop.demo.config import SCALES
from loop.demo.steps import prompt_plan
from loop.toytask import is_correct, kind, solve, subject

LEARNABLE = ("facts", "reversing")


@pytest.mark.parametrize("scale", ["demo", "ci"])
def test_no_held_out_prompt_is_trained_on_and_every_held_out_fact_and_word_is_in_another_phrasing(
    scale,
):
    plan = prompt_plan(SCALES[scale])
    held = [q for q, split, _ in plan if split == "test"]
    train = [q for q, split, _ in plan if split == "train"]
    assert len(set(held) | set(train)) == len(plan)  # no prompt in both splits, none twice
    trained = Counter(subject(q) for q in train)
    for question in held:
        if kind(question) in LEARNABLE:
            # Covered: the same fact or word, asked in training in exactly one other phrasing.
            assert trained[subject(question)] == 1, question
        else:
            assert trained[subject(question)] == 0, question


@pytest.mark.parametrize("scale", ["demo", "ci"])
def test_demonstrations_cover_the_configured_share_of_train_prompts_and_every_held_out_one(scale):
    config = SCALES[scale]
    plan = prompt_plan(config)
    assert all(demonstrated for _, split, demonstrated in plan if split == "test")
    taught = Counter(kind(q) for q, split, shown in plan if split == "train" and shown)
    assert taught == config.demonstrated
    # Both sides of the coverage relation are held out: some held-out facts and words are
    # demonstrated in another phrasing, some only asked there without a demonstration.
    covered = {subject(q): demonstrated for q, split, demonstrated in plan if split == "train"}
    for learnable in LEARNABLE:
        held = [subject(q) for q, split, _ in plan if split == "test" and kind(q) == learnable]
        assert {covered[s] for s in held} == {True, False}


def test_the_demo_demonstrates_half_the_facts_and_words():
    plan = prompt_plan(SCALES["demo"])
    taught = Counter(kind(q) for q, split, shown in plan if split == "train" and shown)
    assert taught == {"facts": 60, "reversing": 60, "arithmetic": 60, "sorting": 60}


def test_the_demo_holds_out_400_prompts_stratified_by_kind():
    plan = prompt_plan(SCALES["demo"])
    held = Counter(kind(q) for q, split, _ in plan if split == "test")
    assert held == {"facts": 120, "reversing": 120, "arithmetic": 80, "sorting": 80}
    assert sum(split == "train" for _, split, _ in plan) == 360


def test_every_phrasing_of_a_fact_has_its_answer():
    assert solve("Tell me: What color is snow?") == solve("What color is snow?") == "white"
    assert is_correct("Quick question: What is the capital of Peru?", "Lima.")
    assert subject("Tell me: What color is snow?") == subject("What color is snow?")
    assert subject("Spell cat backwards.") == subject("Reverse: cat") == ("reversing", "cat")
    assert kind("Tell me: What is 2 + 3?") == "arithmetic"  # not a fact: no such table question


def test_learnable_held_out_subjects_are_in_the_corpus_and_the_others_are_not():
    asked = Counter(
        subject(turn["content"])
        for doc in read_corpus()
        for turn in doc.get("messages", [])
        if turn["role"] == "user" and kind(turn["content"])
    )
    for question, split, _ in prompt_plan(SCALES["demo"]):
        if split != "test":
            continue
        if kind(question) in LEARNABLE:
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
