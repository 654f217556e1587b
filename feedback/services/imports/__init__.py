"""Importing prompts, completions and existing labels from files.

Formats: JSONL, CSV, Parquet and a folder written by ``datasets.Dataset.save_to_disk``. Rows are
read as a stream, so a million-row file never needs a million rows in memory.

Shapes (detected per row, or forced with ``shape``):

- ``prompts``: ``{"prompt": "..."}`` or ``{"messages": [...]}`` ending with a user turn, optional
  ``system``, ``tags``, ``split``, ``id``.
- ``comparisons``: a prompt plus ``"completions": [{"text", "model"}, ...]``: pairwise items (all
  pairs, adjacent pairs or first-vs-rest) or one ranking item.
- ``preference``: ``{"prompt", "chosen", "rejected"}`` with strings or message lists, including the
  Anthropic-HH layout (``chosen``/``rejected`` carry the whole conversation, as message lists or as
  "\\n\\nHuman: … \\n\\nAssistant: …" text) and the UltraFeedback-binarised one. These become
  pairwise items already judged (chosen = A), marked ``origin=imported`` with their source.
- ``sft``: ``{"messages": [..., assistant]}`` or ``{"prompt", "completion"}``: accepted, imported
  demonstrations.

Imported labels belong to their source, not to whoever imported the file: they are owned by one
system user (``owner``) and take none of an item's ``overlap`` slots, which stay for annotators.

The import is atomic and idempotent: every row is validated (errors carry the row number), nothing
is written unless all rows are valid, and a row whose content was imported before is skipped, so
importing the same file twice adds nothing. Validation and writing share one pass over the file,
inside one transaction: rows are written a batch at a time as they prove valid, writing stops at
the first invalid row (validation goes on, to report every error) and the transaction is then
rolled back. A valid file is thus read and parsed once, and a batch is all that is ever in memory.

Modules: ``readers`` (formats), ``parsing`` (shapes and checks), ``writing`` (batches into the
database).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from feedback.models import DataImport, ImportStatus, Project
from jobs.services import Heartbeat, work_claim, work_finish

from .owner import imported_labels_owner
from .parsing import (
    PAIRINGS,
    SHAPES,
    ImportOptions,
    ParsedRow,
    parse_row,
    parsed_rows,
    required_kinds,
)
from .readers import BATCH, BadRow, check_limits, detect_format, read_rows
from .uploads import UPLOAD_KEPT_SECONDS, upload_discard, upload_store, uploads_sweep
from .writing import BatchWriter, database

__all__ = [
    "PAIRINGS",
    "SHAPES",
    "UPLOAD_KEPT_SECONDS",
    "BadRow",
    "ImportOptions",
    "ImportReport",
    "data_import_create",
    "data_import_run",
    "detect_format",
    "import_file",
    "import_preview",
    "import_validate",
    "imported_labels_owner",
    "parse_row",
    "read_rows",
    "upload_discard",
    "upload_preview",
    "upload_store",
    "uploads_sweep",
]

MAX_ERRORS_LISTED = 50


@dataclass
class ImportReport:
    rows: int = 0
    shapes: dict[str, int] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)
    skipped_duplicates: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, row: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append({"row": row, "message": message})

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "shapes": self.shapes,
            "created": self.created,
            "skipped_duplicates": self.skipped_duplicates,
            "errors": self.errors,
            "error_count": self.error_count,
        }


class _Validation:
    """Reads a file row by row, recording rows, shapes and errors in `report`."""

    def __init__(self, project: Project, options: ImportOptions, report: ImportReport) -> None:
        self.options, self.report = options, report
        self.collected = set(project.task_kinds)
        self.project_name = project.name
        self.missing: set[str] = set()  # task kinds the rows need that the project lacks

    @property
    def failed(self) -> bool:
        return not self.report.ok or bool(self.missing)

    def valid_rows(self, path: Path) -> Iterator[ParsedRow]:
        report, limit = self.report, settings.VEREDICTO_IMPORT_MAX_ROWS
        for number, parsed in parsed_rows(path, self.options):
            report.rows += 1
            if report.rows > limit:
                report.add_error(number, f"more than {limit:,} rows")
                break
            if isinstance(parsed, str):
                report.add_error(number, parsed)
                continue
            report.shapes[parsed.shape] = report.shapes.get(parsed.shape, 0) + 1
            self.missing |= required_kinds(parsed.shape, self.options) - self.collected
            yield parsed

    def batches(self, path: Path) -> Iterator[tuple[int, list[ParsedRow]]]:
        """(rows read so far, the valid rows among them not yet given) every BATCH rows; rows
        read after the file proved invalid are left out."""
        batch: list[ParsedRow] = []
        for row in self.valid_rows(path):
            if not self.failed:
                batch.append(row)
            if self.report.rows % BATCH == 0:
                yield self.report.rows, batch
                batch = []
        yield self.report.rows, batch

    def finish(self) -> None:
        """The errors about the file as a whole, listed after the rows' own."""
        if self.report.rows == 0:
            self.report.add_error(0, "the file has no rows")
        for kind in sorted(self.missing):
            self.report.add_error(0, f"project {self.project_name!r} does not collect {kind} tasks")


def import_validate(
    *,
    project: Project,
    path: Path,
    options: ImportOptions,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Read every row and report what an import would find; nothing is written."""
    check_limits(path)
    report = ImportReport()
    validation = _Validation(project, options, report)
    for _ in validation.valid_rows(path):
        if progress and report.rows % BATCH == 0:
            progress(report.rows)
    validation.finish()
    return report


def import_file(
    *,
    project: Project,
    path: Path,
    options: ImportOptions | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> ImportReport:
    """Validate and write the file in one transaction; any error means nothing is written.
    Nobody is named on the rows: the labels belong to their source (see `owner`).

    `progress(phase, rows)` is called every batch: "writing" while rows are going in, and
    "validating" once an invalid row has stopped the writing.
    """
    options = options or ImportOptions()
    check_limits(path)
    report = ImportReport()
    validation = _Validation(project, options, report)
    owner = imported_labels_owner()
    with transaction.atomic():
        with database(project=project, owner=owner) as db:
            writer = BatchWriter(
                project=project,
                owner=owner,
                options=options,
                source=_source(options, path),
                db=db,
            )
            skipped = _write_while_valid(validation, path, writer, progress)
            if not validation.failed:
                db.analyze_filled()
        validation.finish()
        if not report.ok:
            transaction.set_rollback(True)
            return report
    report.skipped_duplicates = skipped
    report.created = writer.created
    return report


def _source(options: ImportOptions, path: Path) -> str:
    """What rows record as their source (a 200-character column): the option, else the file's
    name, whose undecodable bytes (a command-line path) are shown, not stored as surrogates."""
    name = os.fsencode(path.name).decode("utf-8", "backslashreplace")
    return (options.source or name)[:200]


def _write_while_valid(
    validation: _Validation,
    path: Path,
    writer: BatchWriter,
    progress: Callable[[str, int], None] | None,
) -> int:
    """Write the file a batch at a time until it proves invalid, then only read on (so that
    every error is listed). Returns the rows skipped as already imported."""
    skipped = written = 0
    with _no_cycle_collection(), contextlib.closing(validation.batches(path)) as batches:
        for rows_read, batch in batches:
            if validation.failed:
                if progress:
                    progress("validating", rows_read)
                continue
            if batch:
                skipped += writer.write(batch)
                written += len(batch)
                if progress:
                    progress("writing", written)
        if not validation.failed:
            skipped += writer.flush()
    return skipped


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off while rows go in: a batch's rows live long enough to be
    promoted to the oldest generation, which then makes the collector go through every object
    of the process (Django, pyarrow, datasets...) again and again: a fifth of the import's
    Python time. Rows make no reference cycles (reference counting frees them), so memory
    stays as flat without it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- uploads, previews and background runs -----------------------------------------------------


PREVIEW_ROWS = 5
PREVIEW_VALIDATE = 200


def import_preview(*, path: Path, options: ImportOptions) -> dict[str, Any]:
    """The first PREVIEW_ROWS valid rows as they will be imported, and the shapes and errors of
    the first PREVIEW_VALIDATE rows (`checked` of them: fewer in a shorter file)."""
    shown: list[dict[str, Any]] = []
    shapes: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    checked = 0
    for number, parsed in parsed_rows(path, options):
        checked += 1
        if isinstance(parsed, str):
            errors.append({"row": number, "message": parsed})
        else:
            shapes[parsed.shape] = shapes.get(parsed.shape, 0) + 1
            if len(shown) < PREVIEW_ROWS:
                shown.append(
                    {
                        "row": number,
                        "shape": parsed.shape,
                        "system": parsed.system,
                        "messages": parsed.messages,
                        "completions": [
                            {"label": _reply_label(parsed.shape, i), "text": text, "model": model}
                            for i, (text, model) in enumerate(parsed.completions)
                        ],
                        "demonstration": parsed.demonstration,
                    }
                )
        if checked >= PREVIEW_VALIDATE:
            break
    return {
        "format": detect_format(path),
        "rows": shown,
        "shapes": shapes,
        "errors": errors[:MAX_ERRORS_LISTED],
        "error_count": len(errors),
        "checked": checked,
    }


def upload_preview(
    *, uploaded: UploadedFile, project: Project, options: ImportOptions
) -> tuple[dict[str, Any], Path | None]:
    """Store an upload and preview it: (the preview, the stored file's path). The file is kept
    only if the preview found no errors (the path is None otherwise): one that cannot be
    imported as it is waits for no import. A refused file raises ValidationError, kept neither."""
    path = upload_store(uploaded=uploaded, project=project)
    try:
        preview = import_preview(path=path, options=options)
    except ValidationError:
        upload_discard(path)
        raise
    if preview["errors"]:
        upload_discard(path)
        return preview, None
    return preview, path


def _reply_label(shape: str, index: int) -> str:
    """How the preview names a row's reply: a preference row's are chosen and rejected."""
    if shape == "preference":
        return ("chosen", "rejected")[index]
    return f"reply {index + 1}"


def data_import_create(
    *, project: Project, path: Path, original_name: str, options: ImportOptions, user
) -> DataImport:
    relative = path.relative_to(Path(settings.MEDIA_ROOT))
    return DataImport.objects.create(
        project=project,
        file=str(relative),
        original_name=original_name[:300],
        options={
            "shape": options.shape,
            "comparison_mode": options.comparison_mode,
            "pairing": options.pairing,
            "source": options.source or original_name,
        },
        created_by=user,
    )


def data_import_run(*, data_import: DataImport, worker_host: str = "") -> DataImport:
    """Run a queued import once: a redelivered message finds nothing to claim."""
    if not work_claim(DataImport, pk=data_import.pk, worker_host=worker_host, phase="validating"):
        return DataImport.objects.get(pk=data_import.pk)
    data_import = DataImport.objects.select_related("project", "created_by").get(pk=data_import.pk)
    path = Path(settings.MEDIA_ROOT) / data_import.file
    with Heartbeat(DataImport, data_import.pk):
        try:
            if not path.exists():
                raise ValidationError(
                    "the uploaded file is gone (imported already, or kept past its day): "
                    "upload it again"
                )
            with _published_progress(data_import) as progress:
                report = import_file(
                    project=data_import.project,
                    path=path,
                    options=ImportOptions(**data_import.options),
                    progress=progress,
                )
        except ValidationError as exc:
            report = ImportReport()
            for message in exc.messages:
                report.add_error(0, message)
        except Exception as exc:
            report = ImportReport()
            report.add_error(0, f"the import stopped: {type(exc).__name__}: {exc}")
    work_finish(
        DataImport,
        pk=data_import.pk,
        status=ImportStatus.SUCCEEDED if report.ok else ImportStatus.FAILED,
        error="" if report.ok else _failure_summary(report),
        phase="",
        rows_total=report.rows,
        rows_done=report.rows,
        report=report.as_dict(),
    )
    upload_discard(path)  # the file has been read in full: the rows are in, or never will be
    return DataImport.objects.get(pk=data_import.pk)


def _failure_summary(report: ImportReport) -> str:
    first = report.errors[0] if report.errors else {"row": 0, "message": ""}
    where = f"row {first['row']}: " if first["row"] else ""
    return f"{report.error_count} error(s), nothing imported. First: {where}{first['message']}"


@contextlib.contextmanager
def _published_progress(data_import: DataImport) -> Iterator[Callable[[str, int], None]]:
    """Progress for the status page. The import is one transaction, so on PostgreSQL progress
    goes through a connection of its own, to be seen while the import runs; SQLite has one
    writer at a time, so there it shows when the import ends."""
    if connection.vendor != "postgresql":
        rows = DataImport.objects.filter(pk=data_import.pk)
        yield lambda phase, done: rows.update(phase=phase, rows_done=done)
        return
    side = connections.create_connection(DEFAULT_DB_ALIAS)
    table = connection.ops.quote_name(DataImport._meta.db_table)
    sql = f"UPDATE {table} SET phase = %s, rows_done = %s WHERE id = %s"

    def publish(phase: str, done: int) -> None:
        with side.cursor() as cursor:
            cursor.execute(sql, [phase, done, data_import.pk])

    try:
        yield publish
    finally:
        side.close()
