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

Ties and both-bad never become chosen/rejected rows; with ``keep_ties`` they are kept as rows with
``outcome`` "tie" / "both_bad" (chosen and rejected then just name the two sides) so a trainer can
filter them. Every preference row carries ``outcome`` ("chosen" for ordinary rows).

The held-out split is chosen stably by prompt hash (``test_fraction``, default 0.1), and a prompt
imported with ``split="test"`` is always held out: the same prompt never lands in both.
Imported and simulated judgements are left out unless ``include_imported`` / ``include_simulated``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from feedback.models import (
    DatasetSnapshot,
    Demonstration,
    DemonstrationStatus,
    Item,
    ItemCompletion,
    Origin,
    PairwiseJudgement,
    Project,
    Prompt,
    RankingJudgement,
    SnapshotKind,
    SnapshotStatus,
    Split,
    Strength,
)

STRENGTH_SCORE = {Strength.SLIGHT: 1, Strength.CLEAR: 2, Strength.STRONG: 3}
_DEFAULTS: dict[str, dict[str, Any]] = {
    SnapshotKind.SFT: {"statuses": ["submitted", "accepted"], "format": "messages"},
    SnapshotKind.PREFERENCE: {"aggregation": "majority", "min_agreement": 0.5, "keep_ties": False},
    SnapshotKind.PROMPTS: {},
}
_COMMON = {"test_fraction": 0.1, "include_imported": False, "include_simulated": False}
_CHUNK = 2000


def clean_policy(kind: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and refuse unknown keys: a typo must not silently export the wrong data."""
    if kind not in SnapshotKind.values:
        raise ValidationError({"kind": f"Kind is one of {', '.join(SnapshotKind.values)}."})
    allowed = {**_COMMON, **_DEFAULTS[kind]}
    policy = dict(policy or {})
    unknown = set(policy) - set(allowed)
    if unknown:
        raise ValidationError(
            {"policy": f"Unknown policy keys for {kind}: {', '.join(sorted(unknown))}."}
        )
    cleaned = {**allowed, **policy}
    if not 0 <= float(cleaned["test_fraction"]) < 1:
        raise ValidationError({"policy": "test_fraction must be in [0, 1)."})
    if kind == SnapshotKind.SFT:
        if cleaned["format"] not in ("messages", "prompt_completion"):
            raise ValidationError({"policy": "format is messages or prompt_completion."})
        if not set(cleaned["statuses"]) <= set(DemonstrationStatus.values):
            raise ValidationError({"policy": "statuses are submitted, accepted, rejected."})
    if kind == SnapshotKind.PREFERENCE:
        if cleaned["aggregation"] not in ("majority", "all"):
            raise ValidationError({"policy": "aggregation is majority or all."})
        if not 0 <= float(cleaned["min_agreement"]) <= 1:
            raise ValidationError({"policy": "min_agreement must be in [0, 1]."})
    return cleaned


def prompt_split(prompt_hash: str, declared: str, test_fraction: float) -> str:
    if declared == Split.TEST:
        return Split.TEST
    bucket = int(prompt_hash[:8], 16) / 0x1_0000_0000
    return Split.TEST if bucket < test_fraction else Split.TRAIN


def conversation(system: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + list(messages)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _origins(policy: dict[str, Any]) -> list[str]:
    origins = [Origin.HUMAN]
    if policy["include_imported"]:
        origins.append(Origin.IMPORTED)
    if policy["include_simulated"]:
        origins.append(Origin.SIMULATED)
    return origins


# --- row generators (each yields (split, row) in a deterministic order) --------------------------


def _sft_rows(project: Project, policy: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    demos = (
        Demonstration.objects.filter(
            item__project=project, status__in=policy["statuses"], origin__in=_origins(policy)
        )
        .select_related("item__prompt")
        .order_by("item_id", "id")
    )
    for demo in demos.iterator(chunk_size=_CHUNK):
        prompt = demo.item.prompt
        split = prompt_split(prompt.content_hash, prompt.split, policy["test_fraction"])
        convo = conversation(prompt.system, prompt.messages)
        meta = {"item_id": demo.item_id, "prompt_id": prompt.pk, "judgement_id": demo.pk}
        if policy["format"] == "messages":
            yield split, {"messages": [*convo, *_assistant(demo.text)], **meta}
        else:
            yield split, {"prompt": convo, "completion": _assistant(demo.text), **meta}


def _prompt_rows(project: Project, policy: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    for prompt in Prompt.objects.filter(project=project).order_by("id").iterator(_CHUNK):
        split = prompt_split(prompt.content_hash, prompt.split, policy["test_fraction"])
        yield (
            split,
            {"prompt": conversation(prompt.system, prompt.messages), "prompt_id": prompt.pk},
        )


def _judgements_by_item(queryset, fields: tuple[str, ...]) -> Iterator[tuple[int, list]]:
    """Stream (item_id, [judgement values...]) from a queryset ordered by item."""
    current, group = None, []
    for values in (
        queryset.order_by("item_id", "id")
        .values_list("item_id", *fields)
        .iterator(chunk_size=_CHUNK)
    ):
        if values[0] != current and current is not None:
            yield current, group
            group = []
        current = values[0]
        group.append(values[1:])
    if current is not None:
        yield current, group


def _batched(stream: Iterator, size: int = 500) -> Iterator[list]:
    batch = []
    for entry in stream:
        batch.append(entry)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _item_context(item_ids: list[int]) -> dict[int, tuple[Prompt, dict[int, tuple[int, str]]]]:
    """Prompt and {completion_id: (position, text)} for a batch of items, in two queries."""
    items = Item.objects.filter(pk__in=item_ids).select_related("prompt")
    context = {item.pk: (item.prompt, {}) for item in items}
    rows = ItemCompletion.objects.filter(item_id__in=item_ids).values_list(
        "item_id", "completion_id", "position", "completion__text"
    )
    for item_id, completion_id, position, text in rows:
        context[item_id][1][completion_id] = (position, text)
    return context


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


def _preference_rows(project: Project, policy: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    origins = _origins(policy)
    sources = [
        (
            PairwiseJudgement.objects.filter(item__project=project, origin__in=origins),
            ("id", "choice", "strength"),
            _pairwise_votes,
        ),
        (
            RankingJudgement.objects.filter(item__project=project, origin__in=origins),
            ("id", "ranking"),
            _ranking_votes,
        ),
    ]
    for queryset, fields, to_votes in sources:
        for batch in _batched(_judgements_by_item(queryset, fields)):
            context = _item_context([item_id for item_id, _ in batch])
            for item_id, judgements in batch:
                prompt, completions = context[item_id]
                split = prompt_split(prompt.content_hash, prompt.split, policy["test_fraction"])
                convo = conversation(prompt.system, prompt.messages)
                for (first, second), votes in sorted(to_votes(judgements, completions).items()):
                    for row in _aggregate(first, second, votes, policy):
                        chosen_id, rejected_id = row.pop("_chosen"), row.pop("_rejected")
                        yield (
                            split,
                            {
                                "prompt": convo,
                                "chosen": _assistant(completions[chosen_id][1]),
                                "rejected": _assistant(completions[rejected_id][1]),
                                "item_id": item_id,
                                "prompt_id": prompt.pk,
                                "chosen_id": chosen_id,
                                "rejected_id": rejected_id,
                                **row,
                            },
                        )


def _aggregate(first: int, second: int, votes: list, policy: dict[str, Any]) -> Iterator[dict]:
    decisive = Counter(winner for winner, *_ in votes if winner is not None)
    outcomes = Counter(outcome for _, outcome, *_ in votes)
    n = len(votes)
    if policy["aggregation"] == "all":
        for winner, outcome, strength, judgement_id in votes:
            if winner is None:
                if policy["keep_ties"]:
                    yield _tie_row(first, second, outcome, n, outcomes[outcome] / n, judgement_id)
                continue
            yield {
                "_chosen": winner,
                "_rejected": second if winner == first else first,
                "outcome": "chosen",
                "strength": strength,
                "agreement": round(decisive[winner] / n, 4),
                "annotator_count": n,
                "judgement_id": judgement_id,
            }
        return
    ranked = decisive.most_common()
    if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
        winner, count = ranked[0]
        agreement = count / n
        if agreement >= policy["min_agreement"]:
            strengths = [s for w, _, s, _ in votes if w == winner and s]
            yield {
                "_chosen": winner,
                "_rejected": second if winner == first else first,
                "outcome": "chosen",
                "strength": round(sum(strengths) / len(strengths), 3) if strengths else 0,
                "agreement": round(agreement, 4),
                "annotator_count": n,
                "judgement_id": None,
            }
            return
    if policy["keep_ties"]:
        undecided = Counter({o: c for o, c in outcomes.items() if o in ("tie", "both_bad")})
        if undecided:
            outcome, count = max(undecided.items(), key=lambda kv: (kv[1], kv[0]))
            yield _tie_row(first, second, outcome, n, count / n, None)


def _tie_row(first: int, second: int, outcome: str, n: int, agreement: float, judgement_id):
    return {
        "_chosen": first,
        "_rejected": second,
        "outcome": outcome,
        "strength": 0,
        "agreement": round(agreement, 4),
        "annotator_count": n,
        "judgement_id": judgement_id,
    }


_ROWS = {
    SnapshotKind.SFT: _sft_rows,
    SnapshotKind.PREFERENCE: _preference_rows,
    SnapshotKind.PROMPTS: _prompt_rows,
}


# --- writing ---------------------------------------------------------------------------------


def _write_rows(rows: Iterator[tuple[str, dict]], directory: Path) -> tuple[dict, str]:
    """Stream rows into train/test JSONL; returns counts and the sha256 of the content."""
    digest = hashlib.sha256()
    counts = {Split.TRAIN: 0, Split.TEST: 0}
    handles = {split: (directory / f"{split}.jsonl").open("w") for split in counts}
    try:
        for split, row in rows:
            line = json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
            handles[split].write(line)
            digest.update(split.encode() + b"\0" + line.encode())
            counts[split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return counts, digest.hexdigest()


def _write_companions(directory: Path, counts: dict[str, int]) -> None:
    """Parquet copies and a `save_to_disk` folder, both built from the JSONL without loading
    every row into Python objects at once (pyarrow reads in blocks)."""
    import datasets
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    for split, count in counts.items():
        source = directory / f"{split}.jsonl"
        if count:
            table = pa_json.read_json(source)
            pq.write_table(table, directory / f"{split}.parquet")
    files = {split: str(directory / f"{split}.jsonl") for split, count in counts.items() if count}
    if files:
        loaded = datasets.load_dataset(
            "json", data_files=files, cache_dir=str(directory / ".cache"), keep_in_memory=False
        )
        loaded.save_to_disk(str(directory / "hf"))
        shutil.rmtree(directory / ".cache", ignore_errors=True)
        # One file to download; `tar xf hf.tar` gives the folder for datasets.load_from_disk.
        with tarfile.open(directory / "hf.tar", "w") as archive:
            archive.add(directory / "hf", arcname="hf")


def snapshot_request(
    *,
    project: Project,
    kind: str,
    name: str,
    created_by: AbstractBaseUser | None,
    policy: dict[str, Any] | None = None,
) -> DatasetSnapshot:
    """Validate and record a snapshot in `building` state; `snapshot_build` fills it."""
    cleaned = clean_policy(kind, policy)
    name = (name or "").strip() or f"{project.name} {kind} {timezone.now():%Y-%m-%d %H:%M}"
    return DatasetSnapshot.objects.create(
        project=project, kind=kind, name=name[:200], policy=cleaned, created_by=created_by
    )


def snapshot_build(snapshot: DatasetSnapshot) -> DatasetSnapshot:
    """Write the files, then mark ready with counts and hash; a failure is recorded, not raised
    twice. Safe to call again on a snapshot left `building` by a dead worker."""
    claimed = DatasetSnapshot.objects.filter(pk=snapshot.pk, status=SnapshotStatus.BUILDING)
    if not claimed.exists():
        return DatasetSnapshot.objects.get(pk=snapshot.pk)
    root = Path(settings.MEDIA_ROOT)
    relative = Path("snapshots") / str(snapshot.project_id) / str(snapshot.pk)
    directory = root / relative
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    try:
        rows = _ROWS[snapshot.kind](snapshot.project, snapshot.policy)
        counts, content_hash = _write_rows(rows, directory)
        _write_companions(directory, counts)
        manifest = {
            "name": snapshot.name,
            "kind": snapshot.kind,
            "project": snapshot.project.name,
            "policy": snapshot.policy,
            "row_counts": counts,
            "content_hash": content_hash,
            "created_at": snapshot.created_at.isoformat(),
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    except Exception as exc:
        shutil.rmtree(directory, ignore_errors=True)
        claimed.update(status=SnapshotStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    claimed.update(
        status=SnapshotStatus.READY,
        directory=str(relative),
        row_counts=counts,
        content_hash=content_hash,
    )
    return DatasetSnapshot.objects.get(pk=snapshot.pk)


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
