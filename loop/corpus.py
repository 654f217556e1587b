"""The tiny model's pretraining corpus: simple English prose and chats about the toy tasks.

The generated file is committed (loop/corpus/tiny.jsonl) so every checkout builds the same
model without a download. Regenerate it, byte for byte the same, with:

    python -m loop.corpus

One document per line, either {"text": "..."} (prose) or {"messages": [...]} (a chat in the
roles the chat template knows). The toy tasks are the ones the demo asks the model and can check
automatically: small arithmetic, sorting a short list, reversing a word, facts from a small table.

Like real pretraining data, the chats are of mixed quality, and that is the demo's story. Every
toy question in them is answered, but only ANSWER_QUALITY["right"] of the time with the bare
right answer; otherwise with a near miss ("22" for 12 + 9) or a hedge ("I am not sure."). The
base model learns the tasks *and* those habits: greedy decoding often hedges or misses. SFT on
the annotators' (right) demonstrations and the preference stages (right over wrong or hedged)
select the good habit rather than teach new knowledge, which is why the demo's task score, the
checker's verdict on held-out prompts, can rise from the base model to the tuned ones. Prose
paragraphs also state the tasks' answers in plain text ("12 + 9 = 21."), and small-talk chats
keep the chat format from being only about toy questions.
"""

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

CORPUS_PATH = Path(__file__).resolve().parent / "corpus" / "tiny.jsonl"
RESERVED_DEMO_PROMPTS = 1200  # the demo imports the first distinct ones of these (500 by default)

# Sizes: ~70k tokens in all, which a few hundred CPU steps of the tiny model see several times.
N_PARAGRAPHS = 200
N_NOTEBOOKS = 400
N_CHATS = 100
N_TOY_CHATS = 6000
# How a toy question in the corpus is answered (probabilities, summing to 1). Hedges are common
# enough that the base model's greedy answer is often "I am not sure." where it knows better:
# the habit the demonstrations and preferences are there to fix.
ANSWER_QUALITY = {"right": 0.5, "near_miss": 0.2, "hedge": 0.3}
# Toy chats by kind (relative weights). The closed tables (reversed words, facts) are what
# pretraining is meant to know, and the tiny model needs many sightings to tie each of the 35
# words to its own reversal: with equal weights (about 14 chats a word) it answered "Reverse the
# word cat." with some reversed word, rarely "tac". Held-out arithmetic and sorting measure
# generalisation, which more chats of theirs would hardly buy in a few CPU minutes.
# With the 120-word and 120-fact tables (below) each word or fact is asked in about 20 chats.
TOY_CHAT_WEIGHTS = {"arithmetic": 1, "sorting": 1, "reversing": 3, "fact": 3}
HEDGES = ["I am not sure.", "I do not know.", "Let me think about it."]

NOUNS = [
    "cat", "dog", "bird", "fish", "child", "teacher", "farmer", "baker", "river", "tree",
    "house", "garden", "book", "boat", "apple", "train", "horse", "friend", "girl", "boy",
]  # fmt: skip
ADJECTIVES = [
    "small", "big", "red", "green", "happy", "old", "young", "quiet", "bright", "tall",
    "kind", "slow", "fast", "warm", "cold",
]  # fmt: skip
VERBS = [
    ("sees", "saw"), ("likes", "liked"), ("finds", "found"), ("helps", "helped"),
    ("carries", "carried"), ("watches", "watched"), ("paints", "painted"), ("follows", "followed"),
]  # fmt: skip
PLACES = ["in the park", "by the river", "at home", "in the town", "near the hill", "at school"]
TIMES = ["In the morning", "Every day", "Yesterday", "At night", "On Sunday", "After lunch"]

# (subject, question, answer, statement): the "facts from a small table" task.
FACTS = [
    ("France", "What is the capital of France?", "Paris", "The capital of France is Paris."),
    ("Italy", "What is the capital of Italy?", "Rome", "The capital of Italy is Rome."),
    ("Spain", "What is the capital of Spain?", "Madrid", "The capital of Spain is Madrid."),
    ("Japan", "What is the capital of Japan?", "Tokyo", "The capital of Japan is Tokyo."),
    ("Egypt", "What is the capital of Egypt?", "Cairo", "The capital of Egypt is Cairo."),
    ("Kenya", "What is the capital of Kenya?", "Nairobi", "The capital of Kenya is Nairobi."),
    ("Peru", "What is the capital of Peru?", "Lima", "The capital of Peru is Lima."),
    ("Canada", "What is the capital of Canada?", "Ottawa", "The capital of Canada is Ottawa."),
    ("spider", "How many legs does a spider have?", "8", "A spider has 8 legs."),
    ("insect", "How many legs does an insect have?", "6", "An insect has 6 legs."),
    ("dog", "How many legs does a dog have?", "4", "A dog has 4 legs."),
    ("bird", "How many legs does a bird have?", "2", "A bird has 2 legs."),
    ("sky", "What color is the sky on a clear day?", "blue", "The sky is blue on a clear day."),
    ("grass", "What color is grass?", "green", "Grass is green."),
    ("snow", "What color is snow?", "white", "Snow is white."),
    ("banana", "What color is a ripe banana?", "yellow", "A ripe banana is yellow."),
    ("week", "How many days are in a week?", "7", "There are 7 days in a week."),
    ("year", "How many months are in a year?", "12", "There are 12 months in a year."),
    ("water", "At what temperature in Celsius does water freeze?", "0",
     "Water freezes at 0 degrees Celsius."),
    ("hour", "How many minutes are in an hour?", "60", "There are 60 minutes in an hour."),
]  # fmt: skip

# The words the reversing task asks about: the prose's nouns and adjectives and more short words,
# 120 in all, so that the demo can hold out words no training prompt asks about.
MORE_WORDS = [
    "lamp", "desk", "road", "ship", "coat", "shoe", "milk", "bread", "stone", "cloud",
    "rain", "wind", "sand", "leaf", "seed", "rose", "lake", "hill", "moon", "star",
    "door", "wall", "roof", "bell", "drum", "song", "game", "ball", "kite", "rope",
    "cake", "soup", "rice", "corn", "salt", "lemon", "plum", "pear", "grape", "nut",
    "chair", "table", "spoon", "plate", "cup", "glass", "box", "bag", "pen", "map",
    "king", "queen", "ring", "gold", "iron", "wood", "wool", "silk", "paper", "ink",
    "frog", "goat", "sheep", "mouse", "duck", "owl", "bear", "wolf", "lion", "crab",
    "dark", "soft", "hard", "loud", "sweet", "sour", "wet", "dry", "clean", "rich",
    "thin", "wide", "deep", "long", "short",
]  # fmt: skip
REVERSE_WORDS = NOUNS + ADJECTIVES + MORE_WORDS
REVERSING_TEMPLATES = ["Reverse the word {w}.", "Spell {w} backwards.", "Reverse: {w}"]

# A synthetic fact table beside the real one: 100 invented people and the animal each keeps.
# Arbitrary pairs, as facts are to a model that has not read about them; 120 facts in all, so
# the demo can hold out facts no training prompt asks about.
ANIMALS = ["owl", "goat", "fox", "hen", "cow", "pig", "duck", "frog", "mule", "wolf", "bee", "crab"]


def _synthetic_facts(n: int = 100) -> list[tuple[str, str, str, str]]:
    rng = random.Random(1234)
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(2))
        if name.capitalize() not in names:
            names.append(name.capitalize())
    return [
        (name, f"What animal does {name} keep?", animal, f"{name} keeps the {animal}.")
        for name in names
        for animal in [rng.choice(ANIMALS)]
    ]


SYNTHETIC_FACTS = _synthetic_facts()
FACT_TABLE = FACTS + SYNTHETIC_FACTS  # what the fact task asks; FACTS alone is the evals' table
# The ways the demo asks a fact. The corpus asks only the first (the table's own question): the
# others are for the demo, which holds out one phrasing of a fact and trains on another.
FACT_PHRASINGS = ["{q}", "Quick question: {q}", "Tell me: {q}"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "Answer with the result only.",
    "You are a concise assistant.",
]


def sentence(rng: random.Random) -> str:
    """One simple English sentence from a small grammar."""
    subject = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    obj = f"the {rng.choice(NOUNS)}"
    present, past = rng.choice(VERBS)
    form = rng.randrange(4)
    if form == 0:
        return f"{subject.capitalize()} {present} {obj} {rng.choice(PLACES)}."
    if form == 1:
        return f"{rng.choice(TIMES)}, {subject} {past} {obj}."
    if form == 2:
        return f"{subject.capitalize()} is {rng.choice(ADJECTIVES)} and {rng.choice(ADJECTIVES)}."
    return rng.choice(FACTS)[3]  # the prose's facts stay the real ones


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(3, 6)))


def arithmetic(rng: random.Random) -> tuple[str, str]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
    else:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
    if op == "-" and b > a:
        a, b = b, a  # keep answers non-negative: simpler to learn, still verifiable
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    question = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?"])
    return question.format(a=a, op=op, b=b), str(result)


def sorting(rng: random.Random) -> tuple[str, str]:
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 5))]
    shown = ", ".join(map(str, numbers))
    question = rng.choice(
        ["Sort these numbers from smallest to largest: {l}", "Sort the list: {l}", "Sort: {l}"]
    )
    return question.format(l=shown), ", ".join(map(str, sorted(numbers)))


def reversing(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(REVERSE_WORDS)
    question = rng.choice(REVERSING_TEMPLATES)
    return question.format(w=word), word[::-1]


def fact(rng: random.Random) -> tuple[str, str]:
    _, question, answer, _ = rng.choice(FACT_TABLE)
    return question, answer


TASKS = [arithmetic, sorting, reversing, fact]


def task_key(question: str) -> tuple | None:
    """What makes an arithmetic or sorting question the same question whatever its phrasing:
    its operands, or its list. None for the closed tables (facts, reversed words), which
    pretraining is meant to know."""
    if match := re.search(r"(\d+) ([-+*]) (\d+)", question):
        return ("arithmetic", *match.groups())
    if question.startswith("Sort") and ":" in question:
        return ("sorting", *re.findall(r"\d+", question.split(":", 1)[1]))
    return None


def reserved_keys() -> set[tuple]:
    """Arithmetic and sorting questions that pretraining must not see: every prompt the demo loop
    can import (loop.toytask.sample, seed 7), so that its task score on held-out prompts
    measures what was learnt, not what was memorised. (The shipped evaluation tasks are generated
    from this corpus the other way round: loop.taskgen leaves out what the chats ask.)"""
    from loop.toytask import sample  # here: loop.toytask imports this module

    return {
        key
        for question, _ in sample(RESERVED_DEMO_PROMPTS, seed=7)
        if (key := task_key(question)) is not None
    }


def fresh(task, rng: random.Random, reserved: set[tuple]) -> tuple[str, str]:
    """A (question, answer) of `task` whose question is not reserved."""
    while True:
        question, answer = task(rng)
        if task_key(question) not in reserved:
            return question, answer


# Plain-text statements of a task's answer, one per task, as a textbook or a notebook would
# write them: what pretraining knows about the toy tasks.
def arithmetic_statement(rng: random.Random, reserved: set[tuple]) -> str:
    question, answer = fresh(arithmetic, rng, reserved)
    expression = question.removeprefix("What is ").removeprefix("Compute ")
    return f"{expression.rstrip('?. =')} = {answer}."


def sorting_statement(rng: random.Random, reserved: set[tuple]) -> str:
    question, ordered = fresh(sorting, rng, reserved)
    shown = question.split(": ", 1)[1]
    return rng.choice(
        [
            f"From smallest to largest, {shown} is {ordered}.",
            f"Sorted, the list {shown} becomes {ordered}.",
        ]
    )


def reversing_statement(rng: random.Random, reserved: set[tuple]) -> str:
    word = rng.choice(REVERSE_WORDS)
    return rng.choice(
        [f"The word {word} backwards is {word[::-1]}.", f"Reversed, {word} reads {word[::-1]}."]
    )


def fact_statement(rng: random.Random, reserved: set[tuple]) -> str:
    return rng.choice(FACT_TABLE)[3]


STATEMENTS = [arithmetic_statement, sorting_statement, reversing_statement, fact_statement]


def notebook(rng: random.Random, reserved: set[tuple]) -> str:
    """A paragraph of toy-task statements: mostly of one kind, as pages of a notebook are."""
    main = rng.choice(STATEMENTS)
    return " ".join(
        (main if rng.random() < 0.7 else rng.choice(STATEMENTS))(rng, reserved)
        for _ in range(rng.randint(3, 6))
    )


def chat(rng: random.Random) -> list[dict[str, str]]:
    """Small talk about the prose world, sometimes with a system prompt: never a toy question."""
    messages = []
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(1 if rng.random() < 0.8 else 2):
        thing = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        request = rng.choice(
            [f"Describe {thing}.", f"Tell me about {thing}.", "Say something.", "Write a sentence."]
        )
        messages.append({"role": "user", "content": request})
        messages.append({"role": "assistant", "content": sentence(rng)})
    return messages


def toy_chat(rng: random.Random, reserved: set[tuple]) -> list[dict[str, str]]:
    """A toy question answered as ANSWER_QUALITY says: right, a near miss, or a hedge."""
    task = rng.choices(TASKS, weights=[TOY_CHAT_WEIGHTS[t.__name__] for t in TASKS])[0]
    question, answer = fresh(task, rng, reserved)
    quality = rng.choices(list(ANSWER_QUALITY), weights=list(ANSWER_QUALITY.values()))[0]
    if quality == "near_miss":
        answer = near_miss(answer, rng)
    elif quality == "hedge":
        answer = rng.choice(HEDGES)
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def near_miss(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: a number off by one or two, a list or word slightly garbled."""
    if answer.isdigit():
        return str(abs(int(answer) + rng.choice([-2, -1, 1, 2])))
    if ", " in answer:
        numbers = answer.split(", ")
        i = rng.randrange(len(numbers) - 1)
        numbers[i], numbers[i + 1] = numbers[i + 1], numbers[i]
        return ", ".join(numbers)
    if answer[0].isupper():  # a fact: another fact's answer of the same table
        return rng.choice([fact[2] for fact in FACTS if fact[2] != answer])
    if answer in ANIMALS:  # a synthetic fact: another animal
        return rng.choice([animal for animal in ANIMALS if animal != answer])
    return answer[::-1]  # a reversed word, not reversed


def documents(seed: int = 0, reserved: set[tuple] | None = None) -> Iterator[dict]:
    """All documents, prose, notebooks and chats interleaved, in a fixed order for a given seed."""
    reserved = reserved_keys() if reserved is None else reserved
    rng = random.Random(seed)
    kinds = (
        ["text"] * N_PARAGRAPHS
        + ["notebook"] * N_NOTEBOOKS
        + ["messages"] * N_CHATS
        + ["toy"] * N_TOY_CHATS
    )
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "messages":
            yield {"messages": chat(rng)}
        elif kind == "toy":
            yield {"messages": toy_chat(rng, reserved)}
        else:
            yield {"text": paragraph(rng) if kind == "text" else notebook(rng, reserved)}


def read_corpus(path: str | Path = CORPUS_PATH) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_corpus(path: str | Path = CORPUS_PATH, seed: int = 0) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents(seed):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path.stat().st_size


if __name__ == "__main__":
    size = write_corpus()
    print(f"wrote {CORPUS_PATH} ({size / 1024:.0f} KiB)")
