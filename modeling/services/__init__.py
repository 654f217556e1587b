"""Writes for the model registry and training jobs. Views, tasks and commands all call these."""

from .checkpoints import checkpoint_describe, checkpoint_register, checkpoint_source_check
from .comparisons import (
    ComparisonOutcome,
    SamplingParams,
    comparisons_generate,
    comparisons_request,
)
from .jobs import (
    JobConfigInvalid,
    job_cancel,
    job_config_clean,
    job_launch,
    job_mark_stale,
    job_rerun,
    jobs_fail_orphaned,
)
from .runner import JobReporter, job_output_dir, run_training_job

__all__ = [
    "ComparisonOutcome",
    "JobConfigInvalid",
    "JobReporter",
    "SamplingParams",
    "checkpoint_describe",
    "checkpoint_register",
    "checkpoint_source_check",
    "comparisons_generate",
    "comparisons_request",
    "job_cancel",
    "job_config_clean",
    "job_launch",
    "job_mark_stale",
    "job_output_dir",
    "job_rerun",
    "jobs_fail_orphaned",
    "run_training_job",
]
