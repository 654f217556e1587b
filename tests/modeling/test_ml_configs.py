"""Job configs: validation and step estimates. Pure Python, no torch."""

import pydantic
import pytest

from modeling.ml import (
    CONFIG_CLASSES,
    MAIN_METRIC,
    DPOJobConfig,
    GRPOJobConfig,
    SFTJobConfig,
    estimate_steps,
    parse_job_config,
)


def test_every_kind_has_a_config_class_and_a_main_metric():
    assert set(CONFIG_CLASSES) == {"sft", "reward", "dpo", "ppo", "rloo", "grpo"}
    assert set(MAIN_METRIC) == set(CONFIG_CLASSES)
    for kind, cls in CONFIG_CLASSES.items():
        assert isinstance(parse_job_config(kind, {}), cls)


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(pydantic.ValidationError) as error:
        parse_job_config("sft", {"learning_rat": 1e-4})
    assert "learning_rat" in str(error.value)
    assert "Extra inputs are not permitted" in str(error.value)


def test_a_key_of_another_kind_is_unknown_too():
    with pytest.raises(pydantic.ValidationError, match="beta"):
        parse_job_config("sft", {"beta": 0.1})
    assert parse_job_config("dpo", {"beta": 0.2}).beta == 0.2


@pytest.mark.parametrize(
    "raw",
    [
        {"learning_rate": 0},
        {"learning_rate": "fast"},
        {"batch_size": 0},
        {"max_steps": -1},
        {"precision": "fp8"},
        {"lora_dropout": 1.5},
    ],
)
def test_bad_values_are_errors(raw):
    with pytest.raises(pydantic.ValidationError):
        parse_job_config("sft", raw)


def test_unknown_kind_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown training kind 'kto'"):
        parse_job_config("kto", {})


def test_group_size_must_divide_the_generation_batch():
    with pytest.raises(pydantic.ValidationError, match="multiple of num_generations"):
        parse_job_config("grpo", {"batch_size": 6, "num_generations": 4})
    assert (
        parse_job_config(
            "grpo", {"batch_size": 4, "gradient_accumulation_steps": 2}
        ).num_generations
        == 8
    )


def test_configs_are_frozen_and_round_trip_through_json():
    config = parse_job_config("dpo", {"beta": 0.3, "lora": True, "lora_targets": ["q_proj"]})
    assert parse_job_config("dpo", config.model_dump(mode="json")) == config
    with pytest.raises(pydantic.ValidationError):
        config.beta = 1.0


def test_estimate_steps_follows_the_trainer_arithmetic():
    # Trainer: ceil(rows / batch) batches, ceil(batches / grad_accum) updates, times epochs.
    sft = SFTJobConfig(batch_size=4, gradient_accumulation_steps=2, epochs=3)
    assert estimate_steps("sft", sft, 10) == 3 * 2  # 3 batches -> 2 updates per epoch
    assert estimate_steps("sft", SFTJobConfig(epochs=0.5, batch_size=2), 10) == 3
    assert estimate_steps("dpo", DPOJobConfig(max_steps=7), 1000) == 7
    assert estimate_steps("sft", sft, 0) == 0
    # PPO: ceil(epochs * rows / (batch * grad_accum)).
    assert estimate_steps("ppo", parse_job_config("ppo", {"batch_size": 4}), 10) == 3
    # GRPO: whole groups; 8 completions per update = 2 prompts of 4; the odd prompt is dropped.
    grpo = GRPOJobConfig(batch_size=8, num_generations=4, epochs=2)
    assert estimate_steps("grpo", grpo, 5) == 2 * 2


# --- precision: the job config's choice as the trainers receive it ------------------------------


def _on_gpu(monkeypatch, *, bf16: bool) -> None:
    """This machine has no GPU: answer torch's two questions as an H100 (or a V100) would."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize(
    "precision, bf16_gpu, expected",
    [
        ("auto", True, {"bf16": True, "fp16": False}),
        ("auto", False, {"bf16": False, "fp16": False}),
        ("bf16", True, {"bf16": True, "fp16": False}),
        ("fp16", True, {"bf16": False, "fp16": True}),
        ("fp32", True, {"bf16": False, "fp16": False}),
    ],
)
def test_on_a_gpu_the_config_precision_becomes_the_trainer_mixed_precision(
    monkeypatch, precision, bf16_gpu, expected
):
    from modeling.ml.training import device_args

    _on_gpu(monkeypatch, bf16=bf16_gpu)
    config = parse_job_config("sft", {"precision": precision, "gradient_checkpointing": True})

    args = device_args(config)

    assert {key: args[key] for key in ("bf16", "fp16")} == expected
    assert args["activation_checkpointing"] is True
    assert "use_cpu" not in args


def test_on_cpu_training_is_fp32_and_mixed_precision_is_refused(monkeypatch):
    import torch

    from modeling.ml.training import device_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU host
    assert device_args(parse_job_config("dpo", {})) == {
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "activation_checkpointing": False,
    }
    with pytest.raises(ValueError, match="needs a GPU"):
        device_args(parse_job_config("dpo", {"precision": "bf16"}))


# -- schedule, QLoRA and packing settings (issue #14)


def test_schedule_settings_have_transformers_defaults_and_bounds():
    config = parse_job_config("dpo", {})
    assert (config.warmup_steps, config.warmup_ratio, config.lr_scheduler_type) == (0, 0, "linear")
    assert (config.weight_decay, config.max_grad_norm, config.eval_steps) == (0, 1.0, None)
    for bad in [
        {"warmup_ratio": 1.0},
        {"warmup_steps": -1},
        {"lr_scheduler_type": "sawtooth"},
        {"max_grad_norm": 0},
        {"eval_steps": 0},
    ]:
        with pytest.raises(pydantic.ValidationError):
            parse_job_config("sft", bad)


def test_warmup_is_given_in_steps_or_as_a_ratio_not_both():
    with pytest.raises(pydantic.ValidationError, match="warmup_steps and warmup_ratio exclude"):
        parse_job_config("sft", {"warmup_steps": 10, "warmup_ratio": 0.1})


def test_4bit_quantization_trains_lora_adapters_and_not_ppo():
    with pytest.raises(pydantic.ValidationError, match="set lora to true"):
        parse_job_config("sft", {"quantization": "4bit"})
    with pytest.raises(pydantic.ValidationError, match="not supported for ppo"):
        parse_job_config("ppo", {"quantization": "4bit", "lora": True})
    with pytest.raises(pydantic.ValidationError):
        parse_job_config("sft", {"quantization": "8bit", "lora": True})
    assert parse_job_config("grpo", {"quantization": "4bit", "lora": True}).quantization == "4bit"


def test_packing_is_an_sft_setting():
    assert parse_job_config("sft", {"packing": True}).packing is True
    with pytest.raises(pydantic.ValidationError, match="packing"):
        parse_job_config("dpo", {"packing": True})


# -- DPO loss variants, reward centring, verifiable rewards


def test_dpo_offers_trl_loss_variants_and_the_rpo_combination():
    assert parse_job_config("dpo", {}).loss_type == ["sigmoid"]
    assert parse_job_config("dpo", {"loss_type": ["ipo"]}).loss_type == ["ipo"]
    rpo = parse_job_config(
        "dpo",
        {
            "loss_type": ["sigmoid", "sft"],
            "loss_weights": [1.0, 0.5],
            "precompute_ref_log_probs": True,
        },
    )
    assert rpo.loss_weights == [1.0, 0.5] and rpo.precompute_ref_log_probs


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "1 weights for 2 loss types"),
        ({"loss_type": ["sft"]}, "alone is SFT"),
        ({"loss_type": ["sigmoid", "sigmoid"]}, "names a loss twice"),
        ({"loss_type": ["kto"]}, "loss_type"),
        ({"loss_type": []}, "loss_type"),
    ],
)
def test_dpo_loss_settings_that_make_no_sense_are_refused(raw, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        parse_job_config("dpo", raw)


def test_dpo_config_names_are_trl_dpoconfig_fields():
    import dataclasses

    from trl import DPOConfig, RewardConfig

    names = {f.name for f in dataclasses.fields(DPOConfig)}
    assert {"loss_type", "loss_weights", "precompute_ref_log_probs", "beta"} <= names
    assert "center_rewards_coefficient" in {f.name for f in dataclasses.fields(RewardConfig)}


def test_reward_centring_is_off_unless_asked():
    assert parse_job_config("reward", {}).center_rewards_coefficient is None
    assert (
        parse_job_config("reward", {"center_rewards_coefficient": 0.01}).center_rewards_coefficient
        == 0.01
    )
    with pytest.raises(pydantic.ValidationError):
        parse_job_config("reward", {"center_rewards_coefficient": -1})


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_grouped_kinds_take_registered_reward_functions_with_weights(kind):
    config = parse_job_config(
        kind, {"reward_functions": ["exact_match", "format"], "reward_weights": [1.0, 0.2]}
    )
    assert config.reward_functions == ["exact_match", "format"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"reward_functions": ["nope"]}, r"unknown reward function\(s\) \['nope'\]; registered: "),
        ({"reward_functions": ["format", "format"]}, "named twice"),
        ({"reward_functions": ["format"], "reward_weights": [1, 1, 1]}, "3 weights for 1"),
        ({"format_pattern": "("}, "not a valid regular expression"),
    ],
)
def test_reward_function_settings_are_checked(raw, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        parse_job_config("grpo", raw)


def test_ppo_takes_no_reward_functions():
    with pytest.raises(pydantic.ValidationError, match="reward_functions"):
        parse_job_config("ppo", {"reward_functions": ["format"]})
