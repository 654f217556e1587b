"""The pure-ML layer: the embedded tiny model, training jobs on TRL, sampling.

No Django here; the job models and Celery tasks call these functions (modeling/ml/training.py
describes the dataset shapes, the output layout and veredicto.json).

Names are imported on first use: the web process validates job configs (configs.py needs only
pydantic) and must not pay for importing torch, transformers and TRL (seconds, hundreds of MB).
"""

import importlib

_EXPORTS = {
    "CONFIG_CLASSES": "configs",
    "MAIN_METRIC": "configs",
    "JobConfig": "configs",
    "SFTJobConfig": "configs",
    "RewardJobConfig": "configs",
    "DPOJobConfig": "configs",
    "PPOJobConfig": "configs",
    "RLOOJobConfig": "configs",
    "GRPOJobConfig": "configs",
    "parse_job_config": "configs",
    "estimate_steps": "configs",
    "ProgressReporter": "progress",
    "register_reward": "rewards",
    "registered_rewards": "rewards",
    "TrainResult": "training",
    "train": "training",
    "generate": "generation",
    "chat_reply": "generation",
    "ReplyRefused": "generation",
    "sampling_engine": "generation",
    "load_causal_lm": "loading",
    "load_reward_model": "loading",
    "load_tokenizer": "loading",
    "read_model_card": "loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
