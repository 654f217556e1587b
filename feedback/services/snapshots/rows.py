"""The rows of each kind of snapshot, read from the database in a deterministic order."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast

from feedback.models import (
    Adjudication,
    Demonstration,
    Item,
    ItemCompletion,
    JudgementBase,
    PairwiseJudgement,
    Project,
    Prompt,
    RankingJudgement,
    SnapshotKind,
)
from feedback.quality.reports import plurality_share

from .policy import (
    CHUNK,
    MEASURED,
    STRENGTH_SCORE,
    assistant_turn,
    conversation,
    origins,
    prompt_split,
)
from .posterior import (
    dawid_skene_fit,
    pairwise_labels,
    pairwise_posterior,
    ranked_pairs,
    ranking_labels,
    ranking_posterior,
)


@dataclass
class Build:
    """One build's inputs — the project, its cleaned policy, the annotators the trust filters
    left out — and what each filter dropped, counted while the rows are generated."""

    project: Project
    policy: dict[str, Any]
    excluded: frozenset[int] = frozenset()
    kind: str = ""
    dropped: Counter = field(default_factory=Counter)
    adjudicated_pairs: int = 0

    @cached_property
    def leaves_out_gold(self) -> bool:
        """Whether there is gold to leave out: most projects have none, and then the export
        reads exactly as it would without the filter (and without counting for it)."""
        if self.policy["include_gold"]:
            return False
        return Item.objects.filter(project=self.project, is_gold=True).exists()

    def judgements(self, model: type[JudgementBase], **filters: Any) -> QuerySet:
        """The rows of `model` the snapshot reads: its project and origins, gold items and
        left-out annotators removed (and counted)."""
        considered = model.objects.filter(
            item__project=self.project, origin__in=origins(self.policy), **filters
        )
        if self.leaves_out_gold:
            # Gold items are quality control: their answers, and the judgements made on them,
            # are what annotators are measured against, not training labels.
            self.dropped["gold_judgements"] += considered.filter(item__is_gold=True).count()
            considered = considered.filter(item__is_gold=False)
        if self.excluded:
            left_out = {"annotator_id__in": self.excluded, "origin__in": MEASURED}
            self.dropped["excluded_annotator_judgements"] += considered.filter(**left_out).count()
            considered = considered.exclude(**left_out)
        return considered


# --- row generators (each yields (split, row) in a deterministic order) --------------------------


def _sft_rows(build: Build) -> Iterator[tuple[str, dict]]:
    policy = build.policy
    demos = build.judgements(Demonstration, status__in=policy["statuses"]).order_by("item_id", "id")
    fields = ("id", "item_id", "text", "draft__model_name", "draft_edit_distance")
    fields += _prompt_fields("item__prompt__")
    for demo_id, item_id, text, drafter, edited, *prompt in demos.values_list(*fields).iterator(
        CHUNK
    ):
        prompt_id, content_hash, declared, system, messages = prompt
        split = prompt_split(content_hash, declared, policy["test_fraction"])
        convo = conversation(system, messages)
        meta = {"item_id": item_id, "prompt_id": prompt_id, "judgement_id": demo_id}
        if edited is not None:  # written from a model's draft: which, and how much was changed
            meta |= {"draft_model": drafter, "draft_edit_distance": edited}
        if policy["format"] == "messages":
            yield split, {"messages": [*convo, *assistant_turn(text)], **meta}
        else:
            yield split, {"prompt": convo, "completion": assistant_turn(text), **meta}


def _prompt_rows(build: Build) -> Iterator[tuple[str, dict]]:
    prompts = Prompt.objects.filter(project=build.project)
    if build.leaves_out_gold:
        # A prompt is only a task here; one that carries a gold item is left out whole.
        build.dropped["gold_prompts"] += prompts.filter(items__is_gold=True).distinct().count()
        prompts = prompts.exclude(items__is_gold=True)
    for prompt_id, content_hash, declared, system, messages in (
        prompts.order_by("id").values_list(*_prompt_fields()).iterator(CHUNK)
    ):
        split = prompt_split(content_hash, declared, build.policy["test_fraction"])
        yield split, {"prompt": conversation(system, messages), "prompt_id": prompt_id}


def _prompt_fields(prefix: str = "") -> tuple:
    """A prompt's values as the row streams read them: plain values, as model instances cost
    more to build than the rest of a row, and the messages as their JSON text, which orjson
    decodes in a fifth of the time Django's JSONField takes (with json)."""
    names = (f"{prefix}{name}" for name in ("id", "content_hash", "split", "system"))
    return (*names, Cast(f"{prefix}messages", output_field=TextField()))


def _grouped(rows: Iterator[tuple]) -> Iterator[tuple[Any, list[tuple]]]:
    """(key, [rest of each row...]) for runs of rows sharing their first value."""
    current, group = None, []
    for key, *rest in rows:
        if key != current and group:
            yield current, group
            group = []
        current = key
        group.append(tuple(rest))
    if group:
        yield current, group


def _judged_items(judgements) -> Iterator[tuple[int, list, tuple, dict[int, tuple[int, str]]]]:
    """(item_id, its judgements' values, its prompt's values, {completion_id: (position, text)})
    for every item with a judgement in `judgements`, a values_list ordered by item_id.

    Prompts and completions come as two more streams ordered by item, merged here: no queries
    per batch of items and no lists of ids sent back and forth.
    """
    items = judgements.values("item_id")
    prompts = Item.objects.filter(pk__in=items).order_by("id").values_list("id", *_ITEM_PROMPT)
    completions = (
        ItemCompletion.objects.filter(item_id__in=items)
        .order_by("item_id", "position")
        .values_list("item_id", "completion_id", "position", "completion__text")
    )
    prompt_of = _Lookahead((pk, tuple(values)) for pk, *values in prompts.iterator(CHUNK))
    completions_of = _Lookahead(_grouped(completions.iterator(CHUNK)))
    for item_id, votes in _grouped(judgements.iterator(CHUNK)):
        prompt, texts = prompt_of.get(item_id), completions_of.get(item_id)
        if prompt is None or texts is None:
            # Judged after the other streams were read (or an item without completions).
            prompt, texts = _item_context(item_id)
        yield item_id, votes, prompt, {cid: (position, text) for cid, position, text in texts}


_ITEM_PROMPT = _prompt_fields("prompt__")


class _Lookahead:
    """Looks values up by key in a stream of (key, value) sorted by key, keys asked in order."""

    def __init__(self, pairs: Iterator[tuple[Any, Any]]) -> None:
        self.pairs = iter(pairs)
        self.head = next(self.pairs, None)

    def get(self, key: Any) -> Any:
        while self.head is not None and self.head[0] < key:
            self.head = next(self.pairs, None)
        return self.head[1] if self.head is not None and self.head[0] == key else None


def _item_context(item_id: int) -> tuple[tuple, list[tuple[int, int, str]]]:
    prompt = Item.objects.filter(pk=item_id).values_list(*_ITEM_PROMPT).get()
    texts = ItemCompletion.objects.filter(item_id=item_id).values_list(
        "completion_id", "position", "completion__text"
    )
    return prompt, list(texts)


def _pairwise_votes(judgements: list, completions: dict) -> dict[tuple[int, int], list]:
    """A vote is (winner_id | None, outcome, strength_score, judgement_id), keyed by the sorted
    completion pair so that ranking pairs and pairwise items aggregate the same way."""
    side = {position: cid for cid, (position, _) in completions.items()}
    a, b = side[0], side[1]
    key = (min(a, b), max(a, b))
    votes: dict[tuple[int, int], list] = defaultdict(list)
    for judgement_id, choice, strength in judgements:
        winner = {"a": a, "b": b}.get(choice)
        votes[key].append((winner, choice, STRENGTH_SCORE.get(strength, 0), judgement_id))
    return votes


def _ranking_votes(judgements: list, completions: dict) -> dict[tuple[int, int], list]:
    votes: dict[tuple[int, int], list] = defaultdict(list)
    for judgement_id, ranking in judgements:
        for pair, winner in ranked_pairs(ranking):
            outcome = "tie" if winner is None else "ranked"
            votes[pair].append((winner, outcome, 0, judgement_id))
    return votes


def _verdicts(project: Project) -> dict[int, tuple]:
    """The latest adjudication of each item, shaped like the judgement it settles:
    (None, choice, "") for a pairwise item, (None, ranking) for a ranking item."""
    verdicts: dict[int, tuple] = {}
    adjudications = Adjudication.objects.filter(item__project=project).order_by(
        "item_id", "-created_at", "-id"
    )
    for item_id, choice, ranking in adjudications.values_list("item_id", "choice", "ranking"):
        if item_id not in verdicts:
            verdicts[item_id] = (None, choice, "") if choice else (None, ranking)
    return verdicts


def _preference_rows(build: Build) -> Iterator[tuple[str, dict]]:
    verdicts = _verdicts(build.project)
    by_posterior = build.policy["aggregation"] == "dawid_skene"
    sources = [
        (
            build.judgements(PairwiseJudgement, status__in=build.policy["statuses"]),
            ("id", "choice", "strength"),
            _pairwise_votes,
            (("choice",), pairwise_labels, pairwise_posterior),
        ),
        (
            build.judgements(RankingJudgement, status__in=build.policy["statuses"]),
            ("id", "ranking"),
            _ranking_votes,
            (("ranking",), ranking_labels, ranking_posterior),
        ),
    ]
    for queryset, fields, to_votes, (label_fields, to_labels, posterior_of) in sources:
        fit = dawid_skene_fit(queryset, label_fields, to_labels) if by_posterior else None
        judgements = queryset.order_by("item_id", "id").values_list("item_id", *fields)
        for item_id, votes_of_item, prompt, completions in _judged_items(judgements):
            prompt_id, content_hash, declared, system, messages = prompt
            split = prompt_split(content_hash, declared, build.policy["test_fraction"])
            convo = conversation(system, messages)
            votes = to_votes(votes_of_item, completions)
            verdict = verdicts.get(item_id)
            if verdict is None:
                posteriors = {
                    pair: posterior_of(fit, item_id, pair, completions) for pair in votes
                } if fit is not None else None  # fmt: skip
                rows = _aggregated(votes, build, posteriors)
            else:
                rows = _adjudicated(votes, to_votes([verdict], completions), build)
            for row in rows:
                if by_posterior:
                    row.setdefault("posterior", None)  # one set of columns in every row
                chosen_id, rejected_id = row.pop("_chosen"), row.pop("_rejected")
                yield (
                    split,
                    {
                        "prompt": convo,
                        "chosen": assistant_turn(completions[chosen_id][1]),
                        "rejected": assistant_turn(completions[rejected_id][1]),
                        "item_id": item_id,
                        "prompt_id": prompt_id,
                        "chosen_id": chosen_id,
                        "rejected_id": rejected_id,
                        **row,
                    },
                )


def _answer(vote: tuple) -> Any:
    winner, outcome, *_ = vote
    return outcome if winner is None else winner


def _aggregated(
    votes_by_pair: dict[tuple[int, int], list],
    build: Build,
    posteriors: dict[tuple[int, int], dict] | None = None,
) -> Iterator[dict]:
    minimum = build.policy["min_item_agreement"]
    for (first, second), votes in sorted(votes_by_pair.items()):
        if minimum is not None and plurality_share(map(_answer, votes)) < minimum:
            build.dropped["pairs_below_min_item_agreement"] += 1
            continue
        if posteriors is None:
            yield from _aggregate(first, second, votes, build)
        else:
            yield from _by_posterior(first, second, votes, posteriors[(first, second)], build)


def _by_posterior(
    first: int, second: int, votes: list, posterior: dict, build: Build
) -> Iterator[dict]:
    """The answer with the highest Dawid–Skene posterior; `posterior` is its probability and
    `agreement` still the share of the votes that gave it. Two answers level at the top give
    no row, as level votes do under majority."""
    if not posterior:  # not in the fit: judged after it was read, outside one transaction
        build.dropped["pairs_without_a_winner"] += 1
        return
    (answer, p), *rest = sorted(posterior.items(), key=lambda kv: -kv[1])
    n = len(votes)
    agreement = sum(_answer(v) == answer for v in votes) / n
    minimum = build.policy["min_posterior"]
    if rest and rest[0][1] >= p - 1e-9:
        build.dropped["pairs_without_a_winner"] += 1
    elif minimum is not None and p < minimum:
        build.dropped["pairs_below_min_posterior"] += 1
    elif isinstance(answer, str):  # tie or both bad
        if build.policy["keep_ties"]:
            row = _tie_row(first, second, answer, n, agreement, None, "dawid_skene")
            yield {**row, "posterior": round(p, 4)}
        else:
            build.dropped["pairs_without_a_winner"] += 1
    else:
        strengths = [s for w, _, s, _ in votes if w == answer and s]
        strength = round(sum(strengths) / len(strengths), 3) if strengths else 0
        row = _chosen_row(first, second, answer, strength, agreement, n, None, "dawid_skene")
        yield {**row, "posterior": round(p, 4)}


def _adjudicated(
    votes_by_pair: dict[tuple[int, int], list],
    verdict_by_pair: dict[tuple[int, int], list],
    build: Build,
) -> Iterator[dict]:
    """The adjudicated answer replaces the votes, and the agreement filters do not apply (the
    split was settled); `agreement` and `annotator_count` still describe the votes."""
    for (first, second), [verdict] in sorted(verdict_by_pair.items()):
        votes = votes_by_pair.get((first, second), [])
        n = len(votes)
        agreement = sum(_answer(v) == _answer(verdict) for v in votes) / n if n else 0.0
        winner, outcome, *_ = verdict
        if winner is None:
            if build.policy["keep_ties"]:
                build.adjudicated_pairs += 1
                yield _tie_row(first, second, outcome, n, agreement, None, "adjudicated")
            else:
                build.dropped["pairs_without_a_winner"] += 1
            continue
        build.adjudicated_pairs += 1
        strengths = [s for w, _, s, _ in votes if w == winner and s]
        strength = round(sum(strengths) / len(strengths), 3) if strengths else 0
        yield _chosen_row(first, second, winner, strength, agreement, n, None, "adjudicated")


def _aggregate(first: int, second: int, votes: list, build: Build) -> Iterator[dict]:
    policy = build.policy
    decisive = Counter(winner for winner, *_ in votes if winner is not None)
    outcomes = Counter(outcome for _, outcome, *_ in votes)
    n = len(votes)
    if policy["aggregation"] == "all":
        for winner, outcome, strength, judgement_id in votes:
            if winner is not None:
                agreement = decisive[winner] / n
                yield _chosen_row(
                    first, second, winner, strength, agreement, n, judgement_id, "all"
                )
            elif policy["keep_ties"]:
                agreement = outcomes[outcome] / n
                yield _tie_row(first, second, outcome, n, agreement, judgement_id, "all")
            else:
                build.dropped["tie_or_both_bad_judgements"] += 1
        return
    ranked = decisive.most_common()
    below_minimum = False
    if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
        winner, count = ranked[0]
        if count / n >= policy["min_agreement"]:
            strengths = [s for w, _, s, _ in votes if w == winner and s]
            strength = round(sum(strengths) / len(strengths), 3) if strengths else 0
            yield _chosen_row(first, second, winner, strength, count / n, n, None, "majority")
            return
        below_minimum = True
    undecided = Counter({o: c for o, c in outcomes.items() if o in ("tie", "both_bad")})
    if policy["keep_ties"] and undecided:
        outcome, count = max(undecided.items(), key=lambda kv: (kv[1], kv[0]))
        yield _tie_row(first, second, outcome, n, count / n, None, "majority")
    elif below_minimum:
        build.dropped["pairs_below_min_agreement"] += 1
    else:
        build.dropped["pairs_without_a_winner"] += 1


def _chosen_row(
    first: int,
    second: int,
    winner: int,
    strength: float,
    agreement: float,
    n: int,
    judgement_id: int | None,
    aggregation: str,
) -> dict:
    return {
        "_chosen": winner,
        "_rejected": second if winner == first else first,
        "outcome": "chosen",
        "strength": strength,
        "agreement": round(agreement, 4),
        "annotator_count": n,
        "judgement_id": judgement_id,
        "aggregation": aggregation,
    }


def _tie_row(
    first: int,
    second: int,
    outcome: str,
    n: int,
    agreement: float,
    judgement_id: int | None,
    aggregation: str,
) -> dict:
    return {
        "_chosen": first,
        "_rejected": second,
        "outcome": outcome,
        "strength": 0,
        "agreement": round(agreement, 4),
        "annotator_count": n,
        "judgement_id": judgement_id,
        "aggregation": aggregation,
    }


# Per kind, what a filter can drop (judgements or prompts before aggregation, pairs after).
DROPPED = {
    SnapshotKind.SFT: ("gold_judgements", "excluded_annotator_judgements"),
    SnapshotKind.PREFERENCE: (
        "gold_judgements",
        "excluded_annotator_judgements",
        "pairs_below_min_item_agreement",
        "pairs_below_min_agreement",
        "pairs_below_min_posterior",
        "pairs_without_a_winner",
        "tie_or_both_bad_judgements",
    ),
    SnapshotKind.PROMPTS: ("gold_prompts",),
}
ROWS = {
    SnapshotKind.SFT: _sft_rows,
    SnapshotKind.PREFERENCE: _preference_rows,
    SnapshotKind.PROMPTS: _prompt_rows,
}
