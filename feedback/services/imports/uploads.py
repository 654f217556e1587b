"""Uploaded import files: stored for a preview and its import, removed when they are done.

An upload lives in a folder of its own, MEDIA_ROOT/uploads/<project>/<random>/<name>. Its
import removes it once it has finished, succeeded or failed; an upload whose preview is
refused is removed at once. A preview nobody confirmed (and the file of an import whose worker
died) is removed by `uploads_sweep` once its upload token has expired.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from uuid import uuid4

from django.conf import settings
from django.core.exceptions import ValidationError

from feedback.models import DataImport, ImportStatus, Project

from .readers import check_limits, detect_format

# How long a previewed upload waits for its import to be started (the upload token's life).
UPLOAD_KEPT_SECONDS = 24 * 3600


def upload_store(*, uploaded, project: Project) -> Path:
    """Save an uploaded file under MEDIA_ROOT/uploads/ and return its path."""
    name = Path(uploaded.name).name or "upload"
    detect_format(Path(name))
    if uploaded.size > settings.VEREDICTO_IMPORT_MAX_BYTES:
        raise ValidationError(
            {"file": f"File is {uploaded.size:,} bytes; the limit is "
                     f"{settings.VEREDICTO_IMPORT_MAX_BYTES:,}."}
        )  # fmt: skip
    directory = _root() / str(project.pk) / uuid4().hex
    directory.mkdir(parents=True)
    path = directory / name
    try:
        with path.open("wb") as out:
            for chunk in uploaded.chunks():
                out.write(chunk)
        check_limits(path)
    except BaseException:
        upload_discard(path)
        raise
    return path


def upload_discard(path: Path) -> None:
    """Remove an upload and its folder; a path that is not an upload is left alone."""
    folder = path.parent
    if folder.parent.parent == _root():
        shutil.rmtree(folder, ignore_errors=True)


def uploads_sweep() -> int:
    """Remove the uploads older than UPLOAD_KEPT_SECONDS that no queued or running import
    reads; returns how many."""
    root = _root()
    if not root.is_dir():
        return 0
    waiting = DataImport.objects.filter(status__in=[ImportStatus.QUEUED, ImportStatus.RUNNING])
    in_use = {
        (Path(settings.MEDIA_ROOT) / f).parent for f in waiting.values_list("file", flat=True)
    }
    cutoff = time.time() - UPLOAD_KEPT_SECONDS
    removed = 0
    for folder in root.glob("*/*"):
        if folder.is_dir() and folder not in in_use and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _root() -> Path:
    return Path(settings.MEDIA_ROOT) / "uploads"
