"""Writing a snapshot's rows: JSONL as it goes, then Parquet and a `save_to_disk` folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from feedback.models import (
    Split,
)

# --- writing ---------------------------------------------------------------------------------


# Built once: json.dumps with these options would build an encoder for every row. Rows are
# fresh trees, never cyclic: not checking for cycles takes a sixth off encoding a row, with
# the same output.
_ROW_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, check_circular=False).encode
# pyarrow's JSON reader needs many times its block in memory: small blocks keep it flat, and
# Parquet row groups gather a few dozen of them.
_JSON_BLOCK = 1 << 20
_ROW_GROUP = 64 * 1024


def write_rows(
    rows: Iterator[tuple[str, dict]], directory: Path
) -> tuple[dict, str, dict[str, dict[str, set[type]]]]:
    """Stream rows into train/test JSONL. Returns counts, the sha256 of the content, and per
    split the Python types each column held (for the Parquet copies)."""
    digest = hashlib.sha256()
    counts = {Split.TRAIN: 0, Split.TEST: 0}
    prefixes = {split: split.encode() + b"\0" for split in counts}
    shapes: dict[str, dict[tuple, None]] = {split: {} for split in counts}  # ordered sets
    handles = {split: (directory / f"{split}.jsonl").open("wb") for split in counts}
    try:
        for split, row in rows:
            line = (_ROW_JSON(row) + "\n").encode()
            handles[split].write(line)
            digest.update(prefixes[split] + line)
            counts[split] += 1
            shapes[split][(*row, *map(type, row.values()))] = None
    finally:
        for handle in handles.values():
            handle.close()
    return counts, digest.hexdigest(), {split: _column_types(shapes[split]) for split in counts}


def _column_types(shapes: dict[tuple, None]) -> dict[str, set[type]]:
    """{column: Python types of its values}, columns in order of first appearance in the JSONL
    (whose keys are sorted), from the distinct (keys..., types...) of the rows written."""
    columns: dict[str, set[type]] = {}
    for shape in shapes:
        keys, types = shape[: len(shape) // 2], shape[len(shape) // 2 :]
        for key in sorted(set(keys) - columns.keys()):
            columns[key] = set()
        for key, value_type in zip(keys, types, strict=True):
            columns[key].add(value_type)
    return columns


def write_companions(
    directory: Path, counts: dict[str, int], column_types: dict[str, dict[str, set[type]]]
) -> None:
    """Parquet copies and a `save_to_disk` folder, from one pass over each JSONL a block at a
    time: the blocks go to the Parquet file and to an Arrow file that datasets maps into
    memory (rather than parsing the JSON, or reading the Parquet, a second time)."""
    import datasets

    arrow = directory / ".arrow"
    arrow.mkdir()
    splits: dict[str, datasets.Dataset] = {}
    for split, count in counts.items():
        if count:
            source, arrow_file = directory / f"{split}.jsonl", arrow / f"{split}.arrow"
            # Like a datasets builder, the folder has one set of features: the first split's.
            first = next(iter(splits.values()), None)
            _convert_jsonl(
                source,
                directory / f"{split}.parquet",
                arrow_file,
                column_types[split],
                arrow_schema=first.data.schema if first else None,
            )
            splits[split] = datasets.Dataset.from_file(str(arrow_file))
    if splits:
        datasets.DatasetDict(splits).save_to_disk(str(directory / "hf"))
        # One file to download; `tar xf hf.tar` gives the folder for datasets.load_from_disk.
        # Copied a megabyte at a time: tarfile's default of 16 KiB costs seconds of Python per
        # gigabyte.
        with tarfile.open(directory / "hf.tar", "w", copybufsize=1 << 20) as archive:
            archive.add(directory / "hf", arcname="hf")
    del splits  # unmapped before the files go
    shutil.rmtree(arrow)


def _convert_jsonl(
    source: Path,
    parquet: Path,
    arrow: Path,
    column_types: dict[str, set[type]],
    arrow_schema=None,
) -> None:
    """The JSONL as Parquet, typed as pyarrow types the whole file, and as an Arrow stream,
    cast to `arrow_schema` if given.

    pyarrow's streaming reader infers types from its first block alone, which fails when a
    column of nulls or of whole numbers there later holds an id or a fraction; so scalar
    columns get the type that whole-file inference promotes them to.
    """
    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    pinned = [(column, _arrow_type(types)) for column, types in column_types.items()]
    reader = pa_json.open_json(
        source,
        read_options=pa_json.ReadOptions(block_size=_JSON_BLOCK),
        parse_options=pa_json.ParseOptions(
            explicit_schema=pa.schema([(column, t) for column, t in pinned if t is not None]),
            unexpected_field_behavior="infer",
        ),
    )
    order = list(column_types)  # first appearance in the file, as pyarrow orders columns
    schema = pa.schema([reader.schema.field(column) for column in order])
    arrow_schema = arrow_schema or schema
    with (
        pq.ParquetWriter(parquet, schema) as writer,
        pa.ipc.new_stream(arrow, arrow_schema) as stream,
    ):
        group, rows = [], 0
        for batch in reader:
            group.append(batch.select(order))
            stream.write_batch(group[-1].cast(arrow_schema))
            rows += batch.num_rows
            if rows >= _ROW_GROUP:
                writer.write_table(pa.Table.from_batches(group))
                group, rows = [], 0
        if group:
            writer.write_table(pa.Table.from_batches(group))


def _arrow_type(types: set[type]):
    """What pyarrow infers for a JSON column of these Python types; None for text and nested
    values, which the first block settles."""
    import pyarrow as pa

    values = types - {type(None)}
    if not values:
        return pa.null()
    if values == {bool}:
        return pa.bool_()
    if values == {int}:
        return pa.int64()
    if values <= {int, float}:
        return pa.float64()
    return None
