"""Writes for the model registry and training jobs. Views, tasks and commands all call these."""

from .assist import (
    ai_annotator_for,
    ai_votes_cast,
    assist_request,
    assist_run_execute,
    assist_run_run,
    drafts_generate,
    project_drafter_set,
    vote_from_margin,
)
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
    "ai_annotator_for",
    "ai_votes_cast",
    "assist_request",
    "assist_run_execute",
    "assist_run_run",
    "checkpoint_describe",
    "checkpoint_register",
    "checkpoint_source_check",
    "drafts_generate",
    "job_cancel",
    "job_config_clean",
    "job_launch",
    "job_output_dir",
    "job_rerun",
    "playground_turn_execute",
    "playground_turn_request",
    "project_drafter_set",
    "run_training_job",
    "training_job_claim",
    "training_job_execute",
    "vote_from_margin",
]
