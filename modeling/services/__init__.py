"""Writes for the model registry and training jobs. Views, tasks and commands all call these."""

from .checkpoints import checkpoint_describe, checkpoint_register, checkpoint_source_check
from .jobs import (
    JobConfigInvalid,
    job_cancel,
    job_config_clean,
    job_launch,
    job_rerun,
)
from .playground import (
    PLAYGROUND_MAX_NEW_TOKENS,
    PLAYGROUND_ROLES,
    playground_turn_execute,
    playground_turn_request,
)
from .runner import (
    JobReporter,
    job_output_dir,
    run_training_job,
    training_job_claim,
    training_job_execute,
)

__all__ = [
    "PLAYGROUND_MAX_NEW_TOKENS",
    "PLAYGROUND_ROLES",
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
    "playground_turn_execute",
    "playground_turn_request",
    "run_training_job",
    "training_job_claim",
    "training_job_execute",
]
