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

import contextlib
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
from django.db import connection, transaction
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
    demos = Demonstration.objects.filter(
        item__project=project, status__in=policy["statuses"], origin__in=_origins(policy)
    ).order_by("item_id", "id")
    fields = ("id", "item_id", "text", *(f"item__prompt__{name}" for name in _PROMPT_FIELDS))
    for demo_id, item_id, text, *prompt in demos.values_list(*fields).iterator(_CHUNK):
        prompt_id, content_hash, declared, system, messages = prompt
        split = prompt_split(content_hash, declared, policy["test_fraction"])
        convo = conversation(system, messages)
        meta = {"item_id": item_id, "prompt_id": prompt_id, "judgement_id": demo_id}
        if policy["format"] == "messages":
            yield split, {"messages": [*convo, *_assistant(text)], **meta}
        else:
            yield split, {"prompt": convo, "completion": _assistant(text), **meta}


def _prompt_rows(project: Project, policy: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    prompts = Prompt.objects.filter(project=project).order_by("id").values_list(*_PROMPT_FIELDS)
    for prompt_id, content_hash, declared, system, messages in prompts.iterator(_CHUNK):
        split = prompt_split(content_hash, declared, policy["test_fraction"])
        yield split, {"prompt": conversation(system, messages), "prompt_id": prompt_id}


# Read as plain values: model instances cost more to build than the rest of a row.
_PROMPT_FIELDS = ("id", "content_hash", "split", "system", "messages")


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


_ITEM_PROMPT = tuple(f"prompt__{name}" for name in _PROMPT_FIELDS)


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
        judgements = queryset.order_by("item_id", "id").values_list("item_id", *fields)
        for item_id, votes_of_item, prompt, completions in _judged_items(judgements):
            prompt_id, content_hash, declared, system, messages = prompt
            split = prompt_split(content_hash, declared, policy["test_fraction"])
            convo = conversation(system, messages)
            for (first, second), votes in sorted(to_votes(votes_of_item, completions).items()):
                for row in _aggregate(first, second, votes, policy):
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


# Built once: json.dumps with these options would build an encoder for every row.
_ROW_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
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
        with tarfile.open(directory / "hf.tar", "w") as archive:
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
        with _streaming_reads():
            rows = _ROWS[snapshot.kind](snapshot.project, snapshot.policy)
            counts, content_hash, column_types = _write_rows(rows, directory)
        _write_companions(directory, counts, column_types)
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
