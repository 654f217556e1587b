"""Task files: validation of hostile or broken input, and the shipped tasks themselves."""

import json

import pytest

from evals.ml import (
    load_gen_task,
    load_mc_task,
    load_preference_pairs,
    load_text_set,
    shipped_tasks,
    task_kind,
)
from loop import taskgen
from loop.corpus import read_corpus

MC_CONFIG = {"config": {"name": "toy", "kind": "multiple_choice", "template": "Q: {question}"}}
GOOD = {"question": "2 + 2?", "choices": ["4", "5"], "answer": 0}


def write(tmp_path, *lines, name="task.jsonl"):
    path = tmp_path / name
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def test_a_valid_task_file_loads_with_its_template(tmp_path):
    task = load_mc_task(write(tmp_path, MC_CONFIG, GOOD, "", {**GOOD, "answer": 1}))
    assert task.name == "toy"
    assert [item.prompt for item in task.items] == ["Q: 2 + 2?", "Q: 2 + 2?"]
    assert [item.answer for item in task.items] == [0, 1]
    assert task.target_delimiter == " " and task.chat is False


@pytest.mark.parametrize(
    "bad_item, message",
    [
        ({"question": "q", "choices": ["a", "b"]}, "line 3: missing 'answer'"),
        ({"question": "q", "choices": [], "answer": 0}, "line 3: 'choices' must be a non-empty"),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "line 3: answer index 2 is out"),
        ({"question": "q", "choices": ["a", "b"], "answer": -1}, "line 3: answer index -1 is out"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "line 3: 'answer' must be an"),
        ({"question": "q", "choices": ["a", "b"], "answer": "0"}, "line 3: 'answer' must be an"),
        ({"question": "q", "choices": "ab", "answer": 0}, "line 3: 'choices' must be"),
        ({"question": "q", "choices": ["a", ""], "answer": 0}, "line 3: every choice"),
        ({"question": "q", "choices": ["a", 7], "answer": 0}, "line 3: every choice"),
        ({"context": "no question", "choices": ["a"], "answer": 0}, "line 3: the template needs"),
        ("{not json", "line 3: invalid JSON"),
        ("[1, 2]", "line 3: expected a JSON object"),
        (MC_CONFIG, "line 3: 'config' is only allowed on line 1"),
    ],
)
def test_a_bad_item_is_a_value_error_naming_its_line(tmp_path, bad_item, message):
    path = write(tmp_path, MC_CONFIG, GOOD, bad_item)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_mc_task(path)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"name": "t", "templat": "{question}"}, "unknown config keys"),
        ({"template": "{question.__class__}"}, "plain names"),
        ({"template": "{question[0]}"}, "plain names"),
        ({"template": "{question"}, "bad template"),
        ({"chat": "yes"}, "'chat' must be true or false"),
        ({"kind": "generative"}, "a generative task, not multiple_choice"),
        ("not an object", "'config' must be an object"),
    ],
)
def test_a_bad_config_is_a_value_error(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        load_mc_task(write(tmp_path, {"config": config}, GOOD))


def test_invalid_utf8_is_a_value_error_naming_its_line(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"question": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match="line 2: not valid UTF-8"):
        load_mc_task(path)
    texts = tmp_path / "texts.jsonl"
    texts.write_bytes(b'{"text": "fine"}\n{"text": "\xc3\x28"}\n')
    with pytest.raises(ValueError, match="line 2: not valid UTF-8"):
        load_text_set(texts)


def test_an_empty_task_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no items"):
        load_mc_task(write(tmp_path, MC_CONFIG))


def test_generative_task_validation(tmp_path):
    config = {"config": {"kind": "generative", "scorer": "regex", "stop": ["\n"]}}
    task = load_gen_task(write(tmp_path, config, {"question": "q", "target": r"4\d?"}))
    assert task.scorer == "regex" and task.stop == ["\n"]
    with pytest.raises(ValueError, match="line 2: 'target' is not a valid regex"):
        load_gen_task(write(tmp_path, config, {"question": "q", "target": "(unclosed"}))
    with pytest.raises(ValueError, match="line 2: missing 'target'"):
        load_gen_task(write(tmp_path, config, {"question": "q", "answer": 0}))
    with pytest.raises(ValueError, match="unknown scorer"):
        load_gen_task(write(tmp_path, {"config": {"scorer": "bleu"}}, {"target": "a"}))
    with pytest.raises(ValueError, match="'stop' must be"):
        load_gen_task(write(tmp_path, {"config": {"stop": "\n"}}, {"question": "q", "target": "a"}))


def test_shipped_files_are_what_the_generator_writes():
    assert taskgen.stale() == []


def test_shipped_tasks_load_and_are_well_formed():
    tasks = shipped_tasks()
    assert set(tasks) == {"arithmetic_mc", "word_order_mc", "facts_mc", "toy_qa_gen"}
    for name, path in tasks.items():
        if task_kind(path) == "generative":
            task = load_gen_task(path)
            assert 0 < len(task.items) <= 300
            continue
        task = load_mc_task(path)
        assert task.name == name and task.chat and task.target_delimiter == ""
        assert 0 < len(task.items) <= 300
        for item in task.items:
            assert len(set(item.choices)) == len(item.choices) == 4
            # no choice is a prefix of another: "1" must not borrow likelihood from "12"
            for a in item.choices:
                assert not any(b != a and b.startswith(a) for b in item.choices)


def test_shipped_answers_are_right():
    for item in load_mc_task(shipped_tasks()["arithmetic_mc"]).items:
        expression = item.prompt.removeprefix("What is ").removeprefix("Compute ")
        expression = expression.rstrip("?.").removesuffix(" = ")
        assert str(eval(expression, {"__builtins__": {}})) == item.choices[item.answer]
    for item in load_mc_task(shipped_tasks()["word_order_mc"]).items:
        answer = item.choices[item.answer]
        if item.fields["kind"] == "sorting":
            numbers = [int(x) for x in item.prompt.split(": ")[1].split(", ")]
            assert answer == ", ".join(map(str, sorted(numbers)))
        else:
            word = item.prompt.split()[-2 if item.prompt.startswith("Spell") else -1].strip(".")
            assert answer == word[::-1]


def test_held_out_arithmetic_and_sorting_are_not_in_the_training_corpus():
    seen = {
        message["content"]
        for doc in read_corpus()
        if "messages" in doc
        for message in doc["messages"]
        if message["role"] == "user"
    }
    for name in ("arithmetic_mc",):
        assert not seen & {item.prompt for item in load_mc_task(shipped_tasks()[name]).items}
    sorting = [
        item.prompt
        for item in load_mc_task(shipped_tasks()["word_order_mc"]).items
        if item.fields["kind"] == "sorting"
    ]
    assert not seen & set(sorting)


def test_held_out_text_and_preferences_load():
    texts = load_text_set()
    assert len(texts) == 100 and all(texts)
    pairs = load_preference_pairs()
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    assert pairs[0]["prompt"][0]["role"] == "user"
