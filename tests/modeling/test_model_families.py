"""Every training kind, sampling and evaluation on tiny models of the real families, on CPU.

Each family (modeling/ml/families.py: Llama 3, Qwen2.5, Mistral, Gemma 2, with their published
chat templates and special tokens) is built once per module; each kind then trains two steps on
the rows tests/modeling/test_ml_training.py writes, and the result must load again.
"""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from evals.ml import evaluate_generative, evaluate_mc, perplexity
from evals.ml.tasks import load_gen_task, load_mc_task, load_text_set, shipped_tasks
from modeling.ml import load_causal_lm, load_tokenizer, parse_job_config, train
from modeling.ml.families import FAMILIES, build_family_model
from modeling.ml.generation import sample
from tests.modeling.test_ml_training import (
    RUNS,
    RecordingReporter,
    changed_backbone_tensors,
    state_dict,
    write_dataset,
)

KINDS = ["sft", "reward", "dpo", "ppo", "rloo", "grpo"]
# The toy runs' configs, but DPO keeps whole rows: Qwen's template adds a default system prompt,
# which with this small vocabulary alone takes most of the toy runs' 64 tokens.
FAMILY_RUNS = {**RUNS, "dpo": ({**RUNS["dpo"][0], "max_length": 192}, RUNS["dpo"][1])}
ONLINE = ("ppo", "rloo", "grpo")
# Gemma's template refuses a system turn and Mistral's wants user/assistant turns to alternate:
# prompts here are single user turns, as the rows of a snapshot are.
PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "Sort: 3, 1, 2"}],
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Each family's model, built on first use (about 0.3 s each)."""
    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = build_family_model(family, str(tmp_path_factory.mktemp(family)))
        return built[family]

    return get


@pytest.fixture(scope="module")
def family_run(family_dirs, tmp_path_factory):
    """Trains each (family, kind) once; online kinds score with the family's reward run."""
    done = {}

    def run(family: str, kind: str):
        if (family, kind) not in done:
            raw, n_rows = FAMILY_RUNS[kind]
            work = tmp_path_factory.mktemp(f"{family}-{kind}")
            reward = run(family, "reward").output_dir if kind in ONLINE else None
            done[family, kind] = train(
                kind,
                parse_job_config(kind, raw),
                model_path=family_dirs(family),
                dataset_dir=str(write_dataset(work / "data", kind, n_rows)),
                output_dir=str(work / "out"),
                reward_model_path=reward,
                reporter=RecordingReporter(),
            )
        return done[family, kind]

    return run


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_kind_trains_two_steps_and_reloads(family, kind, family_run, family_dirs):
    result = family_run(family, kind)

    assert not result.stopped and result.steps == 2
    out = Path(result.output_dir)
    loader = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    child = loader.from_pretrained(out)
    parent = AutoModelForCausalLM.from_pretrained(family_dirs(family))
    assert changed_backbone_tensors(state_dict(parent), state_dict(child))
    tokenizer = load_tokenizer(out)
    assert tokenizer.chat_template == load_tokenizer(family_dirs(family)).chat_template
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampling_returns_clean_text_for_each_prompt(family, family_dirs):
    path = family_dirs(family)
    model, tokenizer = load_causal_lm(path), load_tokenizer(path)
    out = sample(model, tokenizer, PROMPTS, n=2, max_new_tokens=6, seed=1)
    assert [len(c) for c in out] == [2, 2]
    assert all(isinstance(text, str) and "\ufffd" not in text for c in out for text in c)
    assert sample(model, tokenizer, PROMPTS, n=2, max_new_tokens=6, seed=1) == out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_perplexity_multiple_choice_and_generative_evals_run(family, family_dirs):
    path = family_dirs(family)
    model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)
    tasks = shipped_tasks()

    ppl = perplexity(model, tokenizer, load_text_set()[:2], batch_size=2)
    assert ppl["tokens"] > 0 and ppl["byte_perplexity"] > 1

    mc = evaluate_mc(model, tokenizer, load_mc_task(tasks["arithmetic_mc"]), limit=3)
    assert mc["n"] == 3 and 0 <= mc["acc"] <= 1

    gen = evaluate_generative(
        model, tokenizer, load_gen_task(tasks["toy_qa_gen"]), limit=2, max_new_tokens=4
    )
    assert gen["n"] == 2
