"""The tiny model's corpus: simple English, and chats about the demo's verifiable toy tasks.

The generated file is committed (modeling/corpus/tiny.jsonl) so every checkout builds the same
model without a download. Regenerate it, byte for byte the same, with:

    python -m modeling.ml.corpus

One document per line, either {"text": "..."} (prose) or {"messages": [...]} (a chat in the
roles the chat template knows). The toy tasks are the ones the demo asks the model and can check
automatically: small arithmetic, sorting a short list, reversing a word, facts from a small table.
"""

import json
import random
from collections.abc import Iterator
from pathlib import Path

CORPUS_PATH = Path(__file__).resolve().parent.parent / "corpus" / "tiny.jsonl"

# Sizes: ~300 KB in all, about half prose and half chat, which is enough for a few-million
# parameter model to pick up the chat format and the task phrasings in a short CPU pretraining.
N_PARAGRAPHS = 550
N_CHATS = 1500

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
    return rng.choice(FACTS)[3]


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
    word = rng.choice(NOUNS + ADJECTIVES)
    question = rng.choice(["Reverse the word {w}.", "Spell {w} backwards.", "Reverse: {w}"])
    return question.format(w=word), word[::-1]


def fact(rng: random.Random) -> tuple[str, str]:
    _, question, answer, _ = rng.choice(FACTS)
    return question, answer


TASKS = [arithmetic, sorting, reversing, fact]


def chat(rng: random.Random) -> list[dict[str, str]]:
    """A chat of one or two toy-task turns, sometimes with a system prompt."""
    messages = []
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(1 if rng.random() < 0.8 else 2):
        question, answer = rng.choice(TASKS)(rng)
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    return messages


def documents(seed: int = 0) -> Iterator[dict]:
    """All documents, prose and chats interleaved, in a fixed order for a given seed."""
    rng = random.Random(seed)
    kinds = ["text"] * N_PARAGRAPHS + ["messages"] * N_CHATS
    rng.shuffle(kinds)
    for kind in kinds:
        yield {"text": paragraph(rng)} if kind == "text" else {"messages": chat(rng)}


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
