"""The tiny model, every training kind, cancel/resume, LoRA and sampling, on CPU.

The tiny model is the session's (tests/modeling/conftest.py::tiny_model_dir, built once); each
kind then trains for 2 steps with batch size 2 on a handful of rows written in the shapes the
dataset export produces (with the metadata columns it adds, which must not reach TRL).
"""

import json
from pathlib import Path

import pydantic
import pytest
import torch
from django.core.management import call_command
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from modeling.ml import (
    MAIN_METRIC,
    estimate_steps,
    generate,
    load_causal_lm,
    parse_job_config,
    read_model_card,
    train,
)
from modeling.ml.generation import sample

TASKS = [
    ("What is 2 + 3?", "5", "6"),
    ("Reverse the word cat.", "tac", "cat"),
    ("Sort: 3, 1, 2", "1, 2, 3", "3, 1, 2"),
    ("What is the capital of France?", "Paris", "Rome"),
]


class RecordingReporter:
    def __init__(self, stop_after_step: int | None = None):
        self.reports = []
        self.stop_after_step = stop_after_step

    def report(self, *, step, total_steps, metrics, log_line=None):
        self.reports.append(
            {"step": step, "total": total_steps, "metrics": metrics, "line": log_line}
        )

    def should_stop(self):
        last = self.reports[-1]["step"] if self.reports else 0
        return self.stop_after_step is not None and last >= self.stop_after_step

    @property
    def steps(self):
        return [r["step"] for r in self.reports if r["step"] > 0]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_dataset(directory: Path, kind: str, n_rows: int = 4) -> Path:
    """Rows in the export's shapes, with its metadata columns."""
    rows = []
    for i, (question, good, bad) in enumerate(TASKS[:n_rows]):
        prompt = [{"role": "user", "content": question}]
        meta = {"item_id": i, "source": "test", "labels": {"helpfulness": 5}}
        if kind == "sft":
            rows.append({"messages": [*prompt, {"role": "assistant", "content": good}], **meta})
        elif kind in ("reward", "dpo"):
            chosen = [{"role": "assistant", "content": good}]
            rejected = [{"role": "assistant", "content": bad}]
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, **meta})
        else:
            rows.append({"prompt": prompt, "answer": good, **meta})
    write_jsonl(directory / "train.jsonl", rows)
    if kind in ("reward", "dpo"):
        write_jsonl(directory / "test.jsonl", rows[:2])
    return directory


# Per kind: the config of a 2-step run on the rows above, by epochs (not max_steps) so that
# estimate_steps is checked against what the trainer really did. Online kinds sample 8 tokens.
FAST = {"learning_rate": 1e-3, "batch_size": 2}
ONLINE = {**FAST, "max_completion_length": 8}
RUNS = {
    "sft": (FAST, 4),
    "reward": (FAST, 4),
    "dpo": ({**FAST, "max_length": 64}, 4),
    "ppo": ({**ONLINE, "num_ppo_epochs": 1}, 4),  # 4 prompts = 2 batches of rollouts
    "rloo": ({**ONLINE, "num_generations": 2}, 2),  # 2 prompts = 2 groups of 2 completions
    "grpo": ({**ONLINE, "num_generations": 2}, 2),
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Matrices this small gain little from a second thread, and OpenMP threads spin-waiting
    for cores that other processes hold (a busy CI box, xdist) made this module 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir) -> str:
    return tiny_model_dir


@pytest.fixture(scope="module")
def run_kind(tiny_model, tmp_path_factory):
    """Trains each kind once per module, on demand; online kinds score with the reward run."""
    done = {}

    def run(kind: str):
        if kind not in done:
            raw, n_rows = RUNS[kind]
            work = tmp_path_factory.mktemp(kind)
            reward = run("reward")[0].output_dir if kind in ("ppo", "rloo", "grpo") else None
            reporter = RecordingReporter()
            result = train(
                kind,
                parse_job_config(kind, raw),
                model_path=tiny_model,
                dataset_dir=str(write_dataset(work / "data", kind, n_rows)),
                output_dir=str(work / "out"),
                reward_model_path=reward,
                reporter=reporter,
            )
            done[kind] = (result, reporter, n_rows)
        return done[kind]

    return run


def state_dict(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def changed_backbone_tensors(parent: dict, child: dict) -> list[str]:
    """Names of the transformer's tensors (shared by LM and reward heads) that training moved."""
    shared = [n for n in parent if n.startswith("model.") and n in child]
    assert shared, "no common backbone tensors to compare"
    return [n for n in shared if not torch.equal(parent[n], child[n])]


# -- the tiny model


def test_tiny_model_has_a_few_million_parameters_and_learned_something(tiny_model):
    summary = json.loads(Path(tiny_model, "build_summary.json").read_text())
    assert 1_000_000 < summary["parameters"] < 10_000_000
    assert summary["loss_after"] < summary["loss_before"]
    card = read_model_card(tiny_model)
    assert card == {
        "kind": "policy",
        "base_model": None,
        "lora": False,
        "parameter_count": summary["parameters"],
        "train_tokens": summary["pretrain_steps"] * 8 * 128,  # batch 8 x 128-token windows
    }
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == summary["parameters"]


def test_chat_template_marks_the_assistant_reply_and_its_eos_for_the_loss(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
    ]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert marked, "no assistant tokens marked: {% generation %} missing?"
    assert tokenizer.decode(marked) == "5<|eos|>"
    assert out["input_ids"][0] == tokenizer.bos_token_id
    # The generation prompt is exactly the prefix the reply continues (DPO/GRPO rely on it).
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False).startswith(prompt)


def test_chat_template_rejects_unknown_roles(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with pytest.raises(Exception, match="Unsupported chat role: tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_build_command_builds_once_then_skips(tmp_path, tiny_model, capsys):
    call_command("build_tiny_model", "--output", tiny_model)
    assert "exists" in capsys.readouterr().out
    target = tmp_path / "tiny"
    call_command("build_tiny_model", "--output", str(target), "--steps", "1")
    assert "Built" in capsys.readouterr().out
    assert (target / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".*building"))


# -- every kind


@pytest.mark.parametrize("kind", ["sft", "reward", "dpo", "ppo", "rloo", "grpo"])
def test_training_moves_the_weights_and_writes_a_loadable_checkpoint(kind, run_kind, tiny_model):
    result, reporter, n_rows = run_kind(kind)

    assert not result.stopped
    assert result.steps == 2 == estimate_steps(kind, parse_job_config(kind, RUNS[kind][0]), n_rows)
    assert reporter.steps[0] == 1 and reporter.steps[-1] == 2
    assert reporter.reports[-1]["total"] == 2
    assert MAIN_METRIC[kind] in result.metrics
    assert "loss" in result.metrics or "loss/policy_avg" in result.metrics
    assert result.train_tokens > 0
    if kind in ("reward", "dpo"):
        assert "eval_loss" in result.metrics  # test.jsonl is evaluated after training

    out = Path(result.output_dir)
    assert not list(out.glob("checkpoint-*"))
    loader = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    child = loader.from_pretrained(out)
    parent = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert changed_backbone_tensors(state_dict(parent), state_dict(child))
    assert (
        AutoTokenizer.from_pretrained(out).chat_template
        == AutoTokenizer.from_pretrained(tiny_model).chat_template
    )
    assert read_model_card(out) == {
        "kind": "reward" if kind == "reward" else "policy",
        "base_model": tiny_model,
        "lora": False,
        "parameter_count": sum(p.numel() for p in child.parameters()),
        "train_tokens": result.train_tokens,
    }


def test_reward_model_scores_with_one_label(run_kind):
    model = AutoModelForSequenceClassification.from_pretrained(run_kind("reward")[0].output_dir)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id is not None


# -- cancel and resume


@pytest.mark.parametrize("kind", ["sft", "ppo"])  # PPO's loop needs a different stop mechanism
def test_cancel_stops_after_the_current_step_without_writing_a_model(
    kind, run_kind, tiny_model, tmp_path
):
    reward = run_kind("reward")[0].output_dir if kind == "ppo" else None
    raw = {**RUNS[kind][0], "max_steps": 4}
    reporter = RecordingReporter(stop_after_step=1)
    result = train(
        kind,
        raw,
        model_path=tiny_model,
        dataset_dir=str(write_dataset(tmp_path / "data", kind)),
        output_dir=str(tmp_path / "out"),
        reward_model_path=reward,
        reporter=reporter,
    )
    assert result.stopped
    assert result.steps == 1
    assert reporter.reports[-1]["line"] == "cancelled"
    assert not (tmp_path / "out" / "veredicto.json").exists()
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_resume_continues_from_the_last_checkpoint_like_an_uninterrupted_run(tiny_model, tmp_path):
    data = str(write_dataset(tmp_path / "data", "sft"))
    config = parse_job_config(
        "sft", {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 4, "save_steps": 1}
    )

    common = {"model_path": tiny_model, "dataset_dir": data}
    straight = train("sft", config, **common, output_dir=str(tmp_path / "straight"))

    # Step 1 is always reported (later ones are throttled), so the stop lands right after it.
    interrupted = tmp_path / "interrupted"
    stop_after_1 = RecordingReporter(stop_after_step=1)
    first = train("sft", config, **common, output_dir=str(interrupted), reporter=stop_after_1)
    assert first.stopped and first.steps == 1
    assert [p.name for p in interrupted.glob("checkpoint-*")] == ["checkpoint-1"]

    reporter = RecordingReporter()
    resumed = train(
        "sft", config, **common, output_dir=str(interrupted), reporter=reporter, resume=True
    )
    assert not resumed.stopped and resumed.steps == 4
    assert reporter.reports[0]["step"] == 1
    assert "resuming from checkpoint-1" in reporter.reports[0]["line"]
    assert reporter.reports[1]["step"] == 2  # the first step trained by this run
    assert not list(interrupted.glob("checkpoint-*"))
    assert resumed.train_tokens == straight.train_tokens

    a = state_dict(AutoModelForCausalLM.from_pretrained(straight.output_dir))
    b = state_dict(AutoModelForCausalLM.from_pretrained(resumed.output_dir))
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_resume_without_a_checkpoint_starts_from_scratch(tiny_model, tmp_path):
    reporter = RecordingReporter()
    result = train(
        "sft",
        {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 1},
        model_path=tiny_model,
        dataset_dir=str(write_dataset(tmp_path / "data", "sft")),
        output_dir=str(tmp_path / "out"),
        reporter=reporter,
        resume=True,
    )
    assert result.steps == 1 and "starting" in reporter.reports[0]["line"]


# -- LoRA


@pytest.fixture(scope="module")
def sft_lora(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("sft-lora")
    return train(
        "sft",
        {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 2, "lora": True, "lora_rank": 4},
        model_path=tiny_model,
        dataset_dir=str(write_dataset(work / "data", "sft")),
        output_dir=str(work / "out"),
    )


def test_sft_with_lora_saves_an_adapter_that_changes_the_model(sft_lora, tiny_model):
    out = Path(sft_lora.output_dir)
    assert (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter only, not a full copy
    merged = AutoPeftModelForCausalLM.from_pretrained(out).merge_and_unload()
    parent = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert changed_backbone_tensors(state_dict(parent), state_dict(merged))
    card = read_model_card(out)
    assert card["lora"] is True and card["kind"] == "policy"
    assert card["parameter_count"] == sum(p.numel() for p in parent.parameters())
    # load_causal_lm merges adapters: what evaluation and the next training job see.
    loaded = load_causal_lm(out)
    assert not changed_backbone_tensors(state_dict(merged), state_dict(loaded))


def test_dpo_with_lora_on_top_of_a_lora_sft_adapter(sft_lora, tmp_path):
    result = train(
        "dpo",
        {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 2, "lora": True, "lora_rank": 4},
        model_path=sft_lora.output_dir,
        dataset_dir=str(write_dataset(tmp_path / "data", "dpo")),
        output_dir=str(tmp_path / "out"),
    )
    out = Path(result.output_dir)
    assert "loss" in result.metrics and read_model_card(out)["lora"] is True
    # The SFT adapter was merged into a base kept beside the new adapter, which points to it.
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(out / "base")
    dpo = AutoPeftModelForCausalLM.from_pretrained(out).merge_and_unload()
    assert changed_backbone_tensors(
        state_dict(load_causal_lm(sft_lora.output_dir)), state_dict(dpo)
    )


def paths(model: str, tmp_path: Path) -> dict[str, str]:
    return {"model_path": model, "dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out")}


def test_unknown_config_key_fails_before_any_training(tiny_model, tmp_path):
    with pytest.raises(pydantic.ValidationError, match="lora_rnak"):
        train("sft", {"lora_rnak": 8}, **paths(tiny_model, tmp_path))


def test_online_kinds_need_a_reward_model(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="reward_model_path"):
        train("grpo", {}, **paths(tiny_model, tmp_path))


def test_missing_columns_are_named(tiny_model, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match=r"dpo rows need the column\(s\) \['chosen', 'rejected'\]"):
        train("dpo", {}, **paths(tiny_model, tmp_path))


def test_malformed_jsonl_is_named(tiny_model, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n{not json\n')
    with pytest.raises(ValueError, match=r"train\.jsonl is not valid JSON Lines: JSON parse error"):
        train("sft", {}, **paths(tiny_model, tmp_path))


def test_a_role_the_template_does_not_know_fails_with_its_name(tiny_model, tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    write_jsonl(tmp_path / "train.jsonl", [{"messages": messages}])
    with pytest.raises(Exception, match="Unsupported chat role: tool"):
        train("sft", {"max_steps": 1}, **paths(tiny_model, tmp_path))


# -- sampling

PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: 3, 1, 2"}],
]


def test_generate_returns_n_completions_per_prompt_reproducibly(tiny_model):
    first = generate(tiny_model, PROMPTS, n=3, max_new_tokens=8, batch_size=4, seed=1)
    assert [len(c) for c in first] == [3, 3]
    assert all(isinstance(text, str) and "<|" not in text for c in first for text in c)
    assert generate(tiny_model, PROMPTS, n=3, max_new_tokens=8, batch_size=4, seed=1) == first
    greedy = generate(tiny_model, PROMPTS, n=2, temperature=0, max_new_tokens=8)
    assert all(c[0] == c[1] for c in greedy)


def forcing(model, token_id: int):
    """The model, made to always predict token_id (a bias on an otherwise zero output head)."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[token_id] = 50.0
    model.lm_head = head
    return model


def test_sampling_stops_at_max_new_tokens(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    token = tokenizer.convert_tokens_to_ids("Paris") if "Paris" in tokenizer.get_vocab() else 100
    model = forcing(load_causal_lm(tiny_model), token)
    out = sample(model, tokenizer, PROMPTS, n=2, max_new_tokens=5)
    assert out == [[tokenizer.decode([token] * 5)] * 2] * 2


def test_sampling_stops_at_eos(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = forcing(load_causal_lm(tiny_model), tokenizer.eos_token_id)
    new_tokens = []
    original_generate = model.generate

    def recording_generate(**kwargs):
        output = original_generate(**kwargs)
        new_tokens.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    model.generate = recording_generate
    assert sample(model, tokenizer, PROMPTS, n=2, max_new_tokens=20) == [["", ""], ["", ""]]
    assert new_tokens == [1]  # one batch, ended by EOS after one token rather than 20
