"""Writes for evaluation: requesting and scheduling runs, and running them on a worker."""

from .battles import battle_start, battle_vote, live_arena_update
from .runs import (
    chart_default_set,
    default_suites,
    eval_defaults_request,
    eval_run_request,
    eval_run_rerun,
    schedule_default_evals,
    suite_tasks,
)
from .suites import EvalInputError, lm_eval_metrics
from .uploads import eval_task_file_discard, eval_task_file_store
from .worker import eval_run_execute, eval_run_record, mean_of, proportion_metric, run_eval

__all__ = [
    "EvalInputError",
    "battle_start",
    "battle_vote",
    "chart_default_set",
    "default_suites",
    "eval_defaults_request",
    "eval_run_execute",
    "eval_run_record",
    "eval_run_request",
    "eval_run_rerun",
    "eval_task_file_discard",
    "eval_task_file_store",
    "live_arena_update",
    "lm_eval_metrics",
    "mean_of",
    "proportion_metric",
    "run_eval",
    "schedule_default_evals",
    "suite_tasks",
]
