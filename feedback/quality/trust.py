"""Which annotators an export leaves out, judged by the figures of the quality page.

The figures are `reports.annotator_rows` — agreement with the leave-one-out consensus, accuracy on
gold items and the outlier flags — so "agreement" means the same on the quality page and in a
snapshot. A threshold acts on evidence, not on its absence: an annotator without a figure yet (no
item shared with two others, no gold item seen) is kept, and listed as unmeasured.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from feedback.models import Project

from .reports import annotator_rows


@dataclass(frozen=True)
class TrustDecision:
    # annotator id -> {"username": ..., "reasons": [...]}, in the quality page's order
    excluded: dict[int, dict] = field(default_factory=dict)
    # filter name -> usernames kept because they have no figure for it yet
    unmeasured: dict[str, list[str]] = field(default_factory=dict)


def annotator_trust(
    project: Project,
    *,
    origins: Collection[str],
    min_agreement: float | None = None,
    min_gold_accuracy: float | None = None,
    exclude_flagged: bool = False,
) -> TrustDecision:
    """Annotators to leave out of an export (with the reasons), for the given thresholds."""
    if min_agreement is None and min_gold_accuracy is None and not exclude_flagged:
        return TrustDecision()  # the report reads every judgement: only pay for it when asked
    excluded: dict[int, dict] = {}
    unmeasured: dict[str, list[str]] = {}
    for row in annotator_rows(project, origins=origins):
        reasons = []
        for name, threshold, figure, what in (
            ("min_annotator_agreement", min_agreement, row.loo_agreement, "agreement"),
            ("min_gold_accuracy", min_gold_accuracy, row.gold_accuracy, "gold accuracy"),
        ):
            if threshold is None:
                continue
            if figure is None:
                unmeasured.setdefault(name, []).append(row.username)
            elif figure < threshold:
                reasons.append(f"{what} {figure:.3g} below {threshold:.3g}")
        if exclude_flagged:
            reasons += [f"flagged: {flag}" for flag in row.flags]
        if reasons:
            excluded[row.user_id] = {"username": row.username, "reasons": reasons}
    return TrustDecision(excluded=excluded, unmeasured=unmeasured)
