"""Dataset snapshots: immutable, content-hashed exports in the shapes TRL trainers load directly.

Kinds and row shapes (conversational whenever the prompt is a conversation, which it always is
here: a prompt is a list of messages, with the system message first when there is one):

- ``sft``: ``{"messages": [..., {"role": "assistant", "content": demonstration}]}`` or, with
  ``format="prompt_completion"``, ``{"prompt": [...], "completion": [{"role": "assistant", ...}]}``.
- ``preference``: ``{"prompt": [...], "chosen": [assistant message], "rejected": [...]}`` plus
  metadata columns. Pairwise judgements and rankings (expanded to every implied pair) feed it.
- ``prompts``: ``{"prompt": [...]}`` for PPO / RLOO / GRPO and generation.

Aggregation of the k judgements an item received (``aggregation``):

- ``majority`` (default): one row per item (per completion pair for rankings). The side with more
  votes wins; ``agreement`` is the winner's share of all votes on the pair, ties and both-bad
  included, and rows below ``min_agreement`` (default 0.5) are left out. A pair whose votes are
  level produces no row.
- ``dawid_skene``: one row per item (per completion pair for rankings), the answer with the
  highest posterior of a Dawid–Skene model (``feedback.quality.dawid_skene``) fitted on every
  judgement the snapshot takes — pairwise choices (A, B, tie, both bad) in one model, ranking
  pairs (lower id wins, higher id wins, tie) in another — so a vote counts by its annotator's
  estimated reliability: one careful annotator can outweigh two careless ones. Rows carry
  ``posterior`` (the answer's probability; null on adjudicated rows) and ``agreement`` (the
  share of the votes that gave it). ``min_agreement`` does not apply; ``min_posterior`` (off by
  default) drops a pair whose answer's posterior is lower. Two answers level at the top give no
  row. An annotator is their user, so imported labels (one system user) are one source.
- ``all``: every decisive judgement is its own row (``agreement`` is still reported).

An item with an ``Adjudication`` (the latest one counts) takes the adjudicated answer instead of
any aggregation, whatever its votes' agreement; its rows say ``aggregation: "adjudicated"``
(others say ``"majority"``, ``"dawid_skene"`` or ``"all"``). ``min_item_agreement`` (off by
default) drops a pair whose most common answer — A, B, tie and both-bad being four answers — has
a smaller share of its votes than that (``feedback.quality.reports.plurality_share``), in every
aggregation.
An adjudicated item is exported only while some of its judgements pass the filters below (its
rows describe those votes); one whose every judgement is filtered out gives no row.

Ties and both-bad never become chosen/rejected rows; with ``keep_ties`` they are kept as rows with
``outcome`` "tie" / "both_bad" (chosen and rejected then just name the two sides) so a trainer can
filter them. Every preference row carries ``outcome`` ("chosen" for ordinary rows).

Filters applied before aggregation, for every kind:

- Gold items are quality-control data: judgements on them (and, for ``prompts``, a prompt that
  carries a gold item) are left out unless ``include_gold``; their gold answers never are
  exported.
- Annotator trust (SFT and preference; off by default): ``min_annotator_agreement`` (agreement
  with the leave-one-out consensus), ``min_gold_accuracy`` and ``exclude_flagged`` leave out
  every judgement of an annotator whose figure on the quality page falls short
  (``feedback.quality.trust``). The figures are taken over the human (and, when included,
  simulated) judgements; imported judgements are not anyone's work and are never left out by
  annotator.

``DatasetSnapshot.stats`` (and the manifest) record the annotators left out with the reasons,
those kept for lack of a figure, how many judgements / pairs each filter dropped, and the number
of adjudicated pairs.

The held-out split is chosen stably by prompt hash (``test_fraction``, default 0.1), and a prompt
imported with ``split="test"`` is always held out: the same prompt never lands in both.
Imported, simulated and AI judgements are left out unless ``include_imported`` /
``include_simulated`` / ``include_ai``. An SFT row written from a model's draft carries
``draft_model`` and ``draft_edit_distance`` (0: kept as drafted, 1: nothing kept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from feedback.models import DatasetSnapshot, Project, SnapshotKind
from feedback.quality.trust import TrustDecision, annotator_trust
from jobs.models import Status
from jobs.services import Heartbeat, work_claim, work_finish

from ..validation import clean_text
from .files import write_companions, write_rows
from .policy import MEASURED, clean_policy, conversation, origins, prompt_split
from .rows import DROPPED, ROWS, Build

logger = logging.getLogger(__name__)

__all__ = [
    "clean_policy",
    "conversation",
    "prompt_split",
    "snapshot_build",
    "snapshot_create",
    "snapshot_request",
]


@contextlib.contextmanager
def _consistent_reads() -> Iterator[None]:
    """One read-only transaction for every read of a build, seeing one state of the database.

    On PostgreSQL it is REPEATABLE READ: every statement sees the database as its first query
    found it, so a judgement committed while the snapshot builds is in the trust figures and the
    exported rows alike, or in neither (under READ COMMITTED each query saw a newer state, and an
    annotator the trust filter never measured could still have rows exported). The level can only
    be set by a transaction's first statement: inside a caller's transaction the build reads in
    that one (a test's, say). SQLite's read transaction already sees one state from its first
    read to its end.

    Inside a transaction Django's server-side cursors also stream (outside, it declares them
    WITH HOLD, and each query then runs to its end before the first row comes); and on
    PostgreSQL they are planned for reading every row, not the first tenth
    (cursor_tuple_fraction), since a plan picked for a quick start with statistics that predate
    a large import can rescan a table for every row."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                if outermost:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor.execute("SET LOCAL cursor_tuple_fraction = 1.0")
        yield


def snapshot_request(
    *,
    project: Project,
    kind: str,
    name: str,
    created_by: AbstractBaseUser | None,
    policy: dict[str, Any] | None = None,
) -> DatasetSnapshot:
    """Validate and record a queued snapshot; `snapshot_build` fills it."""
    cleaned = clean_policy(kind, policy)
    name = clean_text(name, field="name", allow_blank=True).strip()
    name = name or f"{project.name} {kind} {timezone.now():%Y-%m-%d %H:%M}"
    return DatasetSnapshot.objects.create(
        project=project, kind=kind, name=name[:200], policy=cleaned, created_by=created_by
    )


def snapshot_build(*, snapshot: DatasetSnapshot, worker_host: str = "") -> DatasetSnapshot:
    """Claim a queued snapshot, write its files, then finish it with counts and hash; a failure
    is recorded on the row, not raised. A second delivery finds nothing to claim, so two workers
    never write the same folder."""
    if not work_claim(DatasetSnapshot, pk=snapshot.pk, worker_host=worker_host):
        return DatasetSnapshot.objects.get(pk=snapshot.pk)
    snapshot = DatasetSnapshot.objects.select_related("project").get(pk=snapshot.pk)
    relative = Path("snapshots") / str(snapshot.project_id) / str(snapshot.pk)
    directory = Path(settings.MEDIA_ROOT) / relative
    with Heartbeat(DatasetSnapshot, snapshot.pk):
        try:
            fields = _write_snapshot(snapshot, directory)
        except Exception as exc:
            logger.warning("Snapshot %s failed", snapshot.pk, exc_info=True)
            shutil.rmtree(directory, ignore_errors=True)
            work_finish(DatasetSnapshot, pk=snapshot.pk, status=Status.FAILED, error=_reason(exc))
            return DatasetSnapshot.objects.get(pk=snapshot.pk)
    if not work_finish(
        DatasetSnapshot, pk=snapshot.pk, status=Status.SUCCEEDED, directory=str(relative), **fields
    ):
        # The sweep decided first (a worker thought dead): the files of a failed row go.
        shutil.rmtree(directory, ignore_errors=True)
    return DatasetSnapshot.objects.get(pk=snapshot.pk)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _write_snapshot(snapshot: DatasetSnapshot, directory: Path) -> dict[str, Any]:
    """The files and manifest of one snapshot; returns the row's fields that describe them."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    # Cleaned again: a snapshot requested before a policy key existed builds with its default
    # (and one whose policy is no longer valid fails, recorded, like any error).
    policy = clean_policy(snapshot.kind, snapshot.policy)
    with _consistent_reads():
        trust = annotator_trust(
            snapshot.project,
            origins=[o for o in origins(policy) if o in MEASURED],
            min_agreement=policy.get("min_annotator_agreement"),
            min_gold_accuracy=policy.get("min_gold_accuracy"),
            exclude_flagged=policy.get("exclude_flagged", False),
        )
        build = Build(snapshot.project, policy, frozenset(trust.excluded), snapshot.kind)
        counts, content_hash, column_types = write_rows(ROWS[snapshot.kind](build), directory)
    write_companions(directory, counts, column_types)
    stats = _stats(build, trust)
    manifest = {
        "name": snapshot.name,
        "kind": snapshot.kind,
        "project": snapshot.project.name,
        "policy": policy,
        "stats": stats,
        "row_counts": counts,
        "content_hash": content_hash,
        "created_at": snapshot.created_at.isoformat(),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return {"policy": policy, "stats": stats, "row_counts": counts, "content_hash": content_hash}


def _stats(build: Build, trust: TrustDecision) -> dict[str, Any]:
    """What the filters did, for the snapshot page and the manifest: every count is there,
    zeros included, so that "nothing was dropped" is said rather than implied."""
    dropped = {name: build.dropped[name] for name in DROPPED[build.kind]}
    stats: dict[str, Any] = {
        "dropped": dropped,
        "excluded_annotators": list(trust.excluded.values()),
        "unmeasured_annotators": trust.unmeasured,
    }
    if build.kind == SnapshotKind.PREFERENCE:
        stats["adjudicated_pairs"] = build.adjudicated_pairs
    return stats


def snapshot_create(
    *,
    project: Project,
    kind: str,
    name: str = "",
    created_by: AbstractBaseUser | None = None,
    policy: dict[str, Any] | None = None,
) -> DatasetSnapshot:
    """Request and build in one call (management commands, tests, small projects)."""
    with transaction.atomic():
        snapshot = snapshot_request(
            project=project, kind=kind, name=name, created_by=created_by, policy=policy
        )
    return snapshot_build(snapshot=snapshot)
