"""Task files people upload for a run: read as the worker will read them, then kept under
MEDIA_ROOT/eval_tasks/ (the storage the web process and the GPU workers share, as for dataset
snapshots), so that the run's task_path names the same file on both.

    path = eval_task_file_store(uploaded=request.FILES["task_file"], suite="perplexity")
    eval_run_request(..., params={"task_path": str(path)})
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.text import get_valid_filename

from evals.ml.tasks import load_gen_task, load_mc_task, load_preference_pairs, load_text_set
from evals.models import Suite

UPLOAD_DIRECTORY = "eval_tasks"
MAX_TASK_FILE_BYTES = 20 * 1024 * 1024  # the shipped files are a few kB; a text set is text
# What each suite reads from its task file (evals/ml/tasks.py documents the formats).
LOADERS: dict[str, Callable[[Path], Any]] = {
    Suite.PERPLEXITY: load_text_set,
    Suite.MULTIPLE_CHOICE: load_mc_task,
    Suite.GENERATIVE: load_gen_task,
    Suite.WIN_RATE: load_gen_task,
    Suite.REWARD_ACCURACY: load_preference_pairs,
}


def eval_task_file_store(*, uploaded, suite: str) -> Path:
    """Check an uploaded JSONL task file for `suite` and keep it; returns its absolute path.
    ValidationError (on "task_file", naming the line) for anything the run could not read, and
    then nothing is kept."""
    loader = LOADERS.get(suite)
    if loader is None:
        raise ValidationError({"task_file": "This suite reads no uploaded file."})
    name = get_valid_filename(Path(uploaded.name or "").name) if uploaded.name else ""
    if not name.endswith(".jsonl") or name == ".jsonl":
        raise ValidationError({"task_file": "Upload a JSON Lines file (name ending in .jsonl)."})
    if uploaded.size > MAX_TASK_FILE_BYTES:
        raise ValidationError(
            {"task_file": f"File is {uploaded.size:,} bytes; the limit is {MAX_TASK_FILE_BYTES:,}."}
        )
    directory = Path(settings.MEDIA_ROOT).resolve() / UPLOAD_DIRECTORY / uuid4().hex
    directory.mkdir(parents=True)
    path = directory / name
    with path.open("wb") as out:
        for chunk in uploaded.chunks():
            out.write(chunk)
    try:
        if not loader(path):
            raise ValueError(f"{name}: no items")
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise ValidationError({"task_file": f"Bad task file: {exc}"}) from exc
    return path


def eval_task_file_discard(path: Path) -> None:
    """Remove an upload whose run was refused after all (its folder holds only it)."""
    upload_root = (Path(settings.MEDIA_ROOT) / UPLOAD_DIRECTORY).resolve()
    if path.parent.parent == upload_root:
        shutil.rmtree(path.parent, ignore_errors=True)
