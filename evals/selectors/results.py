"""Evaluation results as the pages read them: the latest succeeded value of every
(checkpoint, suite, task, metric) in one query, what each metric means, one checkpoint's history,
one run, and two checkpoints side by side."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber

from core.templatetags.core_tags import metric as format_number
from evals.ml.definitions import (
    MULTIPLE_CHOICE_DEFINITION,
    PERPLEXITY_DEFINITION,
    REWARD_ACCURACY_DEFINITION,
    STRIDED_PERPLEXITY_DEFINITION,
    TOY_TASK_METRICS,
    TOY_TASK_SCORE_DEFINITION,
    WIN_RATE_DEFINITION,
)
from evals.ml.reward_diagnostics import REWARD_DIAGNOSTICS_DEFINITIONS  # plain math, no torch
from evals.models import EvalResult, EvalRun, EvalSample, RunStatus, Suite
from modeling.models import Checkpoint

if TYPE_CHECKING:
    from evals.ml.paired import PairedDifference

# evals.ml words the generative and lm-eval suites in their docstrings; the dashboard needs them
# as tooltips too.
GENERATIVE_DEFINITION = (
    "Generative task: the model answers each prompt (greedy decoding, up to the task's stop "
    "sequence, end of turn or max_new_tokens, as lm-evaluation-harness's generate_until), and "
    "the answer is scored against the target: exact_match compares the stripped answer, "
    "contains looks for the target in it, regex needs the whole answer to match. Standard "
    "error: sample standard error of the mean (n - 1); 95% interval: value ± 1.96 stderr."
)
LM_EVAL_DEFINITION = (
    "As reported by lm-evaluation-harness (simple_evaluate, offline) for the named task; "
    "95% interval: value ± 1.96 × lm-eval's standard error."
)
INTERVAL_NOTE = " 95% interval: value ± 1.96 stderr, clipped to [0, 1]."
SUITE_DEFINITIONS = {
    Suite.PERPLEXITY: f"{PERPLEXITY_DEFINITION} token_perplexity: {STRIDED_PERPLEXITY_DEFINITION}",
    Suite.MULTIPLE_CHOICE: MULTIPLE_CHOICE_DEFINITION + INTERVAL_NOTE,
    Suite.GENERATIVE: GENERATIVE_DEFINITION,
    Suite.REWARD_ACCURACY: REWARD_ACCURACY_DEFINITION + INTERVAL_NOTE,
    Suite.WIN_RATE: WIN_RATE_DEFINITION,
    Suite.LM_EVAL: LM_EVAL_DEFINITION,
}
# A metric whose meaning differs from the rest of its suite's.
METRIC_DEFINITIONS = {
    (Suite.PERPLEXITY, "token_perplexity"): STRIDED_PERPLEXITY_DEFINITION,
    **{(Suite.GENERATIVE, metric): TOY_TASK_SCORE_DEFINITION for metric in TOY_TASK_METRICS},
    **{
        (Suite.PERPLEXITY, metric): PERPLEXITY_DEFINITION
        for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte")
    },
}


def lower_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return "perplexity" in name or "bits_per_byte" in name or name in ("brier", "ece")


def metric_definition(suite: str, metric: str) -> str:
    """The metric's own definition where it has one (the reward diagnostics', by family:
    accuracy/agreement=unanimous is an accuracy/agreement), else its suite's."""
    exact = METRIC_DEFINITIONS.get((suite, metric))
    if exact:
        return exact
    if suite == Suite.REWARD_ACCURACY:
        family = metric.split("=", 1)[0]
        text = REWARD_DIAGNOSTICS_DEFINITIONS.get(family) or REWARD_DIAGNOSTICS_DEFINITIONS.get(
            family.split("/", 1)[0]
        )
        if text:
            return text
    return SUITE_DEFINITIONS.get(suite, "")


# --- the checkpoint table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    suite: str
    task: str
    metric: str

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.task}/{self.metric}"

    @property
    def label(self) -> str:
        return f"{self.task} · {self.metric}"

    @property
    def suite_label(self) -> str:
        return Suite(self.suite).label if self.suite in Suite.values else self.suite

    @property
    def definition(self) -> str:
        return metric_definition(self.suite, self.metric)

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)


class Cell(NamedTuple):
    """The latest succeeded value of one metric on one checkpoint. A tuple, because the
    dashboard builds ten thousand of them straight from database rows."""

    value: float
    stderr: float | None
    low: float | None
    high: float | None
    n: int | None
    run_id: int
    finished_at: dt.datetime | None

    @property
    def text(self) -> str:
        return format_number(self.value)

    @property
    def interval(self) -> str:
        if self.low is None or self.high is None:
            return ""
        return f"{format_number(self.low)} – {format_number(self.high)}"

    @property
    def title(self) -> str:
        return self.title_with(self.interval)

    def title_with(self, interval: str) -> str:
        """The tooltip, given the interval already formatted (the dashboard shows it too)."""
        parts = [f"95% CI {interval}"] if interval else []
        if self.stderr is not None:
            parts.append(f"stderr {format_number(self.stderr)}")
        if self.n is not None:
            parts.append(f"n = {self.n}")
        parts.append(f"run #{self.run_id}")
        return " · ".join(parts)


@dataclass
class Row:
    checkpoint: Checkpoint
    cells: list[Cell | None]


def latest_results(
    *, checkpoints: QuerySet[Checkpoint] | Iterable[int], run_times: bool = True
) -> list[tuple]:
    """(checkpoint id, suite, task, metric, value, stderr, low, high, n, run id, finished at) of
    the newest succeeded run per (checkpoint, suite, task, metric), in one query. Older runs are
    history: they stay in the database and on the run pages. run_times=False leaves finished at
    None: the dashboard page shows no times, and loading ten thousand of them was a tenth of its
    CPU."""
    ids = checkpoints.values("pk") if isinstance(checkpoints, QuerySet) else list(checkpoints)
    fields = ["run__checkpoint_id", "run__suite", "run__task", "metric", "value", "stderr"]
    fields += ["ci_low", "ci_high", "n", "run_id"]
    if not run_times:
        return [(*row, None) for row in _newest_results(ids).values_list(*fields)]
    return list(_newest_results(ids).values_list(*fields, "run__finished_at"))


def _newest_results(ids) -> QuerySet[EvalResult]:
    return (
        EvalResult.objects.filter(run__status=RunStatus.SUCCEEDED, run__checkpoint__in=ids)
        .annotate(
            newest=Window(
                RowNumber(),
                partition_by=[
                    F("run__checkpoint_id"),
                    F("run__suite"),
                    F("run__task"),
                    F("metric"),
                ],
                order_by=F("run_id").desc(),
            )
        )
        .filter(newest=1)
    )


def results_table(
    *, checkpoints: list[Checkpoint], results: list[tuple]
) -> tuple[list[Column], list[Row]]:
    columns: dict[tuple[str, str, str], Column] = {}
    by_checkpoint: dict[int, dict[tuple[str, str, str], Cell]] = defaultdict(dict)
    for checkpoint_id, suite, task, metric, *numbers in results:
        key = (suite, task, metric)
        if key not in columns:
            columns[key] = Column(suite, task, metric)
        by_checkpoint[checkpoint_id][key] = Cell._make(numbers)
    suite_order = {suite: index for index, suite in enumerate(Suite.values)}
    keys = sorted(columns, key=lambda k: (suite_order.get(k[0], 99), k[1], k[2]))
    rows = []
    for checkpoint in checkpoints:
        cells = by_checkpoint.get(checkpoint.pk, {})
        rows.append(Row(checkpoint, [cells.get(key) for key in keys]))
    return [columns[key] for key in keys], rows


# --- one checkpoint, one run -----------------------------------------------------------------


def checkpoint_metrics(*, checkpoint: Checkpoint) -> list[tuple[Column, Cell]]:
    columns, rows = results_table(
        checkpoints=[checkpoint], results=latest_results(checkpoints=[checkpoint.pk])
    )
    return [(column, cell) for column, cell in zip(columns, rows[0].cells, strict=True) if cell]


def checkpoint_runs(*, checkpoint: Checkpoint, limit: int = 200) -> list[EvalRun]:
    """Every run of the checkpoint, newest first, with its results: the history."""
    return list(
        EvalRun.objects.filter(checkpoint=checkpoint)
        .select_related("created_by", "triggered_by_job", "reference", "judge", "snapshot")
        .prefetch_related("results")[:limit]
    )


def eval_runs(
    *, checkpoint_id: int | None = None, suite: str | None = None, status: str | None = None
) -> QuerySet[EvalRun]:
    """Runs with their checkpoint, requester and results, newest first, optionally filtered."""
    runs = EvalRun.objects.select_related("checkpoint", "created_by").prefetch_related("results")
    if checkpoint_id is not None:
        runs = runs.filter(checkpoint_id=checkpoint_id)
    if suite:
        runs = runs.filter(suite=suite)
    if status:
        runs = runs.filter(status=status)
    return runs


def runs_recent(*, limit: int = 20) -> list[EvalRun]:
    return list(
        EvalRun.objects.select_related("checkpoint", "created_by").prefetch_related("results")[
            :limit
        ]
    )


def run_detail(*, run_id: int) -> EvalRun:
    return EvalRun.objects.select_related(
        "checkpoint", "reference", "judge", "snapshot__project", "created_by", "triggered_by_job"
    ).get(pk=run_id)


def run_samples(*, run: EvalRun, limit: int = 500) -> list[EvalSample]:
    return list(run.samples.all()[:limit])


# --- side by side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDelta:
    column: Column
    a: Cell | None
    b: Cell | None

    @property
    def delta(self) -> float | None:
        if self.a is None or self.b is None:
            return None
        return self.b.value - self.a.value

    @property
    def delta_text(self) -> str:
        return "" if self.delta is None else f"{self.delta:+.4g}"

    @property
    def better(self) -> str:
        """ "a" or "b" when its 95% interval lies wholly on the better side of the other's, else
        "" (no interval, or they overlap)."""
        a, b = self.a, self.b
        if a is None or b is None or None in (a.low, a.high, b.low, b.high):
            return ""
        if b.low > a.high:
            higher = "b"
        elif a.low > b.high:
            higher = "a"
        else:
            return ""
        if self.column.lower_is_better:
            return "a" if higher == "b" else "b"
        return higher


@dataclass(frozen=True)
class SamplePair:
    prompt: str
    target: str
    a: EvalSample | None
    b: EvalSample | None


@dataclass
class SampleGroup:
    suite: str
    task: str
    run_a: int
    run_b: int
    pairs: list[SamplePair] = field(default_factory=list)  # those that differ first
    total: int = 0
    # Over the prompts both answered and both were graded on: the paired difference of
    # right answers (b − a) with its 95% interval, McNemar's exact p, and how many prompts
    # the two got differently (one right, the other wrong).
    paired: PairedDifference | None = None
    mcnemar: float | None = None
    discordant: int = 0
    differ: int = 0  # prompts whose two answers are not the same text

    @property
    def mcnemar_text(self) -> str:
        return "" if self.mcnemar is None else f"{self.mcnemar:.2g}"


@dataclass
class Comparison:
    a: Checkpoint
    b: Checkpoint
    deltas: list[MetricDelta]
    samples: list[SampleGroup]


def comparison(a: Checkpoint, b: Checkpoint, *, samples_per_task: int = 50) -> Comparison:
    """Metric deltas (b − a) of the latest succeeded results, and the two checkpoints' answers
    to the same prompts of every generative task both were evaluated on."""
    columns, rows = results_table(
        checkpoints=[a, b], results=latest_results(checkpoints=[a.pk, b.pk])
    )
    deltas = [MetricDelta(c, rows[0].cells[i], rows[1].cells[i]) for i, c in enumerate(columns)]

    latest: dict[tuple[int, str, str], int] = {}
    for run_id, checkpoint_id, suite, task in (
        EvalRun.objects.filter(
            checkpoint__in=[a.pk, b.pk],
            status=RunStatus.SUCCEEDED,
            suite__in=[Suite.GENERATIVE, Suite.WIN_RATE],
        )
        .order_by("-id")
        .values_list("id", "checkpoint_id", "suite", "task")
    ):
        latest.setdefault((checkpoint_id, suite, task), run_id)
    groups = [
        SampleGroup(suite, task, run_a, latest[(b.pk, suite, task)])
        for (checkpoint_id, suite, task), run_a in sorted(latest.items(), key=lambda kv: kv[0][1:])
        if checkpoint_id == a.pk and (b.pk, suite, task) in latest
    ]
    if groups:
        samples: dict[int, list[EvalSample]] = defaultdict(list)
        wanted = [g.run_a for g in groups] + [g.run_b for g in groups]
        for sample in EvalSample.objects.filter(run_id__in=wanted).order_by("position"):
            samples[sample.run_id].append(sample)
        for group in groups:
            _pair_up(group, samples[group.run_a], samples[group.run_b], samples_per_task)
    return Comparison(a=a, b=b, deltas=deltas, samples=groups)


def _pair_up(group: SampleGroup, mine: list, theirs: list, shown: int) -> None:
    """Join the two runs' answers by prompt, measure the paired difference, and put first the
    prompts where the two checkpoints answer differently: those are what changed."""
    from evals.ml.paired import mcnemar_p, paired_difference  # scipy: only when comparing

    by_prompt = {s.prompt: s for s in theirs}
    pairs = [SamplePair(m.prompt, m.target, m, by_prompt.get(m.prompt)) for m in mine]
    graded = [p for p in pairs if p.b and p.a.correct is not None and p.b.correct is not None]
    before = [bool(p.a.correct) for p in graded]
    after = [bool(p.b.correct) for p in graded]
    if len(graded) >= 2:
        group.paired = paired_difference([float(v) for v in before], [float(v) for v in after])
        group.mcnemar = mcnemar_p(before, after)
    group.discordant = sum(x != y for x, y in zip(before, after, strict=True))

    def differs(pair: SamplePair) -> tuple[bool, bool]:
        verdicts = pair.b is not None and pair.a.correct != pair.b.correct
        texts = pair.b is not None and pair.a.output.strip() != pair.b.output.strip()
        return verdicts, texts

    group.differ = sum(differs(p)[1] for p in pairs)
    group.total = len(pairs)
    # Stable: within each kind of difference, the task's own order.
    group.pairs = sorted(pairs, key=differs, reverse=True)[:shown]
