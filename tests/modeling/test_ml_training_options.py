"""Job-config options of issue #14 mapped onto TRL and run on the tiny model, on CPU: the
learning-rate schedule, evaluation every N steps, QLoRA's 4-bit loading (its config; the load
itself needs CUDA and bitsandbytes) and SFT packing."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from modeling.ml import parse_job_config, train
from modeling.ml.training import bnb_4bit_config, build_trainer, quantization_config
from tests.modeling.test_ml_training import RecordingReporter, write_dataset


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sft_trainer(tiny_model_dir, tmp_path, raw):
    from datasets import Dataset

    from modeling.ml.loading import load_tokenizer
    from modeling.ml.progress import ProgressCallback
    from modeling.ml.training import load_rows

    data = write_dataset(tmp_path / "data", "sft")
    rows: Dataset = load_rows(data / "train.jsonl", "sft")
    return build_trainer(
        "sft",
        parse_job_config("sft", raw),
        output=tmp_path / "out",
        base_path=tiny_model_dir,
        tokenizer=load_tokenizer(tiny_model_dir),
        train_rows=rows,
        eval_rows=rows,
        reward_model_path=None,
        callback=ProgressCallback(RecordingReporter()),
    )


def test_schedule_settings_reach_the_trainer(tiny_model_dir, tmp_path):
    raw = {
        "warmup_ratio": 0.1,
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.01,
        "max_grad_norm": 0.5,
        "eval_steps": 3,
    }
    args = sft_trainer(tiny_model_dir, tmp_path, raw).args
    assert (args.warmup_steps, args.get_warmup_steps(100)) == (0.1, 10)
    assert args.lr_scheduler_type == "cosine"
    assert (args.weight_decay, args.max_grad_norm) == (0.01, 0.5)
    assert (args.eval_strategy, args.eval_steps) == ("steps", 3)

    args = sft_trainer(tiny_model_dir, tmp_path, {"warmup_steps": 7}).args
    assert args.get_warmup_steps(100) == 7
    assert args.eval_strategy == "no"  # eval_steps unset: only the evaluation after training


def test_eval_steps_evaluates_while_training(tiny_model_dir, tmp_path):
    data = write_dataset(tmp_path / "data", "dpo")  # writes a test split
    raw = {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 2, "max_length": 64}
    result = train(
        "dpo",
        parse_job_config("dpo", {**raw, "eval_steps": 1}),
        model_path=tiny_model_dir,
        dataset_dir=str(data),
        output_dir=str(tmp_path / "out"),
    )
    assert "eval_loss" in result.metrics
    state = (Path(result.output_dir) / "trainer_state.json").is_file()  # not saved: cleaned up
    assert not state


def test_qlora_loads_the_base_in_nf4_with_bf16_compute():
    quant = bnb_4bit_config()
    assert quant.load_in_4bit and not quant.load_in_8bit
    assert quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert quant.bnb_4bit_use_double_quant
    assert quantization_config(parse_job_config("sft", {})) is None


@pytest.mark.skipif(
    torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
    reason="this host can load 4-bit models",
)
def test_qlora_on_a_worker_without_cuda_or_bitsandbytes_fails_with_the_reason(
    tiny_model_dir, tmp_path
):
    config = parse_job_config("sft", {"quantization": "4bit", "lora": True})
    with pytest.raises(ValueError, match="needs a CUDA GPU with bitsandbytes"):
        quantization_config(config)
    with pytest.raises(ValueError, match="needs a CUDA GPU with bitsandbytes"):
        sft_trainer(tiny_model_dir, tmp_path, {"quantization": "4bit", "lora": True})


# -- packing


def test_packed_sft_trains_on_every_token_once_in_fewer_rows(tiny_model_dir, tmp_path):
    data = write_dataset(tmp_path / "data", "sft")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    lengths = [
        len(
            tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for row in rows
    ]
    raw = {"learning_rate": 1e-3, "batch_size": 2, "epochs": 2, "max_length": 64}

    reporter = RecordingReporter()
    packed = train(
        "sft",
        parse_job_config("sft", {**raw, "packing": True}),
        model_path=tiny_model_dir,
        dataset_dir=str(data),
        output_dir=str(tmp_path / "packed"),
        reporter=reporter,
    )
    padded = train(
        "sft",
        parse_job_config("sft", raw),
        model_path=tiny_model_dir,
        dataset_dir=str(data),
        output_dir=str(tmp_path / "padded"),
    )

    # Every token of every conversation, once per epoch, and no padding counted.
    assert packed.train_tokens == padded.train_tokens == 2 * sum(lengths)
    # 4 conversations of about a dozen tokens fit into ceil(total / 64) packed rows: one batch.
    packed_rows = math.ceil(sum(lengths) / 64)
    assert packed.steps == 2 * math.ceil(packed_rows / 2) < padded.steps == 2 * 2
    assert math.isfinite(packed.metrics["loss"])
    # The progress bar's total is the packed one, and the log says why it shrank.
    line = f"packed 4 conversations into {packed_rows} rows of up to 64 tokens: {packed.steps} "
    line += "steps"
    assert line in [report["line"] for report in reporter.reports]
    assert reporter.reports[-1]["total"] == packed.steps


def test_packed_rows_attend_within_each_conversation(tiny_model_dir):
    """Padding-free rows carry only position ids; the model must keep conversations apart.

    transformers derives the block-diagonal mask from the position ids only without a KV cache
    (with one, the second conversation attends to the first); SFTTrainer trains with
    use_cache=False, as here."""
    from modeling.ml.loading import load_causal_lm

    model = load_causal_lm(tiny_model_dir).eval()
    first, second = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11]])
    with torch.no_grad():
        alone = [model(input_ids=ids).logits for ids in (first, second)]
        packed = model(
            input_ids=torch.cat([first, second], dim=1),
            position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]),
            use_cache=False,
        ).logits
    torch.testing.assert_close(packed[:, :4], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[:, 4:], alone[1], atol=1e-5, rtol=1e-4)
