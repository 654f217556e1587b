"""Reads for the evaluation screens; each function is a fixed, small number of queries."""

from .arena import ARENA_ROUNDS, Leaderboard, arena_battles, arena_leaderboard, arena_projects
from .dashboard import (
    Dashboard,
    dashboard,
    dashboard_checkpoints,
    dashboard_csv_rows,
    lineage_board,
    spreadsheet_safe,
)
from .results import (
    SUITE_DEFINITIONS,
    Cell,
    Column,
    Comparison,
    checkpoint_metrics,
    checkpoint_runs,
    comparison,
    eval_runs,
    latest_results,
    run_detail,
    run_samples,
    runs_recent,
)

__all__ = [
    "ARENA_ROUNDS",
    "SUITE_DEFINITIONS",
    "Cell",
    "Column",
    "Comparison",
    "Dashboard",
    "Leaderboard",
    "arena_battles",
    "arena_leaderboard",
    "arena_projects",
    "checkpoint_metrics",
    "checkpoint_runs",
    "comparison",
    "dashboard",
    "dashboard_checkpoints",
    "dashboard_csv_rows",
    "eval_runs",
    "latest_results",
    "lineage_board",
    "run_detail",
    "run_samples",
    "runs_recent",
    "spreadsheet_safe",
]
