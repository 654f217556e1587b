"""The computation layer of evaluation and leaderboards: no Django, plain functions on models.

    perplexity / rolling_loglikelihood / strided_perplexity    evals/ml/perplexity.py
    load_mc_task / evaluate_mc                                 evals/ml/tasks.py, multiple_choice.py
    load_gen_task / evaluate_generative                        evals/ml/tasks.py, generative.py
    reward_accuracy / reward_win_rate                          evals/ml/reward.py
    reward_model_diagnostics (calibration, buckets, best-of-n) evals/ml/reward_diagnostics.py
    bradley_terry / online_elo                                 evals/ml/arena.py
    run_lm_eval (optional lm-evaluation-harness)               evals/ml/lm_eval_adapter.py
    shipped_tasks (task files in evals/tasks_data/)            loop/taskgen.py writes them
    loglikelihood_tokens (the scoring under all of them)       evals/ml/lm.py, causal_blocks.py

Each metric follows a named reference definition (lm-evaluation-harness, Hugging Face, FastChat,
RewardBench), stated in its docstring and, for the dashboard, in evals/ml/definitions.py.

Names are imported on first use, as in modeling.ml: the web process reads the definitions and
the arena maths without importing torch and transformers. `perplexity` is also the name of its
submodule, and importing evals.ml.perplexity makes the package attribute that module: import
the function from evals.ml.perplexity.
"""

import importlib

_EXPORTS = {
    "PERPLEXITY_DEFINITION": "definitions",
    "STRIDED_PERPLEXITY_DEFINITION": "definitions",
    "MULTIPLE_CHOICE_DEFINITION": "definitions",
    "REWARD_ACCURACY_DEFINITION": "definitions",
    "WIN_RATE_DEFINITION": "definitions",
    "ARENA_DEFINITION": "definitions",
    "rolling_loglikelihood": "perplexity",
    "perplexity": "perplexity",
    "strided_perplexity": "perplexity",
    "MCTask": "tasks",
    "GenTask": "tasks",
    "load_mc_task": "tasks",
    "load_gen_task": "tasks",
    "load_text_set": "tasks",
    "load_preference_pairs": "tasks",
    "shipped_tasks": "tasks",
    "task_kind": "tasks",
    "evaluate_mc": "multiple_choice",
    "evaluate_generative": "generative",
    "evaluate_generative_vllm": "generative",
    "generation_batch_size": "generative",
    "reward_accuracy": "reward",
    "reward_win_rate": "reward",
    "reward_scores": "reward",
    "pair_scores": "reward",
    "accuracy_of_scores": "reward",
    "reward_model_diagnostics": "reward",
    "load_best_of_n": "reward_diagnostics",
    "REWARD_DIAGNOSTICS_DEFINITIONS": "reward_diagnostics",
    "BattleCounts": "arena",
    "battle_counts": "arena",
    "bradley_terry": "arena",
    "online_elo": "arena",
    "run_lm_eval": "lm_eval_adapter",
    "LmEvalNotInstalled": "lm_eval_adapter",
    "shipped_lm_eval_task_names": "lm_eval_adapter",
    "eval_device_dtype": "lm",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
