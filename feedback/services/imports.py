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

The import is atomic and idempotent: every row is validated first (errors carry the row number),
nothing is written unless all rows are valid, and a row whose content was imported before is
skipped, so importing the same file twice adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from feedback.models import (
    Assignment,
    AssignmentStatus,
    Completion,
    CompletionSource,
    Demonstration,
    DemonstrationStatus,
    Item,
    ItemCompletion,
    Origin,
    PairwiseJudgement,
    Project,
    Prompt,
    Split,
    TaskKind,
)

from .projects import MAX_RANKED, MIN_RANKED, prompt_hash
from .validation import clean_messages, clean_text

SHAPES = ("prompts", "comparisons", "preference", "sft")
PAIRINGS = ("all_pairs", "adjacent", "first_vs_rest")
MAX_ERRORS_LISTED = 50
BATCH = 1000
_JSON_COLUMNS = ("messages", "completions", "chosen", "rejected", "tags", "prompt", "completion")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass(frozen=True)
class ImportOptions:
    shape: str = "auto"
    comparison_mode: str = "pairwise"  # or "ranking"
    pairing: str = "all_pairs"
    source: str = ""

    def __post_init__(self) -> None:
        if self.shape not in ("auto", *SHAPES):
            raise ValidationError({"shape": f"Shape is auto or one of {', '.join(SHAPES)}."})
        if self.comparison_mode not in ("pairwise", "ranking"):
            raise ValidationError({"comparison_mode": "Comparison mode is pairwise or ranking."})
        if self.pairing not in PAIRINGS:
            raise ValidationError({"pairing": f"Pairing is one of {', '.join(PAIRINGS)}."})


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


class BadRow(Exception):
    """A row that cannot be read at all (bad UTF-8, bad JSON)."""


# --- reading -------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
    formats |= {".parquet": "parquet", ".pq": "parquet"}
    if suffix not in formats:
        raise ValidationError(
            {"file": f"Unknown file type {suffix or '(none)'}: use .jsonl, .csv or .parquet."}
        )
    return formats[suffix]


def check_limits(path: Path) -> None:
    if path.is_dir():
        return
    size, limit = path.stat().st_size, settings.VEREDICTO_IMPORT_MAX_BYTES
    if size > limit:
        raise ValidationError({"file": f"File is {size:,} bytes; the limit is {limit:,}."})
    if size == 0:
        raise ValidationError({"file": "The file is empty."})


def read_rows(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict | BadRow]]:
    """(row number, row) pairs; unreadable rows come as BadRow so validation can report them."""
    fmt = fmt or detect_format(path)
    yield from {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "hf": _hf}[fmt](path)


def _jsonl(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield number, BadRow(f"invalid UTF-8 at byte {exc.start}")
                continue
            except json.JSONDecodeError as exc:
                yield number, BadRow(f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            yield number, row if isinstance(row, dict) else BadRow("a row must be a JSON object")


def _csv(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
        reader = csv.DictReader(text)
        number = 1
        try:
            for number, row in enumerate(reader, start=2):  # line 1 is the header
                yield number, {key: _csv_value(key, value) for key, value in row.items() if key}
        except UnicodeDecodeError as exc:
            yield number + 1, BadRow(f"invalid UTF-8 near byte {exc.start}; reading stopped")
        except csv.Error as exc:
            yield number + 1, BadRow(f"malformed CSV: {exc}")


def _csv_value(key: str, value: str | None) -> Any:
    """CSV cells are text; list-valued columns may hold JSON."""
    if value is None:
        return None
    if key in _JSON_COLUMNS and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if key == "tags":
        return [tag.strip() for tag in value.split(",") if tag.strip()]
    return value


def _parquet(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        yield 1, BadRow(f"not a readable Parquet file: {exc}")
        return
    number = 0
    for batch in parquet.iter_batches(batch_size=BATCH):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _hf(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        yield 1, BadRow(f"not a folder written by save_to_disk: {exc}")
        return
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    number = 0
    for split_name, dataset in splits:
        for batch in dataset.iter(batch_size=BATCH):
            keys = list(batch)
            for values in zip(*(batch[key] for key in keys), strict=True):
                number += 1
                row = dict(zip(keys, values, strict=True))
                if split_name == "test":
                    row.setdefault("split", Split.TEST)
                yield number, row


# --- parsing -------------------------------------------------------------------------------------


@dataclass
class ParsedRow:
    shape: str
    system: str
    messages: list[dict[str, str]]
    split: str = Split.TRAIN
    tags: list[str] = field(default_factory=list)
    external_id: str = ""
    completions: list[tuple[str, str]] = field(default_factory=list)  # (text, model)
    demonstration: str = ""

    @property
    def prompt_hash(self) -> str:
        return prompt_hash(self.system, self.messages)

    @property
    def key(self) -> str:
        payload = [self.shape, self.prompt_hash, self.completions, self.demonstration]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def detect_shape(row: dict) -> str:
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "completions" in row:
        return "comparisons"
    if "completion" in row:
        return "sft"
    messages = row.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return "sft" if messages[-1].get("role") == "assistant" else "prompts"
    if "prompt" in row or "messages" in row:
        return "prompts"
    raise ValidationError(
        "Cannot tell the shape: expected prompt or messages (and maybe completions, "
        "chosen/rejected or completion)."
    )


def _as_conversation(value: Any, field_name: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return value
    raise ValidationError(f"{field_name} must be text or a list of messages.")


def _hh_turns(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> messages (Anthropic HH-RLHF text layout)."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if len(parts) < 3:
        raise ValidationError("expected Human:/Assistant: turns")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _reply(value: Any, field_name: str) -> tuple[list[dict] | None, str]:
    """A chosen/rejected value as (conversation before the reply | None, reply text)."""
    if isinstance(value, str):
        if "\n\nHuman:" in value or value.startswith("Human:"):
            turns = _hh_turns(value)
            if turns[-1]["role"] != "assistant":
                raise ValidationError(f"{field_name} must end with an Assistant turn.")
            return turns[:-1], turns[-1]["content"]
        return None, value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        if value[-1].get("role") != "assistant":
            raise ValidationError(f"{field_name} must end with an assistant message.")
        return (value[:-1] or None), value[-1].get("content")
    raise ValidationError(f"{field_name} must be text or a list of messages.")


def parse_row(row: dict, options: ImportOptions) -> ParsedRow:
    shape = detect_shape(row) if options.shape == "auto" else options.shape
    split = row.get("split") or Split.TRAIN
    if split not in Split.values:
        raise ValidationError(f"split must be train or test, not {split!r}.")
    tags = row.get("tags") or []
    if not isinstance(tags, list):
        raise ValidationError("tags must be a list.")
    base = {"split": split, "tags": [str(t) for t in tags], "external_id": str(row.get("id") or "")}
    system = row.get("system") or ""

    if shape == "preference":
        chosen_prefix, chosen = _reply(row.get("chosen"), "chosen")
        rejected_prefix, rejected = _reply(row.get("rejected"), "rejected")
        if row.get("prompt") not in (None, ""):
            conversation = _as_conversation(row["prompt"], "prompt")
        elif chosen_prefix is not None:
            if rejected_prefix is not None and rejected_prefix != chosen_prefix:
                raise ValidationError("chosen and rejected continue different conversations.")
            conversation = chosen_prefix
        else:
            raise ValidationError("a prompt is needed when chosen/rejected are bare replies.")
        system, messages = clean_messages(conversation, system)
        chosen = clean_text(chosen, field="chosen")
        rejected = clean_text(rejected, field="rejected")
        if chosen == rejected:
            raise ValidationError("chosen and rejected are the same text.")
        models = (str(row.get("chosen_model") or ""), str(row.get("rejected_model") or ""))
        pair = [(chosen, models[0]), (rejected, models[1])]
        return ParsedRow(shape, system, messages, completions=pair, **base)

    if shape == "sft":
        if "completion" in row:
            conversation = _as_conversation(row.get("prompt"), "prompt")
            _, reply = _reply(row["completion"], "completion")
        else:
            messages = row.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ValidationError("messages must be a non-empty list.")
            conversation, reply = messages[:-1], messages[-1]
            if not isinstance(reply, dict) or reply.get("role") != "assistant":
                raise ValidationError("an SFT conversation must end with an assistant message.")
            reply = reply.get("content")
        system, messages = clean_messages(conversation, system)
        return ParsedRow(
            shape, system, messages, demonstration=clean_text(reply, field="completion"), **base
        )

    conversation = row.get("messages") if "messages" in row else row.get("prompt")
    system, messages = clean_messages(_as_conversation(conversation, "prompt"), system)
    if shape == "prompts":
        return ParsedRow(shape, system, messages, **base)

    raw = row.get("completions")
    if not isinstance(raw, list) or not 2 <= len(raw) <= 64:
        raise ValidationError("completions must be a list of 2 or more replies.")
    completions = []
    for index, entry in enumerate(raw):
        text, model = (entry, "") if isinstance(entry, str) else (None, "")
        if isinstance(entry, dict):
            text, model = entry.get("text"), str(entry.get("model") or "")
        completions.append((clean_text(text, field=f"completions[{index}]"), model))
    if len({text for text, _ in completions}) != len(completions):
        raise ValidationError("completions repeat the same text.")
    if options.comparison_mode == "ranking" and not MIN_RANKED <= len(completions) <= MAX_RANKED:
        raise ValidationError(f"ranking needs {MIN_RANKED} to {MAX_RANKED} completions.")
    return ParsedRow(shape, system, messages, completions=completions, **base)


def _required_kinds(shape: str, options: ImportOptions) -> set[str]:
    if shape == "sft":
        return {TaskKind.DEMONSTRATION}
    if shape == "preference":
        return {TaskKind.PAIRWISE}
    if shape == "comparisons":
        return {TaskKind.RANKING if options.comparison_mode == "ranking" else TaskKind.PAIRWISE}
    return set()


def _parsed(path: Path, options: ImportOptions) -> Iterator[tuple[int, ParsedRow | str]]:
    """Each row parsed, or the reason it is invalid."""
    for number, row in read_rows(path):
        if isinstance(row, BadRow):
            yield number, str(row)
            continue
        try:
            yield number, parse_row(row, options)
        except ValidationError as exc:
            yield number, "; ".join(exc.messages)


# --- the import ----------------------------------------------------------------------------------


def import_validate(
    *,
    project: Project,
    path: Path,
    options: ImportOptions,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """First pass: read every row; nothing is written."""
    check_limits(path)
    report = ImportReport()
    missing: set[str] = set()
    for number, parsed in _parsed(path, options):
        report.rows += 1
        if report.rows > settings.VEREDICTO_IMPORT_MAX_ROWS:
            report.add_error(number, f"more than {settings.VEREDICTO_IMPORT_MAX_ROWS:,} rows")
            break
        if isinstance(parsed, str):
            report.add_error(number, parsed)
        else:
            report.shapes[parsed.shape] = report.shapes.get(parsed.shape, 0) + 1
            missing |= _required_kinds(parsed.shape, options) - set(project.task_kinds)
        if progress and report.rows % BATCH == 0:
            progress(report.rows)
    if report.rows == 0:
        report.add_error(0, "the file has no rows")
    for kind in sorted(missing):
        report.add_error(0, f"project {project.name!r} does not collect {kind} tasks")
    return report


def import_file(
    *,
    project: Project,
    path: Path,
    user: AbstractBaseUser,
    options: ImportOptions | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> ImportReport:
    """Validate the whole file, then write it in one transaction; errors mean nothing written."""
    options = options or ImportOptions()
    source = options.source or path.name
    report = import_validate(
        project=project,
        path=path,
        options=options,
        progress=(lambda n: progress("validating", n)) if progress else None,
    )
    if not report.ok:
        return report
    created = {"prompts": 0, "completions": 0, "items": 0, "judgements": 0}
    written = 0
    with transaction.atomic():
        batch: list[ParsedRow] = []
        for _, parsed in _parsed(path, options):
            batch.append(parsed)
            if len(batch) == BATCH:
                report.skipped_duplicates += _write_batch(
                    project, batch, user, options, source, created
                )
                written += len(batch)
                batch = []
                if progress:
                    progress("writing", written)
        if batch:
            report.skipped_duplicates += _write_batch(
                project, batch, user, options, source, created
            )
    report.created = created
    return report


def _item_plans(row: ParsedRow, options: ImportOptions) -> list[tuple[str, list[int], str]]:
    """(kind, completion indices, import key) for every item a row makes."""
    if row.shape == "prompts":
        return []
    if row.shape == "sft":
        return [(TaskKind.DEMONSTRATION, [], row.key)]
    if row.shape == "preference":
        return [(TaskKind.PAIRWISE, [0, 1], row.key)]
    n = len(row.completions)
    if options.comparison_mode == "ranking":
        return [(TaskKind.RANKING, list(range(n)), row.key)]
    pairs = {
        "all_pairs": list(combinations(range(n), 2)),
        "adjacent": [(i, i + 1) for i in range(n - 1)],
        "first_vs_rest": [(0, i) for i in range(1, n)],
    }[options.pairing]
    return [
        (TaskKind.PAIRWISE, list(pair), hashlib.sha256(f"{row.key}:{pair}".encode()).hexdigest())
        for pair in pairs
    ]


def _write_batch(
    project: Project,
    batch: list[ParsedRow],
    user: AbstractBaseUser,
    options: ImportOptions,
    source: str,
    created: dict[str, int],
) -> int:
    """Write one batch with a fixed number of bulk queries; returns rows skipped as duplicates."""
    now = timezone.now()
    prompts = _prompts_for(project, batch, source, now, created)

    plans = [(row, kind, idx, key) for row in batch for kind, idx, key in _item_plans(row, options)]
    keys = [key for *_, key in plans]
    existing = set(
        Item.objects.filter(project=project, import_key__in=keys).values_list(
            "import_key", flat=True
        )
    )
    fresh, seen = [], set()
    for plan in plans:
        if plan[3] not in existing and plan[3] not in seen:
            fresh.append(plan)
            seen.add(plan[3])
    skipped_rows = len({id(row) for row, *_ in plans} - {id(row) for row, *_ in fresh})
    skipped_rows += sum(
        1 for row in batch if row.shape == "prompts" and row.prompt_hash in prompts.existing
    )
    if not fresh:
        return skipped_rows

    completions: dict[tuple[int, int], Completion] = {}
    for row, _, indices, _ in fresh:
        for index in indices:
            if (id(row), index) not in completions:
                text, model = row.completions[index]
                completions[(id(row), index)] = Completion(
                    prompt=prompts.by_hash[row.prompt_hash],
                    text=text,
                    model_name=model,
                    source=CompletionSource.MODEL,
                    generation_params={"imported_from": source} if source else {},
                    created_at=now,
                )
    Completion.objects.bulk_create(completions.values(), batch_size=BATCH)
    judged = {"sft", "preference"}
    items = [
        Item(
            project=project,
            kind=kind,
            prompt=prompts.by_hash[row.prompt_hash],
            import_key=key,
            submitted_count=1 if row.shape in judged else 0,
            created_at=now,
        )
        for row, kind, _, key in fresh
    ]
    Item.objects.bulk_create(items, batch_size=BATCH)
    ItemCompletion.objects.bulk_create(
        (
            ItemCompletion(item=item, completion=completions[(id(row), index)], position=position)
            for item, (row, _, indices, _) in zip(items, fresh, strict=True)
            for position, index in enumerate(indices)
        ),
        batch_size=BATCH,
    )
    created["completions"] += len(completions)
    created["items"] += len(items)
    created["judgements"] += _write_judgements(items, fresh, user, source, now)
    return skipped_rows


@dataclass
class _Prompts:
    by_hash: dict[str, Prompt]
    existing: set[str]


def _prompts_for(project, batch, source, now, created) -> _Prompts:
    hashes = {row.prompt_hash for row in batch}
    by_hash = {p.content_hash: p for p in project.prompts.filter(content_hash__in=hashes)}
    existing = set(by_hash)
    new: dict[str, Prompt] = {}
    for row in batch:
        digest = row.prompt_hash
        if digest not in by_hash and digest not in new:
            new[digest] = Prompt(
                project=project,
                system=row.system,
                messages=row.messages,
                content_hash=digest,
                split=row.split,
                tags=row.tags,
                source=source,
                external_id=row.external_id,
                created_at=now,
            )
    Prompt.objects.bulk_create(new.values(), batch_size=BATCH)
    by_hash.update(new)
    created["prompts"] += len(new)
    return _Prompts(by_hash=by_hash, existing=existing)


def _write_judgements(items, plans, user, source, now) -> int:
    """Imported labels hang off submitted assignments of the importing user, like any other."""
    judged = [(item, row) for item, (row, *_rest) in zip(items, plans, strict=True)]
    judged = [(item, row) for item, row in judged if row.shape in ("sft", "preference")]
    if not judged:
        return 0
    assignments = [
        Assignment(
            item=item,
            annotator=user,
            status=AssignmentStatus.SUBMITTED,
            leased_at=now,
            expires_at=now,
            finished_at=now,
        )
        for item, _ in judged
    ]
    Assignment.objects.bulk_create(assignments, batch_size=BATCH)
    common = {"annotator": user, "origin": Origin.IMPORTED, "source": source[:200]}
    demos = [
        Demonstration(
            assignment=a,
            item=item,
            text=row.demonstration,
            status=DemonstrationStatus.ACCEPTED,
            created_at=now,
            updated_at=now,
            **common,
        )
        for a, (item, row) in zip(assignments, judged, strict=True)
        if row.shape == "sft"
    ]
    pairs = [
        PairwiseJudgement(
            assignment=a,
            item=item,
            choice="a",
            strength="",
            shown_left="a",
            created_at=now,
            updated_at=now,
            **common,
        )
        for a, (item, row) in zip(assignments, judged, strict=True)
        if row.shape == "preference"
    ]
    Demonstration.objects.bulk_create(demos, batch_size=BATCH)
    PairwiseJudgement.objects.bulk_create(pairs, batch_size=BATCH)
    return len(demos) + len(pairs)


# --- uploads, previews and background runs -----------------------------------------------------


PREVIEW_ROWS = 5
PREVIEW_VALIDATE = 200


def upload_store(*, uploaded, project: Project) -> Path:
    """Save an uploaded file under MEDIA_ROOT/uploads/ and return its path."""
    from uuid import uuid4

    name = Path(uploaded.name).name or "upload"
    detect_format(Path(name))
    if uploaded.size > settings.VEREDICTO_IMPORT_MAX_BYTES:
        raise ValidationError(
            {"file": f"File is {uploaded.size:,} bytes; the limit is "
                     f"{settings.VEREDICTO_IMPORT_MAX_BYTES:,}."}
        )  # fmt: skip
    directory = Path(settings.MEDIA_ROOT) / "uploads" / str(project.pk) / uuid4().hex
    directory.mkdir(parents=True)
    path = directory / name
    with path.open("wb") as out:
        for chunk in uploaded.chunks():
            out.write(chunk)
    check_limits(path)
    return path


def import_preview(*, path: Path, options: ImportOptions) -> dict[str, Any]:
    """The first rows as they will be imported, the detected shapes, and early errors."""
    shown: list[dict[str, Any]] = []
    shapes: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    checked = 0
    for number, parsed in _parsed(path, options):
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
                        "completions": [text for text, _ in parsed.completions],
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
        "checked": checked,
    }


def data_import_create(
    *, project: Project, path: Path, original_name: str, options: ImportOptions, user
):
    from feedback.models import DataImport

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


def data_import_run(data_import) -> None:
    """Run a queued import once (a redelivered message finds nothing to claim)."""
    from feedback.models import DataImport, ImportStatus

    claimed = DataImport.objects.filter(pk=data_import.pk, status=ImportStatus.QUEUED).update(
        status=ImportStatus.RUNNING, phase="validating"
    )
    if not claimed:
        return
    rows = DataImport.objects.filter(pk=data_import.pk)

    def progress(phase: str, done: int) -> None:
        rows.update(phase=phase, rows_done=done)

    try:
        report = import_file(
            project=data_import.project,
            path=Path(settings.MEDIA_ROOT) / data_import.file,
            user=data_import.created_by,
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
    status = ImportStatus.SUCCEEDED if report.ok else ImportStatus.FAILED
    rows.update(
        status=status,
        phase="",
        rows_total=report.rows,
        rows_done=report.rows,
        report=report.as_dict(),
        finished_at=timezone.now(),
    )
