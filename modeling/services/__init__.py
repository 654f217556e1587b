"""Writes for the model registry and training jobs. Views, tasks and commands all call these."""

from .checkpoints import checkpoint_describe, checkpoint_register, checkpoint_source_check
from .jobs import (
    JobConfigInvalid,
    job_cancel,
    job_config_clean,
    job_launch,
    job_rerun,
)
from .runner import (
    JobReporter,
    job_output_dir,
    run_training_job,
    training_job_claim,
    training_job_execute,
)

__all__ = [
    "JobConfigInvalid",
    "JobReporter",
    "checkpoint_describe",
    "checkpoint_register",
    "checkpoint_source_check",
    "job_cancel",
    "job_config_clean",
    "job_launch",
    "job_output_dir",
    "job_rerun",
    "run_training_job",
    "training_job_claim",
    "training_job_execute",
]
