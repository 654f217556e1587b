"""Writes for the annotation workspace. Views, the API and management commands all call these."""

from .imports import ImportOptions, ImportReport, import_file, import_validate
from .judgements import (
    assignment_skip,
    demonstration_submit,
    judgement_edit,
    pairwise_submit,
    pairwise_vote_record,
    ranking_submit,
)
from .projects import (
    completion_create,
    item_create,
    project_create,
    project_update,
    prompt_create,
)
from .queue import task_next_for_annotator
from .search import search_index_pending, search_index_step, search_pending
from .snapshots import clean_policy, snapshot_build, snapshot_create, snapshot_request
from .validation import clean_labels, clean_messages, clean_text

__all__ = [
    "ImportOptions",
    "ImportReport",
    "assignment_skip",
    "clean_labels",
    "clean_messages",
    "clean_policy",
    "clean_text",
    "completion_create",
    "demonstration_submit",
    "import_file",
    "import_validate",
    "item_create",
    "judgement_edit",
    "pairwise_submit",
    "pairwise_vote_record",
    "project_create",
    "project_update",
    "prompt_create",
    "ranking_submit",
    "search_index_pending",
    "search_index_step",
    "search_pending",
    "snapshot_build",
    "snapshot_create",
    "snapshot_request",
    "task_next_for_annotator",
]
