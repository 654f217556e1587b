"""Reading import files as a stream of (row number, row) pairs, whatever their format."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from feedback.models import Split

# Rows are read, validated and written this many at a time: each batch costs the server nine
# statements, and 5000 rows (a few MB of Python objects) make that a tenth less server time
# than 1000 did.
BATCH = 5000
_JSON_COLUMNS = ("messages", "completions", "chosen", "rejected", "tags", "prompt", "completion")


# What a row nested past what the JSON decoder can follow (a "nesting bomb") reads as.
TOO_DEEP = "nested too deeply to read"


class BadRow(Exception):
    """A row that cannot be read at all (bad UTF-8, bad JSON)."""


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
            except RecursionError:
                yield number, BadRow(TOO_DEEP)
                continue
            yield number, row if isinstance(row, dict) else BadRow("a row must be a JSON object")


def _csv(path: Path) -> Iterator[tuple[int, dict | BadRow]]:
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
        reader = csv.DictReader(text)
        number = 1
        try:
            for number, row in enumerate(reader, start=2):  # line 1 is the header
                try:
                    yield number, {k: _csv_value(k, value) for k, value in row.items() if k}
                except RecursionError:
                    yield number, BadRow(TOO_DEEP)
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
