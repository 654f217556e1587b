"""Every training kind, sampling and evaluation on tiny models of the real families, on CPU.

Each family (loop/families.py: Llama 3, Qwen2.5, Mistral, Gemma 2, with their published
chat templates and special tokens) is built once per module; each kind then trains two steps on
the rows tests/modeling/test_ml_training.py writes, and the result must load again.
"""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from evals.ml import evaluate_generative, evaluate_mc
from evals.ml.perplexity import perplexity  # the package attribute becomes the submodule
from evals.ml.tasks import load_gen_task, load_mc_task, load_text_set, shipped_tasks
from loop.families import FAMILIES, build_family_model
from modeling.ml import (
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    parse_job_config,
    train,
)
from modeling.ml.chat_templates import FALLBACK_NOTE, sft_loss_fallback
from modeling.ml.generation import clean_text, sample
from modeling.ml.loading import choose_pad_token, embedding_rows, tokenizer_mismatch
from modeling.ml.ppo import frozen_model_dtype
from modeling.ml.training import common_args
from tests.modeling.test_ml_training import (
    RUNS,
    RecordingReporter,
    changed_backbone_tensors,
    forcing,
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
            reward = run(family, "reward")[0].output_dir if kind in ONLINE else None
            reporter = RecordingReporter()
            result = train(
                kind,
                parse_job_config(kind, raw),
                model_path=family_dirs(family),
                dataset_dir=str(write_dataset(work / "data", kind, n_rows)),
                output_dir=str(work / "out"),
                reward_model_path=reward,
                reporter=reporter,
            )
            done[family, kind] = (result, reporter)
        return done[family, kind]

    return run


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_kind_trains_two_steps_and_reloads(family, kind, family_run, family_dirs):
    result = family_run(family, kind)[0]

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


# -- what the families need that the toy model did not


def test_mistral_sft_falls_back_to_prompt_completion_loss_and_says_so(family_run, family_dirs):
    """TRL has no marked training template for Mistral: assistant-only loss would mask every
    token and fail ("no assistant tokens"); the job trains on the last reply instead."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    notes = {f: sft_loss_fallback(load_tokenizer(family_dirs(f)), messages) for f in FAMILIES}
    assert notes == {"llama3": None, "qwen2_5": None, "gemma2": None, "mistral": FALLBACK_NOTE}

    result, reporter = family_run("mistral", "sft")
    assert FALLBACK_NOTE in reporter.reports[0]["line"]
    assert result.metrics["loss"] > 0
    assert FALLBACK_NOTE not in family_run("llama3", "sft")[1].reports[0]["line"]


def test_a_tokenizer_without_a_pad_gets_an_unused_special_token_distinct_from_eos(family_dirs):
    def chosen(family):
        raw = AutoTokenizer.from_pretrained(family_dirs(family))
        choice = choose_pad_token(raw, embedding_rows=embedding_rows(family_dirs(family)))
        return choice and choice.token

    assert chosen("llama3") == "<|reserved_special_token_0|>"
    assert chosen("mistral") == "<unk>"
    assert chosen("qwen2_5") is None and chosen("gemma2") is None  # they ship one
    llama = load_tokenizer(family_dirs("llama3"))
    assert llama.pad_token == "<|reserved_special_token_0|>"
    assert llama.pad_token_id != llama.eos_token_id


def test_a_pad_equal_to_eos_is_replaced(family_dirs):
    tokenizer = AutoTokenizer.from_pretrained(family_dirs("llama3"))
    tokenizer.pad_token = tokenizer.eos_token  # the usual quick fix, which PPO cannot use
    choice = choose_pad_token(tokenizer, embedding_rows=None)
    assert choice.token == "<|reserved_special_token_0|>" and not choice.added


def _bare_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(vocab={"a": 0, "</s>": 1}, merges=[]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>")


def test_a_new_pad_token_goes_in_a_spare_embedding_row_or_the_model_is_refused():
    choice = choose_pad_token(_bare_tokenizer(), embedding_rows=64)
    assert choice.token == "<|pad|>" and choice.added
    with pytest.raises(ValueError, match="no pad token distinct from EOS"):
        choose_pad_token(_bare_tokenizer(), embedding_rows=2)


def test_a_pad_id_of_zero_reaches_the_reward_model(family_dirs, tmp_path):
    """Gemma's <pad> is id 0, which `pad_token_id or eos_token_id` replaced with EOS."""
    path = family_dirs("gemma2")
    scorer = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    scorer.config.pad_token_id = None  # as a checkpoint whose config never named its pad
    scorer.save_pretrained(tmp_path)
    load_tokenizer(path).save_pretrained(tmp_path)
    assert load_reward_model(tmp_path).config.pad_token_id == 0


def test_ppo_reward_tokenizer_must_match_the_policy(family_dirs):
    llama = load_tokenizer(family_dirs("llama3"))
    assert tokenizer_mismatch(llama, load_tokenizer(family_dirs("llama3"))) is None
    assert "vocabularies differ" in tokenizer_mismatch(
        llama, load_tokenizer(family_dirs("qwen2_5"))
    )


def test_grpo_scores_with_a_reward_model_of_another_family(family_run, family_dirs, tmp_path):
    """GRPO renders each rollout with the reward model's own tokenizer and template, which is
    why launch refuses a mismatched reward tokenizer for PPO only."""
    raw, n_rows = FAMILY_RUNS["grpo"]
    result = train(
        "grpo",
        parse_job_config("grpo", raw),
        model_path=family_dirs("llama3"),
        dataset_dir=str(write_dataset(tmp_path / "data", "grpo", n_rows)),
        output_dir=str(tmp_path / "out"),
        reward_model_path=family_run("qwen2_5", "reward")[0].output_dir,
    )
    assert result.steps == 2 and "reward" in result.metrics


def test_sampling_stops_at_the_end_of_turn_token(family_dirs):
    """Gemma ends a reply with <end_of_turn>, not with its EOS; generation_config lists both."""
    path = family_dirs("gemma2")
    tokenizer = load_tokenizer(path)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model = forcing(load_causal_lm(path), end_of_turn)
    lengths = []
    original_generate = model.generate

    def recording_generate(**kwargs):
        output = original_generate(**kwargs)
        lengths.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    model.generate = recording_generate
    assert sample(model, tokenizer, PROMPTS, n=1, max_new_tokens=20) == [[""], [""]]
    assert lengths == [1]  # stopped after one token rather than 20


def test_generative_eval_answers_end_at_the_end_of_turn_token(family_dirs):
    path = family_dirs("gemma2")
    tokenizer = load_tokenizer(path)
    model = forcing(load_causal_lm(path), tokenizer.convert_tokens_to_ids("<end_of_turn>"))
    task = load_gen_task(shipped_tasks()["toy_qa_gen"])
    out = evaluate_generative(model, tokenizer, task, limit=1, max_new_tokens=4)
    assert out["samples"][0]["output"] == ""


def test_clean_text_keeps_tabs_and_newlines_and_drops_other_controls_and_replacement_chars():
    raw = "a\x00b\x1b[1m\tc\r\nd\re\x85f\x7f\u200bg\ufffd"
    assert clean_text(raw) == "ab[1m\tc\nd\nef\u200bg"


def test_cut_multibyte_characters_never_reach_the_text(family_dirs):
    tokenizer = load_tokenizer(family_dirs("llama3"))
    ids = tokenizer.encode("café ☕", add_special_tokens=False)
    cut = tokenizer.decode(ids[:-1])  # sampling stopped inside the cup's three bytes
    assert "\ufffd" in cut and "\ufffd" not in clean_text(cut)


def test_frozen_ppo_models_are_bf16_only_on_a_gpu_that_has_it():
    assert frozen_model_dtype(cuda=True, bf16_supported=True) == torch.bfloat16
    assert frozen_model_dtype(cuda=True, bf16_supported=False) == torch.float32
    assert frozen_model_dtype(cuda=False, bf16_supported=False) == torch.float32


@pytest.mark.parametrize("kind", ["sft", "reward", "dpo", "rloo", "grpo"])
def test_periodic_checkpoints_are_on_by_default_and_bounded(kind, tmp_path):
    args = common_args(parse_job_config(kind, {}), tmp_path)
    assert args["save_strategy"] == "steps" and args["save_steps"] == 200
    assert args["save_total_limit"] == 2
