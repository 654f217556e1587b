"""Reads for the annotation screens. Each function is a fixed, small number of queries."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import (
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    prefetch_related_objects,
)
from django.utils import timezone

from core import rows
from core.roles import Role, has_role
from feedback.models import (
    JUDGEMENT_MODELS,
    Assignment,
    AssignmentStatus,
    Completion,
    Demonstration,
    DemonstrationDraft,
    DemonstrationStatus,
    Item,
    ItemCompletion,
    Origin,
    PairwiseJudgement,
    Project,
    Prompt,
    RankingJudgement,
    TaskKind,
)


def member_or_open_q(user: AbstractBaseUser) -> Q:
    """Projects this (non-admin) user may annotate: listed as a member, or no list at all."""
    member = Project.annotators.through.objects.filter(project_id=OuterRef("pk"), user_id=user.pk)
    has_members = Project.annotators.through.objects.filter(project_id=OuterRef("pk"))
    return Exists(member) | ~Exists(has_members)


def project_find(*, reference: str) -> Project:
    """By id or by name (management commands take either); Project.DoesNotExist otherwise."""
    project = Project.objects.filter(pk=int(reference)).first() if reference.isdigit() else None
    return project or Project.objects.get(name=reference)


def projects_annotatable(*, user: AbstractBaseUser) -> QuerySet[Project]:
    """Active projects the user may work on (no counts: one indexed lookup per project)."""
    projects = Project.objects.filter(is_active=True)
    if not has_role(user, Role.ADMIN):
        projects = projects.filter(member_or_open_q(user))
    return projects


def project_annotatable(*, project_id: int, user: AbstractBaseUser) -> Project | None:
    """The project of `projects_annotatable(user=user)` with this id, or None: one query,
    written out because every API request for a task runs it (see core/rows.py)."""
    if not 0 < project_id < 2**63:  # an id from a URL: no row, and SQLite cannot bind it
        return None
    found = rows.fetch(_annotatable_sql(), [project_id, has_role(user, Role.ADMIN), user.pk])
    return rows.instance(Project, found[0]) if found else None


@cache
def _annotatable_sql() -> str:
    members = Project.annotators.through._meta.db_table
    return f"""
        SELECT {rows.columns(Project, "p")} FROM {Project._meta.db_table} p
        WHERE p.id = %s AND p.is_active
          AND (%s OR EXISTS (SELECT 1 FROM {members} m WHERE m.project_id = p.id AND m.user_id = %s)
               OR NOT EXISTS (SELECT 1 FROM {members} m WHERE m.project_id = p.id))
    """


def projects_for_annotator(*, user: AbstractBaseUser) -> QuerySet[Project]:
    """Active projects the user may work on, with their own and overall progress, and their
    rejected demonstrations waiting to be fixed."""
    rejected = Demonstration.objects.filter(
        annotator=user, item__project=OuterRef("pk"), status=DemonstrationStatus.REJECTED
    )
    return (
        projects_annotatable(user=user)
        .annotate(
            my_rejected=_Count(rejected.values("pk")),
            item_count=Count("items", distinct=True),
            my_done=Count(
                "items__assignments",
                filter=Q(
                    items__assignments__annotator=user,
                    items__assignments__status=AssignmentStatus.SUBMITTED,
                ),
                distinct=True,
            ),
        )
        .order_by("name")
    )


class _Count(Subquery):
    """`(SELECT count(*) FROM (…))`: a count as a column, so several counts are one query."""

    template = "(SELECT count(*) FROM (%(subquery)s) _counted)"
    output_field = IntegerField()


# The task screen counts open items on every submit: counting past this many would make each
# judgement cost more the bigger the project is (issue #19), so the header says "1,000+ left".
PROGRESS_LEFT_CAP = 1000


@dataclass(frozen=True)
class TaskProgress:
    done: int  # this annotator's submitted judgements in the project
    left: int  # items still open that they have neither submitted nor skipped (this one too)
    cap: int = PROGRESS_LEFT_CAP

    @property
    def capped(self) -> bool:
        """More than `cap` are left: `left` is then `cap + 1`, not the true number."""
        return self.left > self.cap

    @property
    def total(self) -> int:
        return self.done + self.left


def annotator_progress(*, project: Project, annotator: AbstractBaseUser) -> TaskProgress:
    """ "12 of 61 · 49 left" on the task screen, in one statement whose cost is bounded by the
    annotator's own work in this project and PROGRESS_LEFT_CAP, not by the project's size nor
    by their work elsewhere (assignment_mine_by_project: the assignment carries its project).

    Written by hand, as one pass over the annotator's own submitted and skipped assignments and
    one walk of item_queue_order over the open items, with nothing that pairs the two: every
    submit renders it, and the ORM spelling took longer to compile than to run. Per-item probes
    of the assignments, or a join of the two, let a plan made while the tables were small (a
    new project's first minutes, kept by the prepared statement) repeat a scan of the
    assignments for every open item (the bench's figures are in bench/README.md; the test of the
    statement's work is in tests/feedback/test_task_polish.py).

    left = min(open, cap + 1 + mine_open) - mine_open, where mine_open are the open items I
    already submitted or skipped: each item holds at most one assignment of mine."""
    item, assignment = Item._meta.db_table, Assignment._meta.db_table
    # PostgreSQL inlines a CTE used once, and then each use of m.open repeats its probe; SQLite
    # (which only learned the keyword in 3.35, after Django's minimum) computes it once anyway.
    materialized = "MATERIALIZED" if connection.vendor == "postgresql" else ""
    sql = f"""
        WITH m AS {materialized} (
          SELECT a.status,
                 (SELECT i.submitted_count < %(overlap)s FROM {item} i WHERE i.id = a.item_id)
                   AS open
          FROM {assignment} a
          WHERE a.annotator_id = %(me)s AND a.project_id = %(project)s
            AND a.status IN (%(submitted)s, %(skipped)s)
        ), mine AS (
          SELECT count(*) FILTER (WHERE m.status = %(submitted)s) AS done,
                 count(*) FILTER (WHERE m.open) AS finished_open
          FROM m
        )
        SELECT mine.done,
               (SELECT count(*) FROM (
                  SELECT 1 FROM {item} i
                  WHERE i.project_id = %(project)s AND i.submitted_count < %(overlap)s
                  LIMIT %(limit)s + (SELECT finished_open FROM mine)) open_items)
               - mine.finished_open
        FROM mine
    """
    ((done, left),) = rows.fetch(
        sql,
        {
            "me": annotator.pk,
            "project": project.pk,
            "overlap": project.overlap,
            "submitted": AssignmentStatus.SUBMITTED,
            "skipped": AssignmentStatus.SKIPPED,
            "limit": PROGRESS_LEFT_CAP + 1,
        },
    )
    return TaskProgress(done, left, cap=PROGRESS_LEFT_CAP)


def pair_model_names(*, item: Item) -> dict[str, str]:
    """Who wrote reply a (position 0) and reply b: an arena tells it once the vote is in."""
    pair = [ic.completion for ic in item.item_completions.select_related("completion")]
    names = [c.model_name or c.get_source_display() for c in pair]
    return dict(zip("ab", names, strict=True))


def project_completed_items(*, project: Project) -> int:
    return project.items.filter(submitted_count__gte=project.overlap).count()


def prefetch_completions(item: Item) -> None:
    """Load the item's completions, by position, with their text; no query if already loaded
    (the queue loads them when it leases an item, for the screen that shows it next)."""
    prefetch_related_objects(
        [item], Prefetch("item_completions", ItemCompletion.objects.select_related("completion"))
    )


class TaskView:
    """What a task screen needs: the item, its completions in this annotator's order.

    Each part is read on first use: a valid pairwise submit needs none of them."""

    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment
        self.item = assignment.item

    @property
    def kind(self) -> str:
        return self.item.kind

    @cached_property
    def canonical_ids(self) -> list[int]:
        """Completion ids by position: [A, B, ...]."""
        return list(self._by_id)

    @cached_property
    def completions(self) -> list[Completion]:
        # Canonical order (A, B, ...) when no shuffle was recorded, e.g. rows made elsewhere.
        order = [cid for cid in self.assignment.display_order if cid in self._by_id]
        return [self._by_id[cid] for cid in order or self._by_id]

    @cached_property
    def judgement(self) -> Any | None:
        return _judgement_for(self.assignment)

    @cached_property
    def draft(self) -> DemonstrationDraft | None:
        """A model's draft to start from: the one a submitted demonstration started from, else
        the item's current one (None when the item has none, or is not a demonstration)."""
        if self.kind != TaskKind.DEMONSTRATION:
            return None
        if self.judgement is not None:
            return self.judgement.draft
        return current_draft(item_id=self.item.pk)

    @cached_property
    def ai_votes(self) -> list[AIVote]:
        """How AI annotators voted on this pair, in this annotator's sides; empty unless the
        project shows them (Project.show_ai_votes)."""
        if self.kind != TaskKind.PAIRWISE or not self.item.project.show_ai_votes:
            return []
        left_id = self.completions[0].pk
        return ai_votes_shown(item=self.item, a_id=self.canonical_ids[0], left_id=left_id)

    @cached_property
    def _by_id(self) -> dict[int, Completion]:
        prefetch_completions(self.item)
        return {ic.completion_id: ic.completion for ic in self.item.item_completions.all()}


@dataclass(frozen=True)
class AIVote:
    voter: str
    choice: str  # canonical: a, b, tie or both_bad
    strength: str  # slight, clear, strong or ""
    preferred_id: int | None  # the reply it preferred
    side: str  # "left", "right", "tie" or "both bad", as this annotator sees the pair
    how_much: str  # "slightly", "clearly", "much" or ""


def current_draft(*, item_id: int) -> DemonstrationDraft | None:
    """The draft an item's editor starts from: its newest."""
    return DemonstrationDraft.objects.filter(item_id=item_id).order_by("-created_at", "-id").first()


def ai_votes_shown(*, item: Item, a_id: int, left_id: int) -> list[AIVote]:
    """AI annotators' votes on a pair (`a_id`: its canonical A), with sides named for whoever
    sees `left_id` on the left."""
    votes = (
        PairwiseJudgement.objects.filter(item=item, origin=Origin.AI)
        .select_related("annotator")
        .order_by("annotator__username")
    )
    b_id = item.item_completions.exclude(completion_id=a_id).values_list("completion_id", flat=True)
    preferred = {"a": a_id, "b": next(iter(b_id), None)}
    shown = []
    for vote in votes:
        if vote.choice in ("a", "b"):
            side = "left" if (vote.choice == "a") == (a_id == left_id) else "right"
        else:
            side = vote.get_choice_display().lower()
        how_much = vote.get_strength_display().lower() if vote.strength else ""
        shown.append(
            AIVote(
                vote.annotator.get_username(),
                vote.choice,
                vote.strength,
                preferred.get(vote.choice),
                side,
                how_much,
            )
        )
    return shown


def _judgement_for(assignment: Assignment) -> Any | None:
    if assignment.status != AssignmentStatus.SUBMITTED:
        return None
    return JUDGEMENT_MODELS[assignment.item.kind].objects.filter(assignment=assignment).first()


def canonical_a_id(assignment: Assignment) -> int:
    """The completion id at position 0 (canonical A) of the assignment's item: annotated by
    `assignment_for_user`, or taken from loaded completions, or one query."""
    known = getattr(assignment, "a_completion_id", None)
    if known is not None:
        return known
    item = assignment.item
    if "item_completions" in getattr(item, "_prefetched_objects_cache", {}):
        return item.item_completions.all()[0].completion_id
    return item.item_completions.get(position=0).completion_id


def task_view(*, assignment: Assignment) -> TaskView:
    return TaskView(assignment)


def assignment_for_user(*, assignment_id: int, user: AbstractBaseUser) -> Assignment | None:
    """The user's assignment with its item, project and prompt, and `a_completion_id` (the
    item's canonical A, which a pairwise submit needs): one query, written out because every
    submit runs it (see feedback/rows.py)."""
    if not 0 < assignment_id < 2**63:  # an id from a URL: no row, and SQLite cannot bind it
        return None
    found = rows.fetch(_assignment_sql(), [assignment_id, user.pk])
    if not found:
        return None
    a, i, p, pr, (a_completion_id,) = rows.split(found[0], Assignment, Item, Project, Prompt)
    assignment = rows.instance(Assignment, a)
    item = rows.instance(Item, i)
    item.project = rows.instance(Project, p)
    item.prompt = rows.instance(Prompt, pr)
    assignment.item = item
    assignment.a_completion_id = a_completion_id
    return assignment


@cache
def _assignment_sql() -> str:
    return f"""
        SELECT {rows.columns(Assignment, "a")}, {rows.columns(Item, "i")},
               {rows.columns(Project, "p")}, {rows.columns(Prompt, "pr")},
               (SELECT ic.completion_id FROM {ItemCompletion._meta.db_table} ic
                WHERE ic.item_id = i.id AND ic.position = 0)
        FROM {Assignment._meta.db_table} a
        JOIN {Item._meta.db_table} i ON i.id = a.item_id
        JOIN {Project._meta.db_table} p ON p.id = i.project_id
        JOIN {Prompt._meta.db_table} pr ON pr.id = i.prompt_id
        WHERE a.id = %s AND a.annotator_id = %s
    """


@dataclass(frozen=True)
class AnnotatorStats:
    username: str
    judgements: int
    skips: int
    median_seconds: float | None


@dataclass(frozen=True)
class StuckItem:
    item: Item
    skips: int
    reasons: list[str]
    stuck: bool


@dataclass(frozen=True)
class ProjectProgress:
    items: int
    complete: int
    needing_work: int
    judgements: int
    live_leases: int
    median_seconds: float | None
    per_annotator: list[AnnotatorStats]
    skipped: list[StuckItem]
    stuck_count: int
    imported: int = 0  # labels that came with imported files: nobody's work, no slot taken
    ai_votes: int = 0  # AI annotators' votes: no person's work either, and no slot taken


def eligible_annotators(*, project: Project) -> QuerySet:
    """Who the queue would serve: the project's member list, or every active annotator."""
    if project.annotators.exists():
        return project.annotators.all()
    return get_user_model().objects.filter(groups__name=Role.ANNOTATOR, is_active=True)


def annotator_candidates() -> QuerySet:
    """Who a project's member list may name: active users holding the annotator role."""
    return (
        get_user_model()
        .objects.filter(groups__name=Role.ANNOTATOR, is_active=True)
        .order_by("username")
        .distinct()
    )


def project_progress(*, project: Project) -> ProjectProgress:
    """Admin view of a project. Items "stuck": every eligible annotator who has not judged it
    skipped it, so it will never fill without intervention."""
    items = project.items.aggregate(
        total=Count("pk"), complete=Count("pk", filter=Q(submitted_count__gte=project.overlap))
    )
    # Imported labels are their source's, not a person's (feedback.services.imports.owner):
    # they are counted apart, never as an annotator's work.
    # AI votes likewise (feedback.services.assist).
    apart = [AssignmentStatus.IMPORTED, AssignmentStatus.AI]
    assignments = Assignment.objects.filter(item__project=project).exclude(status__in=apart)
    seconds_by_user: dict[str, list[float]] = {}
    all_seconds: list[float] = []
    for model in (Demonstration, PairwiseJudgement, RankingJudgement):
        rows = (
            model.objects.filter(item__project=project)
            .exclude(origin__in=[Origin.IMPORTED, Origin.AI])
            .values_list("annotator__username", "seconds_spent")
        )
        for username, seconds in rows:
            seconds_by_user.setdefault(username, [])
            if seconds is not None:
                seconds_by_user[username].append(seconds)
                all_seconds.append(seconds)
    counts = assignments.values("annotator__username").annotate(
        done=Count("pk", filter=Q(status=AssignmentStatus.SUBMITTED)),
        skips=Count("pk", filter=Q(status=AssignmentStatus.SKIPPED)),
    )
    per_annotator = [
        AnnotatorStats(
            username=row["annotator__username"],
            judgements=row["done"],
            skips=row["skips"],
            median_seconds=_median(seconds_by_user.get(row["annotator__username"], [])),
        )
        for row in counts.order_by("-done", "annotator__username")
    ]
    eligible = eligible_annotators(project=project)
    eligible_count = eligible.count()
    skipped_items = (
        project.items.annotate(
            skips=Count("assignments", filter=Q(assignments__status=AssignmentStatus.SKIPPED)),
            # Only eligible annotators' turns count: an admin's skip uses up nobody's.
            touched=Count(
                "assignments",
                filter=Q(
                    assignments__status__in=[AssignmentStatus.SKIPPED, AssignmentStatus.SUBMITTED],
                    assignments__annotator__in=eligible.values("pk"),
                ),
            ),
        )
        .filter(skips__gt=0)
        .select_related("prompt")
        .prefetch_related(
            Prefetch(
                "assignments",
                queryset=Assignment.objects.filter(status=AssignmentStatus.SKIPPED).exclude(
                    skip_reason=""
                ),
                to_attr="skips_with_reason",
            )
        )
        .order_by("-skips", "pk")
    )
    skipped = [
        StuckItem(
            item=item,
            skips=item.skips,
            reasons=[a.skip_reason for a in item.skips_with_reason[:5]],
            stuck=item.touched >= eligible_count and item.submitted_count < project.overlap,
        )
        for item in skipped_items[:200]
    ]
    stuck = skipped_items.filter(
        touched__gte=eligible_count, submitted_count__lt=project.overlap
    ).count()
    return ProjectProgress(
        items=items["total"],
        complete=items["complete"],
        needing_work=items["total"] - items["complete"],
        judgements=sum(a.judgements for a in per_annotator),
        live_leases=assignments.filter(
            status=AssignmentStatus.LEASED, expires_at__gt=timezone.now()
        ).count(),
        median_seconds=_median(all_seconds),
        per_annotator=per_annotator,
        skipped=skipped,
        stuck_count=stuck,
        imported=Assignment.objects.filter(
            item__project=project, status=AssignmentStatus.IMPORTED
        ).count(),
        ai_votes=Assignment.objects.filter(
            item__project=project, status=AssignmentStatus.AI
        ).count(),
    )


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None
