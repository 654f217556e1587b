"""The dashboard's checkpoint table: lineage and the latest value of every metric, filtered and
sorted, its chart series and its CSV export. Two queries whatever the size: checkpoints with
their lineage joined in, then the latest results (results.latest_results)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from evals.models import ProjectChart
from feedback.models import Project
from modeling.models import Checkpoint

from .results import Column, Row, latest_results, results_table

MAX_DASHBOARD_CHECKPOINTS = 1000
SORTABLE = {"name", "kind", "lineage", "created"}
DEFAULT_SORT = "-created"


@dataclass
class Dashboard:
    columns: list[Column]
    rows: list[Row]
    sort: str
    truncated: bool = False

    def column(self, key: str) -> Column | None:
        return next((c for c in self.columns if c.key == key), None)

    def series(self, key: str) -> dict[str, Any] | None:
        """One metric across checkpoints in the order they were made, a line per lineage (base
        model), with the 95% interval of each point: what the metric chart draws."""
        column = self.column(key)
        if column is None:
            return None
        index = self.columns.index(column)
        points = sorted(
            (
                (row.checkpoint, row.cells[index])
                for row in self.rows
                if row.cells[index] is not None
            ),
            key=lambda pair: (pair[0].created_at, pair[0].pk),
        )
        labels = [checkpoint.display_name for checkpoint, _ in points]
        lines: dict[str, dict[str, Any]] = {}
        for position, (checkpoint, cell) in enumerate(points):
            root = checkpoint.base_model.display_name if checkpoint.base_model else checkpoint.name
            line = lines.setdefault(
                root,
                {"label": root, "data": [None] * len(points), "errorBars": [None] * len(points)},
            )
            line["data"][position] = cell.value
            if cell.low is not None and cell.high is not None:
                line["errorBars"][position] = [cell.low, cell.high]
        return {
            "key": column.key,
            "label": column.label,
            "lowerIsBetter": column.lower_is_better,
            "labels": labels,
            "datasets": list(lines.values()),
        }


def lineage_board(*, checkpoints: list[Checkpoint]) -> Dashboard:
    """The latest results of a lineage's checkpoints, base first: the checkpoint page charts a
    metric along it with Dashboard.series."""
    results = latest_results(checkpoints=[checkpoint.pk for checkpoint in checkpoints])
    columns, rows = results_table(checkpoints=checkpoints, results=results)
    return Dashboard(columns, rows, sort="")


def dashboard_checkpoints(
    *,
    project: Project | None = None,
    kind: str = "",
    created_from: dt.date | None = None,
    created_to: dt.date | None = None,
) -> QuerySet[Checkpoint]:
    """Checkpoints with their lineage (base, parent, job, snapshot and its project) joined in.
    A project's checkpoints are those trained on its snapshots, with their parents and bases."""
    checkpoints = Checkpoint.objects.select_related(
        "base_model", "parent", "job", "snapshot__project"
    )
    if project is not None:
        trained = Checkpoint.objects.filter(snapshot__project=project)
        checkpoints = checkpoints.filter(
            Q(snapshot__project=project)
            | Q(pk__in=trained.values("parent_id"))
            | Q(pk__in=trained.values("base_model_id"))
        )
    if kind:
        checkpoints = checkpoints.filter(kind=kind)
    if created_from:
        checkpoints = checkpoints.filter(created_at__date__gte=created_from)
    if created_to:
        checkpoints = checkpoints.filter(created_at__date__lte=created_to)
    return checkpoints.order_by("-created_at", "-id")


def _sort(rows: list[Row], columns: list[Column], sort: str) -> str:
    """Sort rows in place by `sort` ("name", "-created", or a column key, "-" for descending);
    rows without the metric go last either way. Returns the sort applied."""
    descending = sort.startswith("-")
    key = sort.removeprefix("-")
    if key in SORTABLE:
        getter = {
            "name": lambda row: row.checkpoint.name.lower(),
            "kind": lambda row: row.checkpoint.kind,
            # by base model, then in the order the rounds were trained
            "lineage": lambda row: (
                (row.checkpoint.base_model or row.checkpoint).name.lower(),
                row.checkpoint.created_at,
                row.checkpoint.pk,
            ),
            "created": lambda row: (row.checkpoint.created_at, row.checkpoint.pk),
        }[key]
        rows.sort(key=getter, reverse=descending)
        return sort
    keys = [column.key for column in columns]
    if key not in keys:
        return _sort(rows, columns, DEFAULT_SORT)
    index = keys.index(key)
    present = [row for row in rows if row.cells[index] is not None]
    missing = [row for row in rows if row.cells[index] is None]
    present.sort(key=lambda row: row.cells[index].value, reverse=descending)
    rows[:] = present + missing
    return sort


def dashboard(
    *,
    project: Project | None = None,
    kind: str = "",
    created_from: dt.date | None = None,
    created_to: dt.date | None = None,
    sort: str = DEFAULT_SORT,
    run_times: bool = False,
) -> Dashboard:
    """The checkpoint table: lineage and the latest value of every metric, filtered and sorted;
    with each value's run time only when asked (the CSV export)."""
    queryset = dashboard_checkpoints(
        project=project, kind=kind, created_from=created_from, created_to=created_to
    )
    checkpoints = list(queryset[: MAX_DASHBOARD_CHECKPOINTS + 1])
    truncated = len(checkpoints) > MAX_DASHBOARD_CHECKPOINTS
    checkpoints = checkpoints[:MAX_DASHBOARD_CHECKPOINTS]
    columns, rows = results_table(
        checkpoints=checkpoints,
        results=latest_results(checkpoints=[c.pk for c in checkpoints], run_times=run_times),
    )
    applied = _sort(rows, columns, sort or DEFAULT_SORT)
    return Dashboard(columns=columns, rows=rows, sort=applied, truncated=truncated)


CSV_HEADER = [
    "checkpoint", "checkpoint_id", "kind", "base_model", "parent", "job_id", "snapshot",
    "project", "created_at", "suite", "task", "metric", "value", "stderr", "ci_low", "ci_high",
    "n", "run_id", "run_finished_at",
]  # fmt: skip


def dashboard_csv_rows(board: Dashboard) -> Iterator[list[Any]]:
    """The table in long form, one line per (checkpoint, metric), header first. Text that people
    typed (names, task names) is made spreadsheet-safe; numbers stay numbers."""
    yield CSV_HEADER
    metric_columns = [
        [spreadsheet_safe(c.suite), spreadsheet_safe(c.task), spreadsheet_safe(c.metric)]
        for c in board.columns
    ]
    for row in board.rows:
        checkpoint = row.checkpoint
        snapshot = checkpoint.snapshot
        lineage = [
            spreadsheet_safe(checkpoint.name),
            checkpoint.pk,
            checkpoint.kind,
            spreadsheet_safe(checkpoint.base_model.name if checkpoint.base_model else ""),
            spreadsheet_safe(checkpoint.parent.name if checkpoint.parent else ""),
            checkpoint.job_id or "",
            spreadsheet_safe(snapshot.name if snapshot else ""),
            spreadsheet_safe(snapshot.project.name if snapshot else ""),
            checkpoint.created_at.isoformat(),
        ]
        for column, cell in zip(metric_columns, row.cells, strict=True):
            if cell is None:
                continue
            yield [
                *lineage,
                *column,
                cell.value,
                _blank_if_none(cell.stderr),
                _blank_if_none(cell.low),
                _blank_if_none(cell.high),
                _blank_if_none(cell.n),
                cell.run_id,
                cell.finished_at.isoformat() if cell.finished_at else "",
            ]


def spreadsheet_safe(text: str) -> str:
    """Names are typed by people: a leading = + - @ would run as a formula when the CSV is
    opened in a spreadsheet (CSV injection), so such text gets a quote in front."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _blank_if_none(value: float | None) -> float | str:
    return "" if value is None else value


def chart_metric_of(*, project: Project) -> str:
    """The metric this project's dashboard charts first ("" when it has none of its own)."""
    chart = ProjectChart.objects.filter(project=project).values_list("metric", flat=True)
    return chart.first() or ""
