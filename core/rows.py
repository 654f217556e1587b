"""Model instances from hand-written SQL, for the few statements of the annotation loop's hot path.

Every judgement runs the same handful of reads; building them with the ORM (compiling the query,
then the select_related machinery) cost more CPU than the rest of the request
(bench/annotation_load.py). These helpers let a selector write one joined SELECT and still hand
out ordinary model instances: each value goes through the converters the ORM would apply (JSON
decoding, SQLite's datetimes and booleans), and `Model.from_db` marks the rows as loaded.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model

M = TypeVar("M", bound=Model)


def columns(model: type[Model], alias: str) -> str:
    """`alias.col, …` for every concrete field of `model`, in `_meta.concrete_fields` order."""
    return ", ".join(f"{alias}.{f.column}" for f in model._meta.concrete_fields)


def width(model: type[Model]) -> int:
    return len(model._meta.concrete_fields)


# connection -> model -> per field (converters, column expression); a connection per thread.
_converters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _field_converters(model: type[Model]) -> list[tuple[list[Callable], Any]]:
    known = _converters.setdefault(connections[DEFAULT_DB_ALIAS], {})
    if model not in known:
        found = []
        for field in model._meta.concrete_fields:
            col = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
            found.append((converters, col))
        known[model] = found
    return known[model]


def instance(model: type[M], values: Sequence[Any]) -> M:
    """A loaded instance from the values `columns(model, …)` selected."""
    converted = []
    for (converters, col), value in zip(_field_converters(model), values, strict=True):
        if value is not None:
            for convert in converters:
                value = convert(value, col, connection)
        converted.append(value)
    return model.from_db(connection.alias, _attnames(model), converted)


def _attnames(model: type[Model]) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields]


def split(row: Sequence[Any], *models: type[Model]) -> tuple[list[Any], ...]:
    """Cut a row into one slice per model (in order), the remaining values last."""
    parts, start = [], 0
    for model in models:
        parts.append(list(row[start : start + width(model)]))
        start += width(model)
    parts.append(list(row[start:]))
    return tuple(parts)


def set_prefetched(obj: Model, name: str, rows: list[Model]) -> None:
    """Store `rows` as `obj.<name>.all()`, as prefetch_related would (no query on access)."""
    queryset = getattr(obj, name).get_queryset()
    queryset._result_cache = rows
    queryset._prefetch_done = True
    if not hasattr(obj, "_prefetched_objects_cache"):
        obj._prefetched_objects_cache = {}
    obj._prefetched_objects_cache[name] = queryset


def fetch(sql: str, params: Sequence[Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
