"""Which engine samples (vLLM where installed and CUDA is there, transformers elsewhere) and the
mapping of our sampling parameters onto vLLM's.

vLLM is never installed here: the mapping tests put a fake `vllm` package on sys.path (a
SamplingParams and an LLM that record what they are given), so what is checked is our side of
the call, not vLLM itself."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from modeling.ml import generation
from modeling.ml.generation import (
    chat_prompt_ids,
    sampling_engine,
    stop_token_ids,
    vllm_generate,
    vllm_sampling_params,
)
from modeling.ml.loading import load_causal_lm, load_tokenizer

FAKE_VLLM = """
class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Choice:
    def __init__(self, text):
        self.text = text


class _Output:
    def __init__(self, texts):
        self.outputs = [_Choice(t) for t in texts]


class LLM:
    calls = []

    def __init__(self, **kwargs):
        LLM.calls.append(("init", kwargs))

    def generate(self, prompts, params):
        LLM.calls.append(("generate", prompts, params))
        n = params.kwargs["n"]
        texts = [[f"reply {i}.{j}\\x07\\ufffd" for j in range(n)] for i in range(len(prompts))]
        return [_Output(replies) for replies in texts]
"""


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    package = tmp_path / "fake" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_VLLM))
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    importlib.invalidate_caches()
    yield importlib.import_module("vllm")
    sys.modules.pop("vllm", None)


def test_without_vllm_this_host_samples_with_transformers():
    assert importlib.util.find_spec("vllm") is None  # the premise of every test here
    assert sampling_engine() == "hf"


def test_vllm_is_chosen_only_with_cuda_as_well(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sampling_engine() == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sampling_engine() == "vllm"


def test_sampling_parameters_map_onto_vllms(fake_vllm):
    sampled = vllm_sampling_params(
        n=3, temperature=0.7, top_p=0.9, max_new_tokens=16, seed=5, stop_token_ids=[2, 7]
    ).kwargs
    assert sampled == {
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,  # no top-k, as sample() asks transformers (top_k=0)
        "max_tokens": 16,
        "seed": 5,
        "stop_token_ids": [2, 7],
        "stop": None,
        "skip_special_tokens": True,
    }
    greedy = vllm_sampling_params(
        n=1, temperature=0, top_p=0.5, max_new_tokens=4, seed=0, stop_token_ids=[2], stop=["\n"]
    ).kwargs
    assert (greedy["temperature"], greedy["top_p"], greedy["stop"]) == (0.0, 1.0, ["\n"])


def test_vllm_reads_the_same_prompt_ids_and_stops_as_transformers(
    fake_vllm, tiny_model_dir, monkeypatch
):
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    tokenizer = load_tokenizer(tiny_model_dir)
    text = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    ids = chat_prompt_ids(tokenizer, prompts[0])
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]  # what sample() feeds
    assert ids.count(tokenizer.bos_token_id) <= 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    replies = generation.generate(
        tiny_model_dir, prompts, n=2, temperature=0.7, top_p=0.9, max_new_tokens=8, seed=3
    )
    # Cleaned like transformers' output: no control characters, no U+FFFD.
    assert replies == [["reply 0.0", "reply 0.1"], ["reply 1.0", "reply 1.1"]]
    (_, init), (_, sent, params) = fake_vllm.LLM.calls[-2:]
    assert init["seed"] == 3
    assert sent[0] == {"prompt_token_ids": ids}
    model = load_causal_lm(tiny_model_dir)
    assert params.kwargs["stop_token_ids"] == stop_token_ids(model, tokenizer)
    assert (params.kwargs["n"], params.kwargs["max_tokens"]) == (2, 8)


def test_vllm_generate_merges_a_lora_adapter_first(fake_vllm, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    model = get_peft_model(load_causal_lm(tiny_model_dir), LoraConfig(r=2, task_type="CAUSAL_LM"))
    model.save_pretrained(adapter)
    vllm_generate(
        str(adapter),
        [[{"role": "user", "content": "Hi"}]],
        n=1,
        temperature=0,
        top_p=1.0,
        max_new_tokens=4,
        seed=0,
    )
    (_, init), _ = fake_vllm.LLM.calls[-2:]
    assert init["model"] != str(adapter) and "vllm-merged-" in init["model"]


# -- generative evaluations


def test_a_generative_eval_on_vllm_sends_the_transformers_prompts_and_scores_alike(
    fake_vllm, tiny_model_dir
):
    from evals.ml import evaluate_generative_vllm
    from evals.ml.generative import _prompts
    from evals.ml.tasks import GenItem, GenTask

    task = GenTask(
        name="t",
        items=[GenItem("What is 2 + 3?", "reply 0.0"), GenItem("Hi", "5")],
        chat=True,
        stop=["\n"],
    )
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    result = evaluate_generative_vllm(
        tiny_model_dir, tokenizer, task, max_new_tokens=4, do_sample=True, temperature=0.5, seed=2
    )
    (_, init), (_, sent, params) = fake_vllm.LLM.calls[-2:]
    _, _, encoded = _prompts(model, tokenizer, task, None, 4)
    assert sent == [{"prompt_token_ids": ids} for ids in encoded]
    assert params.kwargs["stop"] == ["\n"] and params.kwargs["temperature"] == 0.5
    assert params.kwargs["stop_token_ids"] == stop_token_ids(model, tokenizer)
    assert init["seed"] == 2
    # The fake answers "reply 0.0<BEL><U+FFFD>" (uncleaned, as a raw model could): scored as is.
    assert result["n"] == 2 and [s["target"] for s in result["samples"]] == ["reply 0.0", "5"]
    greedy = evaluate_generative_vllm(tiny_model_dir, tokenizer, task, max_new_tokens=4)
    assert fake_vllm.LLM.calls[-1][2].kwargs["temperature"] == 0.0
    assert greedy["n"] == 2


def test_a_streamed_reply_grows_by_prefixes_into_the_text_sample_returns(tiny_model_dir):
    """What a battle or playground page shows while a reply is written: each text handed on is
    the start of the final reply, the last is the reply itself, and streaming changes nothing
    about what is sampled."""
    model = load_causal_lm(tiny_model_dir, dtype=torch.float32, device="cpu")
    tokenizer = load_tokenizer(tiny_model_dir)
    chat = [[{"role": "user", "content": "Spell lamp backwards."}]]
    options = dict(n=1, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=3)
    shown: list[str] = []
    streamer = generation.ReplyStreamer(
        tokenizer, shown.append, stops=stop_token_ids(model, tokenizer), every=0
    )
    streamed = generation.sample(model, tokenizer, chat, streamer=streamer, **options)[0][0]
    plain = generation.sample(model, tokenizer, chat, **options)[0][0]
    assert streamed == plain
    assert len(shown) > 2 and shown[-1] == streamed
    for text in shown:
        assert streamed.startswith(text.rstrip())
    with pytest.raises(ValueError, match="one completion"):
        generation.sample(model, tokenizer, chat * 2, streamer=streamer, **options)
