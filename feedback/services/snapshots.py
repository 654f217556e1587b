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
- ``all``: every decisive judgement is its own row (``agreement`` is still reported).

An item with an ``Adjudication`` (the latest one counts) takes the adjudicated answer instead of
either aggregation, whatever its votes' agreement; its rows say ``aggregation: "adjudicated"``
(others say ``"majority"`` or ``"all"``). ``min_item_agreement`` (off by default) drops a pair
whose most common answer — A, B, tie and both-bad being four answers — has a smaller share of
its votes than that (``feedback.quality.reports.plurality_share``), in either aggregation.
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
Imported and simulated judgements are left out unless ``include_imported`` / ``include_simulated``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from feedback.models import (
    Adjudication,
    DatasetSnapshot,
    Demonstration,
    DemonstrationStatus,
    Item,
    ItemCompletion,
    JudgementBase,
    Origin,
    PairwiseJudgement,
    Project,
    Prompt,
    RankingJudgement,
    SnapshotKind,
    Split,
    Strength,
)
from feedback.quality.reports import plurality_share
from feedback.quality.trust import TrustDecision, annotator_trust
from jobs.models import Status
from jobs.services import Heartbeat, work_claim, work_finish

logger = logging.getLogger(__name__)

STRENGTH_SCORE = {Strength.SLIGHT: 1, Strength.CLEAR: 2, Strength.STRONG: 3}
# Which annotators to trust, by the quality page's figures (feedback.quality.trust); None is off.
_TRUST = {"min_annotator_agreement": None, "min_gold_accuracy": None, "exclude_flagged": False}
_DEFAULTS: dict[str, dict[str, Any]] = {
    SnapshotKind.SFT: {"statuses": ["submitted", "accepted"], "format": "messages", **_TRUST},
    SnapshotKind.PREFERENCE: {
        "aggregation": "majority",
        "min_agreement": 0.5,
        "min_item_agreement": None,
        "keep_ties": False,
        **_TRUST,
    },
    SnapshotKind.PROMPTS: {},
}
_COMMON = {
    "test_fraction": 0.1,
    "include_imported": False,
    "include_simulated": False,
    "include_gold": False,
}
_SWITCHES = (
    "keep_ties",
    "include_imported",
    "include_simulated",
    "include_gold",
    "exclude_flagged",
)
_SHARES = ("min_agreement", "min_item_agreement", "min_annotator_agreement", "min_gold_accuracy")
_CHUNK = 2000


def clean_policy(kind: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and refuse unknown keys and wrong values: a typo must not silently export
    the wrong data."""
    if kind not in SnapshotKind.values:
        raise ValidationError({"kind": f"Kind is one of {', '.join(SnapshotKind.values)}."})
    allowed = {**_COMMON, **_DEFAULTS[kind]}
    if not isinstance(policy or {}, dict):
        raise ValidationError({"policy": "The policy is an object of option: value."})
    policy = dict(policy or {})
    unknown = set(policy) - set(allowed)
    if unknown:
        raise ValidationError(
            {"policy": f"Unknown policy keys for {kind}: {', '.join(sorted(unknown))}."}
        )
    cleaned = {**allowed, **policy}
    errors = [_check(key, value) for key, value in cleaned.items()]
    if any(errors):
        raise ValidationError({"policy": [error for error in errors if error]})
    return cleaned


def _check(key: str, value: Any) -> str:
    """The error for one policy value, or ""."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in _SWITCHES and not isinstance(value, bool):
        return f"{key} is true or false."
    if key == "test_fraction" and not (number and 0 <= value < 1):
        return "test_fraction must be a number from 0 up to (not including) 1."
    if key in _SHARES and not (number and 0 <= value <= 1):
        if value is None and key != "min_agreement":
            return ""
        return f"{key} must be a number from 0 to 1" + (
            "." if key == "min_agreement" else " (or null for no filter)."
        )
    if key == "format" and value not in ("messages", "prompt_completion"):
        return "format is messages or prompt_completion."
    if key == "statuses" and not (
        isinstance(value, list)
        and value
        and all(isinstance(status, str) for status in value)
        and set(value) <= set(DemonstrationStatus.values)
    ):
        return "statuses is a list of submitted, accepted, rejected."
    if key == "aggregation" and value not in ("majority", "all"):
        return "aggregation is majority or all."
    return ""


def prompt_split(prompt_hash: str, declared: str, test_fraction: float) -> str:
    if declared == Split.TEST:
        return Split.TEST
    bucket = int(prompt_hash[:8], 16) / 0x1_0000_0000
    return Split.TEST if bucket < test_fraction else Split.TRAIN


def conversation(system: str, messages: str) -> list[dict[str, str]]:
    """The prompt as a conversation, from its system text and its messages' JSON text."""
    return ([{"role": "system", "content": system}] if system else []) + orjson.loads(messages)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _origins(policy: dict[str, Any]) -> list[str]:
    origins = [Origin.HUMAN]
    if policy["include_imported"]:
        origins.append(Origin.IMPORTED)
    if policy["include_simulated"]:
        origins.append(Origin.SIMULATED)
    return origins


# Whose work the trust filters judge. An imported judgement is the file's, not the work of the
# user who imported it: it is neither measured nor left out by annotator.
_MEASURED = (Origin.HUMAN, Origin.SIMULATED)


@dataclass
class _Build:
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
            item__project=self.project, origin__in=_origins(self.policy), **filters
        )
        if self.leaves_out_gold:
            # Gold items are quality control: their answers, and the judgements made on them,
            # are what annotators are measured against, not training labels.
            self.dropped["gold_judgements"] += considered.filter(item__is_gold=True).count()
            considered = considered.filter(item__is_gold=False)
        if self.excluded:
            left_out = {"annotator_id__in": self.excluded, "origin__in": _MEASURED}
            self.dropped["excluded_annotator_judgements"] += considered.filter(**left_out).count()
            considered = considered.exclude(**left_out)
        return considered


# --- row generators (each yields (split, row) in a deterministic order) --------------------------


def _sft_rows(build: _Build) -> Iterator[tuple[str, dict]]:
    policy = build.policy
    demos = build.judgements(Demonstration, status__in=policy["statuses"]).order_by("item_id", "id")
    fields = ("id", "item_id", "text", *_prompt_fields("item__prompt__"))
    for demo_id, item_id, text, *prompt in demos.values_list(*fields).iterator(_CHUNK):
        prompt_id, content_hash, declared, system, messages = prompt
        split = prompt_split(content_hash, declared, policy["test_fraction"])
        convo = conversation(system, messages)
        meta = {"item_id": item_id, "prompt_id": prompt_id, "judgement_id": demo_id}
        if policy["format"] == "messages":
            yield split, {"messages": [*convo, *_assistant(text)], **meta}
        else:
            yield split, {"prompt": convo, "completion": _assistant(text), **meta}


def _prompt_rows(build: _Build) -> Iterator[tuple[str, dict]]:
    prompts = Prompt.objects.filter(project=build.project)
    if build.leaves_out_gold:
        # A prompt is only a task here; one that carries a gold item is left out whole.
        build.dropped["gold_prompts"] += prompts.filter(items__is_gold=True).distinct().count()
        prompts = prompts.exclude(items__is_gold=True)
    for prompt_id, content_hash, declared, system, messages in (
        prompts.order_by("id").values_list(*_prompt_fields()).iterator(_CHUNK)
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
    prompt_of = _Lookahead((pk, tuple(values)) for pk, *values in prompts.iterator(_CHUNK))
    completions_of = _Lookahead(_grouped(completions.iterator(_CHUNK)))
    for item_id, votes in _grouped(judgements.iterator(_CHUNK)):
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
        for better, worse in combinations(range(len(ranking)), 2):
            for winner in ranking[better]:
                for loser in ranking[worse]:
                    key = (min(winner, loser), max(winner, loser))
                    votes[key].append((winner, "ranked", 0, judgement_id))
        for group in ranking:
            for x, y in combinations(sorted(group), 2):
                votes[(x, y)].append((None, "tie", 0, judgement_id))
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


def _preference_rows(build: _Build) -> Iterator[tuple[str, dict]]:
    verdicts = _verdicts(build.project)
    sources = [
        (build.judgements(PairwiseJudgement), ("id", "choice", "strength"), _pairwise_votes),
        (build.judgements(RankingJudgement), ("id", "ranking"), _ranking_votes),
    ]
    for queryset, fields, to_votes in sources:
        judgements = queryset.order_by("item_id", "id").values_list("item_id", *fields)
        for item_id, votes_of_item, prompt, completions in _judged_items(judgements):
            prompt_id, content_hash, declared, system, messages = prompt
            split = prompt_split(content_hash, declared, build.policy["test_fraction"])
            convo = conversation(system, messages)
            votes = to_votes(votes_of_item, completions)
            verdict = verdicts.get(item_id)
            if verdict is None:
                rows = _aggregated(votes, build)
            else:
                rows = _adjudicated(votes, to_votes([verdict], completions), build)
            for row in rows:
                chosen_id, rejected_id = row.pop("_chosen"), row.pop("_rejected")
                yield (
                    split,
                    {
                        "prompt": convo,
                        "chosen": _assistant(completions[chosen_id][1]),
                        "rejected": _assistant(completions[rejected_id][1]),
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


def _aggregated(votes_by_pair: dict[tuple[int, int], list], build: _Build) -> Iterator[dict]:
    minimum = build.policy["min_item_agreement"]
    for (first, second), votes in sorted(votes_by_pair.items()):
        if minimum is not None and plurality_share(map(_answer, votes)) < minimum:
            build.dropped["pairs_below_min_item_agreement"] += 1
            continue
        yield from _aggregate(first, second, votes, build)


def _adjudicated(
    votes_by_pair: dict[tuple[int, int], list],
    verdict_by_pair: dict[tuple[int, int], list],
    build: _Build,
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


def _aggregate(first: int, second: int, votes: list, build: _Build) -> Iterator[dict]:
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
_DROPPED = {
    SnapshotKind.SFT: ("gold_judgements", "excluded_annotator_judgements"),
    SnapshotKind.PREFERENCE: (
        "gold_judgements",
        "excluded_annotator_judgements",
        "pairs_below_min_item_agreement",
        "pairs_below_min_agreement",
        "pairs_without_a_winner",
        "tie_or_both_bad_judgements",
    ),
    SnapshotKind.PROMPTS: ("gold_prompts",),
}
_ROWS = {
    SnapshotKind.SFT: _sft_rows,
    SnapshotKind.PREFERENCE: _preference_rows,
    SnapshotKind.PROMPTS: _prompt_rows,
}


# --- writing ---------------------------------------------------------------------------------


# Built once: json.dumps with these options would build an encoder for every row. Rows are
# fresh trees, never cyclic: not checking for cycles takes a sixth off encoding a row, with
# the same output.
_ROW_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, check_circular=False).encode
# pyarrow's JSON reader needs many times its block in memory: small blocks keep it flat, and
# Parquet row groups gather a few dozen of them.
_JSON_BLOCK = 1 << 20
_ROW_GROUP = 64 * 1024


def _write_rows(
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


def _write_companions(
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


@contextlib.contextmanager
def _streaming_reads() -> Iterator[None]:
    """A transaction for reading the rows. Inside one, Django's server-side cursors stream
    (outside, it declares them WITH HOLD, and each query then runs to its end before the first
    row comes); and on PostgreSQL they are planned for reading every row, not the first tenth
    (cursor_tuple_fraction), since a plan picked for a quick start with statistics that predate
    a large import can rescan a table for every row."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
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
    name = (name or "").strip() or f"{project.name} {kind} {timezone.now():%Y-%m-%d %H:%M}"
    return DatasetSnapshot.objects.create(
        project=project, kind=kind, name=name[:200], policy=cleaned, created_by=created_by
    )


def snapshot_build(snapshot: DatasetSnapshot, *, worker_host: str = "") -> DatasetSnapshot:
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
    with _streaming_reads():
        trust = annotator_trust(
            snapshot.project,
            origins=[o for o in _origins(policy) if o in _MEASURED],
            min_agreement=policy.get("min_annotator_agreement"),
            min_gold_accuracy=policy.get("min_gold_accuracy"),
            exclude_flagged=policy.get("exclude_flagged", False),
        )
        build = _Build(snapshot.project, policy, frozenset(trust.excluded), snapshot.kind)
        counts, content_hash, column_types = _write_rows(_ROWS[snapshot.kind](build), directory)
    _write_companions(directory, counts, column_types)
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


def _stats(build: _Build, trust: TrustDecision) -> dict[str, Any]:
    """What the filters did, for the snapshot page and the manifest: every count is there,
    zeros included, so that "nothing was dropped" is said rather than implied."""
    dropped = {name: build.dropped[name] for name in _DROPPED[build.kind]}
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
    return snapshot_build(snapshot)
