"""Requesting and scheduling evaluations.

    eval_run_request(...)          an admin asks for one suite on one checkpoint (validated)
    schedule_default_evals(ckpt)   the suites every new checkpoint gets (called when a job succeeds)
    eval_defaults_request(...)     an admin asks for those by hand (a registered base model)
    eval_run_rerun(run)            the same inputs again, as a new run (results are never replaced)

Every run is validated before its row is written, and its Celery message is sent only when the
transaction commits; worker.run_eval does the work.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from core.roles import require_admin
from evals.ml.lm_eval_adapter import shipped_lm_eval_task_names
from evals.ml.tasks import shipped_tasks, task_kind
from evals.models import (
    POLICY_SUITES,
    REWARD_SUITES,
    EvalRun,
    ProjectChart,
    Suite,
)
from feedback.models import DatasetSnapshot, Project, SnapshotKind
from jobs.models import Status
from jobs.services import work_enqueue
from modeling.models import Checkpoint, CheckpointKind, TrainingJob

from .suites import (
    HELDOUT_PREFERENCES_TASK,
    HELDOUT_PROSE_TASK,
    SNAPSHOT_TEST_TASK,
)

logger = logging.getLogger(__name__)

# Knobs a run may set, by suite; anything else is an error rather than silently ignored.
COMMON_PARAMS = {"limit", "batch_size"}
# Generation is greedy unless a temperature is given; then it samples, seeded.
SAMPLING_PARAMS = {"temperature", "top_p", "seed"}
SUITE_PARAMS: dict[str, set[str]] = {
    Suite.PERPLEXITY: COMMON_PARAMS | {"task_path", "stride"},
    Suite.MULTIPLE_CHOICE: COMMON_PARAMS | {"task_path"},
    Suite.GENERATIVE: COMMON_PARAMS | {"task_path", "max_new_tokens"} | SAMPLING_PARAMS,
    Suite.REWARD_ACCURACY: COMMON_PARAMS | {"task_path", "best_of_n_path"},
    Suite.WIN_RATE: COMMON_PARAMS | {"task_path", "max_new_tokens"} | SAMPLING_PARAMS,
    # processes: data-parallel over that many devices under `accelerate launch`, as lm-eval's
    # own HF backend shards its requests (jobs/backends/local.py launches it).
    Suite.LM_EVAL: COMMON_PARAMS | {"include_path", "num_fewshot", "processes"},
}
FLOAT_PARAMS = {"temperature": (0.0, 10.0), "top_p": (0.0, 1.0)}  # low < value <= high
INT_PARAMS = {  # name: (lowest, highest)
    "limit": (1, 1_000_000),
    "batch_size": (1, 1024),
    "max_new_tokens": (1, 4096),
    "num_fewshot": (0, 64),
    "processes": (1, 64),
    "stride": (1, 1_000_000),
    "seed": (0, 2**31 - 1),  # at most the model's length, checked where the model is loaded
}
LM_EVAL_TASK = re.compile(r"^[\w.\-]{1,200}$")
MAX_PATH_LENGTH = 1000
TASK_MAX_LENGTH = EvalRun._meta.get_field("task").max_length


# --- validation --------------------------------------------------------------------------------


def _shipped_of_kind(kind: str) -> list[str]:
    return [name for name, path in shipped_tasks().items() if task_kind(path) == kind]


def suite_tasks(suite: str) -> list[str]:
    """The named tasks a suite runs offline without a task file (lm_eval also takes any task
    lm-eval knows; the shipped multiple-choice tasks are lm-eval tasks too)."""
    if suite == Suite.PERPLEXITY:
        return [HELDOUT_PROSE_TASK]
    if suite == Suite.MULTIPLE_CHOICE:
        return sorted(_shipped_of_kind("multiple_choice"))
    if suite in (Suite.GENERATIVE, Suite.WIN_RATE):
        return sorted(_shipped_of_kind("generative"))
    if suite == Suite.REWARD_ACCURACY:
        return [HELDOUT_PREFERENCES_TASK]
    return shipped_lm_eval_task_names()


def _clean_params(suite: str, params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValidationError({"params": "Params must be a JSON object."})
    unknown = set(params) - SUITE_PARAMS[suite]
    if unknown:
        allowed = ", ".join(sorted(SUITE_PARAMS[suite]))
        raise ValidationError(
            {"params": f"Unknown for {suite}: {', '.join(sorted(unknown))} (allowed: {allowed})."}
        )
    cleaned: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or value == "":
            continue
        if name in INT_PARAMS:
            low, high = INT_PARAMS[name]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValidationError({name: f"{name} is a whole number from {low} to {high}."})
        elif name in FLOAT_PARAMS:
            low, high = FLOAT_PARAMS[name]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValidationError({name: f"{name} is a number."})
            if not low < value <= high:
                raise ValidationError({name: f"{name} must be above {low:g} and at most {high:g}."})
            value = float(value)
        elif not isinstance(value, str) or not Path(value).is_absolute():
            # The worker may run elsewhere: only an absolute path means the same on both hosts.
            raise ValidationError({name: f"{name} must be an absolute path on the GPU workers."})
        elif len(value) > MAX_PATH_LENGTH or "\x00" in value:
            # PostgreSQL stores no NUL; the API, unlike the form, does not refuse it first.
            raise ValidationError({name: f"{name} must be a path of at most 1000 characters."})
        cleaned[name] = value
    return cleaned


def _clean_task(suite: str, task: str, params: dict[str, Any], snapshot) -> str:
    task = (task or "").strip()
    if params.get("task_path") and snapshot is not None:
        raise ValidationError({"task_path": "Score either a snapshot's test split or a file."})
    if params.get("task_path"):
        task = task or Path(params["task_path"]).stem
        if len(task) > TASK_MAX_LENGTH or "\x00" in task:
            raise ValidationError(
                {"task": f"Name the task in at most {TASK_MAX_LENGTH} characters."}
            )
        return task
    if suite == Suite.PERPLEXITY:
        if task not in ("", HELDOUT_PROSE_TASK):
            raise ValidationError(
                {"task": f"Perplexity runs on {HELDOUT_PROSE_TASK} or a task_path."}
            )
        return HELDOUT_PROSE_TASK
    if suite in (Suite.MULTIPLE_CHOICE, Suite.GENERATIVE, Suite.WIN_RATE):
        kind = "multiple_choice" if suite == Suite.MULTIPLE_CHOICE else "generative"
        choices = _shipped_of_kind(kind)
        if suite == Suite.WIN_RATE and not task and choices:
            return choices[0]  # its prompts are the shipped generative task's questions
        if task not in choices:
            raise ValidationError(
                {"task": f"Choose a shipped {kind} task ({', '.join(choices)}) or a task_path."}
            )
        return task
    if suite == Suite.REWARD_ACCURACY:
        return SNAPSHOT_TEST_TASK if snapshot is not None else HELDOUT_PREFERENCES_TASK
    if not LM_EVAL_TASK.match(task):
        raise ValidationError({"task": "Name the lm-eval task (letters, digits, _ . -)."})
    return task


def _validate(
    *,
    checkpoint: Checkpoint,
    suite: str,
    task: str,
    params: Any,
    reference: Checkpoint | None,
    judge: Checkpoint | None,
    snapshot: DatasetSnapshot | None,
) -> dict[str, Any]:
    """Every reason the run cannot be asked for, at once; returns the row's cleaned fields."""
    if suite not in Suite.values:
        raise ValidationError({"suite": f"Suite is one of {', '.join(Suite.values)}."})
    errors: dict[str, Any] = {}
    if suite in POLICY_SUITES and checkpoint.kind != CheckpointKind.POLICY:
        errors["checkpoint"] = f"{checkpoint.name} is a {checkpoint.kind} model, not a policy."
    if suite in REWARD_SUITES and checkpoint.kind != CheckpointKind.REWARD:
        errors["checkpoint"] = (
            f"{checkpoint.name} is a {checkpoint.kind} model, not a reward model."
        )
    if suite == Suite.WIN_RATE:
        reference = reference or checkpoint.parent
        if reference is None:
            errors["reference"] = "A win rate needs a reference policy to compare with."
        elif reference.pk == checkpoint.pk:
            errors["reference"] = "Compare with a different checkpoint."
        elif reference.kind != CheckpointKind.POLICY:
            errors["reference"] = f"{reference.name} is a {reference.kind} model, not a policy."
        if judge is None:
            errors["judge"] = "A win rate needs a reward model to judge the replies."
        elif judge.kind != CheckpointKind.REWARD:
            errors["judge"] = f"{judge.name} is a {judge.kind} model, not a reward model."
    else:
        if reference is not None:
            errors["reference"] = "Only a win rate compares with a reference model."
        if judge is not None:
            errors["judge"] = "Only a win rate uses a reward model as judge."
    if snapshot is not None:
        if suite != Suite.REWARD_ACCURACY:
            errors["snapshot"] = "Only reward accuracy reads a dataset snapshot."
        elif snapshot.kind != SnapshotKind.PREFERENCE:
            errors["snapshot"] = f"{snapshot.name!r} is a {snapshot.kind} snapshot."
        elif snapshot.status != Status.SUCCEEDED:
            errors["snapshot"] = f"Snapshot {snapshot.name!r} is {snapshot.status}, not ready."
        elif not snapshot.row_counts.get("test"):
            errors["snapshot"] = f"Snapshot {snapshot.name!r} has no test rows."
    cleaned: dict[str, Any] = {}
    try:
        cleaned["params"] = _clean_params(suite, params)
        cleaned["task"] = _clean_task(suite, task, cleaned["params"], snapshot)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    return {**cleaned, "reference": reference, "judge": judge, "snapshot": snapshot}


# --- requesting runs ---------------------------------------------------------------------------


def _create(
    *,
    checkpoint: Checkpoint,
    suite: str,
    task: str = "",
    params: Any = None,
    reference: Checkpoint | None = None,
    judge: Checkpoint | None = None,
    snapshot: DatasetSnapshot | None = None,
    created_by: AbstractBaseUser | None = None,
    triggered_by_job: TrainingJob | None = None,
) -> EvalRun:
    fields = _validate(
        checkpoint=checkpoint,
        suite=suite,
        task=task,
        params=params,
        reference=reference,
        judge=judge,
        snapshot=snapshot,
    )
    run = EvalRun.objects.create(
        checkpoint=checkpoint,
        suite=suite,
        created_by=created_by,
        triggered_by_job=triggered_by_job,
        **fields,
    )
    work_enqueue(run)
    return run


@transaction.atomic
def eval_run_request(
    *,
    checkpoint: Checkpoint,
    suite: str,
    task: str = "",
    params: dict[str, Any] | None = None,
    reference: Checkpoint | None = None,
    judge: Checkpoint | None = None,
    snapshot: DatasetSnapshot | None = None,
    requested_by: AbstractBaseUser | None,
) -> EvalRun:
    """Queue one suite on one checkpoint for a GPU worker. PermissionDenied for non-admins,
    ValidationError for anything that cannot run; either way nothing is written or queued.

    task: a shipped task name (multiple choice, generative; the win rate's prompts), an lm-eval
    task name, or empty for the suite's own data. params: limit, batch_size, max_new_tokens,
    task_path (a task file on the workers), include_path and num_fewshot (lm-eval). A win rate
    compares with `reference` (default: the checkpoint's parent) as judged by `judge`; reward
    accuracy reads `snapshot`'s test split, or the shipped pairs without one.
    """
    require_admin(requested_by, "run evaluations")
    return _create(
        checkpoint=checkpoint,
        suite=suite,
        task=task,
        params=params,
        reference=reference,
        judge=judge,
        snapshot=snapshot,
        created_by=requested_by,
    )


@transaction.atomic
def eval_run_rerun(*, run: EvalRun, requested_by: AbstractBaseUser | None) -> EvalRun:
    """A new run with the same inputs; the old one and its results stay as history."""
    require_admin(requested_by, "run evaluations")
    return _create(
        checkpoint=run.checkpoint,
        suite=run.suite,
        task=run.task,
        params=run.params,
        reference=run.reference,
        judge=run.judge,
        snapshot=run.snapshot,
        created_by=requested_by,
    )


def default_suites(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """What every new checkpoint is evaluated on. Policies: perplexity on the held-out prose,
    every shipped multiple-choice task and every shipped generative task. Reward models:
    accuracy on the shipped held-out pairs and, when it was trained on a preference snapshot
    with a test split, on that split. Value models: nothing."""
    if checkpoint.kind == CheckpointKind.POLICY:
        specs = [{"suite": Suite.PERPLEXITY, "task": HELDOUT_PROSE_TASK}]
        for name, path in shipped_tasks().items():
            kind = task_kind(path)
            suite = Suite.MULTIPLE_CHOICE if kind == "multiple_choice" else Suite.GENERATIVE
            specs.append({"suite": suite, "task": name})
        return specs
    if checkpoint.kind == CheckpointKind.REWARD:
        specs = [{"suite": Suite.REWARD_ACCURACY, "task": HELDOUT_PREFERENCES_TASK}]
        snapshot = checkpoint.snapshot
        if (
            snapshot is not None
            and snapshot.kind == SnapshotKind.PREFERENCE
            and snapshot.status == Status.SUCCEEDED
            and snapshot.row_counts.get("test")
        ):
            specs.append({"suite": Suite.REWARD_ACCURACY, "snapshot": snapshot})
        return specs
    return []


@transaction.atomic
def schedule_default_evals(
    *, checkpoint: Checkpoint, triggered_by_job: TrainingJob | None = None
) -> list[EvalRun]:
    """Queue the default suites for `checkpoint` (see default_suites) and return their runs.

    Called by the training service when a job succeeds, with that job: calling again for the
    same job returns the runs it already made, so a repeated "job succeeded" never evaluates
    twice. Without a job (a registered model) every call queues a fresh set. Runs are
    attributed to whoever launched the job, or registered the model.
    """
    # Serialise callers on the checkpoint row so that two deliveries cannot both see "no runs".
    Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk).values_list("pk").get()
    if triggered_by_job is not None:
        existing = list(
            EvalRun.objects.filter(checkpoint=checkpoint, triggered_by_job=triggered_by_job)
        )
        if existing:
            return sorted(existing, key=lambda run: run.pk)
    if triggered_by_job is not None:
        created_by = triggered_by_job.launched_by
    else:
        created_by = checkpoint.created_by
    return [
        _create(
            checkpoint=checkpoint,
            created_by=created_by,
            triggered_by_job=triggered_by_job,
            **spec,
        )
        for spec in default_suites(checkpoint)
    ]


@transaction.atomic
def eval_defaults_request(
    *, checkpoint: Checkpoint, requested_by: AbstractBaseUser | None
) -> list[EvalRun]:
    """An admin asks for the default suites by hand: a registered base model has no training
    job whose success would have scheduled them."""
    require_admin(requested_by, "run evaluations")
    return [
        _create(checkpoint=checkpoint, created_by=requested_by, **spec)
        for spec in default_suites(checkpoint)
    ]


def chart_default_set(*, project: Project, metric: str, set_by: AbstractBaseUser | None) -> None:
    """The metric the dashboard charts first for `project` (a column key, suite/task/metric);
    "" forgets it. set_by=None: the system (the demo loop)."""
    require_admin(set_by, "choose a project's chart")
    if not metric:
        ProjectChart.objects.filter(project=project).delete()
        return
    suite, _, rest = metric.partition("/")
    if suite not in Suite.values or "/" not in rest or len(metric) > 400:
        raise ValidationError({"metric": "Choose a metric of the dashboard's table."})
    ProjectChart.objects.update_or_create(project=project, defaults={"metric": metric})
