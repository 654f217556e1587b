"""Launch-form presets: starting values for a model's size and for LoRA, as data.

A preset is a dict of job-config values (modeling/ml/configs.py field names) that the launch form
puts in its inputs when the page is opened with `?preset=<name>` (several apply in order, so
`?preset=7b&preset=lora` is the 7B shape with LoRA's learning rate). Nothing is launched or
stored: the admin sees the values, may change them, and launches. Values a kind does not have
(`max_length` for PPO, say) are skipped, and every preset must validate for every kind
(tests/modeling/test_presets.py).

The learning rate depends on the kind (DPO's is a hundredth of SFT's), so a preset gives it as a
multiple of the kind's default, `learning_rate_scale`: LoRA trains few parameters from zero and
wants about ten times the full fine-tuning rate (the LoRA and QLoRA papers' and TRL's examples:
2e-4 for LoRA SFT against 2e-5 in full).
"""

from __future__ import annotations

from typing import Any

from modeling.ml import CONFIG_CLASSES  # plain pydantic: no torch here

PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "label": "Small model (under 1B)",
        "description": "Full fine-tuning, 8 rows a step, no gradient checkpointing.",
        "values": {
            "lora": False,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "gradient_checkpointing": False,
            "warmup_ratio": 0.03,
            "lr_scheduler_type": "cosine",
        },
    },
    "7b": {
        "label": "7B",
        "description": (
            "LoRA rank 16 on one 80 GB GPU: 2 rows a step, 8 accumulated (16 per update), "
            "gradient checkpointing, bf16."
        ),
        "values": {
            "lora": True,
            "lora_rank": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.05,
            "batch_size": 2,
            "gradient_accumulation_steps": 8,
            "gradient_checkpointing": True,
            "precision": "bf16",
            "warmup_ratio": 0.03,
            "lr_scheduler_type": "cosine",
            "learning_rate_scale": 10,
        },
    },
    "13b": {
        "label": "13B and larger",
        "description": (
            "QLoRA (4-bit base, LoRA rank 16): 1 row a step, 16 accumulated, gradient "
            "checkpointing, bf16. Needs GPU workers with bitsandbytes."
        ),
        "values": {
            "lora": True,
            "quantization": "4bit",
            "lora_rank": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.05,
            "batch_size": 1,
            "gradient_accumulation_steps": 16,
            "gradient_checkpointing": True,
            "precision": "bf16",
            "warmup_ratio": 0.03,
            "lr_scheduler_type": "cosine",
            "learning_rate_scale": 10,
        },
    },
    "lora": {
        "label": "LoRA",
        "description": "LoRA rank 16 on every linear layer, at ten times the full learning rate.",
        "values": {
            "lora": True,
            "lora_rank": 16,
            "lora_alpha": 32,
            "lora_targets": "all-linear",
            "learning_rate_scale": 10,
        },
    },
}


def preset_values(*, kind: str, names: list[str]) -> dict[str, Any]:
    """The job-config values the named presets give for `kind`, applied in order. Unknown names
    are skipped (a stale link must not break the page)."""
    fields = CONFIG_CLASSES[kind].model_fields
    values: dict[str, Any] = {}
    for name in names:
        preset = PRESETS.get(name)
        if preset is None:
            continue
        for key, value in preset["values"].items():
            if key == "learning_rate_scale":
                # Rounded so that 2e-5 * 10 shows as 0.0002, not 0.00020000000000000001.
                values["learning_rate"] = float(f"{fields['learning_rate'].default * value:.3g}")
            elif key in fields:
                values[key] = value
    if kind == "ppo":
        values.pop("quantization", None)  # PPO loads its models itself: no QLoRA there
    return values
