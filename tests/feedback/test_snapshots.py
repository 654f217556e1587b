import json

import datasets
import pytest
from django.core.exceptions import ValidationError

from feedback import services
from feedback.models import Origin, PairwiseJudgement, SnapshotStatus, Split, TaskKind
from tests.factories import ProjectFactory, annotator, make_item

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def rows(snapshot, split="train"):
    path = snapshot.path() / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


_judges = iter(range(10**6))


def judge_pairwise(item, choices):
    """One judgement per choice, each by a fresh annotator, through the real queue."""
    for choice in choices:
        user = annotator(f"judge{next(_judges)}")
        a = services.task_next_for_annotator(project=item.project, annotator=user)
        assert a.item_id == item.pk
        services.pairwise_submit(
            assignment_id=a.pk, annotator=user, choice=choice, strength="strong"
        )


@pytest.fixture
def everything_in_train(roles):
    return {"test_fraction": 0}


def test_sft_rows_are_conversations_ending_with_the_demonstration(roles, everything_in_train):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    prompt = services.prompt_create(
        project=project,
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
        ],
    )
    services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
    user = annotator("writer")
    a = services.task_next_for_annotator(project=project, annotator=user)
    services.demonstration_submit(assignment_id=a.pk, annotator=user, text="4")

    snapshot = services.snapshot_create(project=project, kind="sft", policy=everything_in_train)

    assert snapshot.status == SnapshotStatus.READY
    assert snapshot.row_counts == {"train": 1, "test": 0}
    [row] = rows(snapshot)
    assert row["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    pc = services.snapshot_create(
        project=project, kind="sft", policy={"test_fraction": 0, "format": "prompt_completion"}
    )
    [row] = rows(pc)
    assert row["prompt"][-1] == {"role": "user", "content": "2+2?"}
    assert row["completion"] == [{"role": "assistant", "content": "4"}]


def test_majority_keeps_the_winner_with_its_agreement(roles, everything_in_train):
    project = ProjectFactory(overlap=3)
    item = make_item(project, texts=["good", "bad"])
    judge_pairwise(item, ["a", "a", "b"])

    snapshot = services.snapshot_create(
        project=project, kind="preference", policy=everything_in_train
    )

    [row] = rows(snapshot)
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert row["prompt"][-1]["role"] == "user"
    assert row["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert row["annotator_count"] == 3
    assert row["outcome"] == "chosen"
    assert row["strength"] == 3


def test_min_agreement_and_level_votes_drop_rows(roles):
    project = ProjectFactory(overlap=3)
    judge_pairwise(make_item(project), ["a", "a", "b"])
    judge_pairwise(make_item(project), ["a", "b", "tie"])

    loose = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0}
    )
    strict = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0, "min_agreement": 0.7}
    )

    assert loose.row_counts["train"] == 1  # the level item gives no row
    assert strict.row_counts["train"] == 0


def test_all_policy_gives_every_decisive_judgement_a_row_and_ties_on_request(roles):
    project = ProjectFactory(overlap=3)
    judge_pairwise(make_item(project), ["a", "b", "tie"])

    every = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0, "aggregation": "all"}
    )
    with_ties = services.snapshot_create(
        project=project,
        kind="preference",
        policy={"test_fraction": 0, "aggregation": "all", "keep_ties": True},
    )

    assert sorted(r["outcome"] for r in rows(every)) == ["chosen", "chosen"]
    assert sorted(r["outcome"] for r in rows(with_ties)) == ["chosen", "chosen", "tie"]


def test_rankings_expand_to_every_implied_pair(roles, everything_in_train):
    project = ProjectFactory()
    item = make_item(project, TaskKind.RANKING, texts=["w", "x", "y", "z"])
    w, x, y, z = item.ordered_completions()
    user = annotator("ranker")
    a = services.task_next_for_annotator(project=project, annotator=user)
    services.ranking_submit(
        assignment_id=a.pk, annotator=user, ranking=[[w.pk], [x.pk, y.pk], [z.pk]]
    )

    snapshot = services.snapshot_create(
        project=project, kind="preference", policy=everything_in_train
    )

    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows(snapshot)}
    assert pairs == {("w", "x"), ("w", "y"), ("w", "z"), ("x", "z"), ("y", "z")}


def test_split_is_stable_by_prompt_and_declared_test_prompts_stay_held_out(roles):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    for n in range(60):
        services.prompt_create(project=project, messages=f"Question {n}?")
    services.prompt_create(project=project, messages="Held out?", split=Split.TEST)

    first = services.snapshot_create(project=project, kind="prompts", policy={"test_fraction": 0.3})
    second = services.snapshot_create(
        project=project, kind="prompts", policy={"test_fraction": 0.3}
    )

    train_ids = {r["prompt_id"] for r in rows(first)}
    test_ids = {r["prompt_id"] for r in rows(first, "test")}
    assert not train_ids & test_ids
    assert len(train_ids) + len(test_ids) == 61
    assert 5 < len(test_ids) < 35
    assert any(r["prompt"][-1]["content"] == "Held out?" for r in rows(first, "test"))
    assert first.content_hash == second.content_hash
    assert test_ids == {r["prompt_id"] for r in rows(second, "test")}


def test_content_hash_changes_when_labels_change(roles):
    project = ProjectFactory(overlap=2)
    item = make_item(project)
    judge_pairwise(item, ["a"])
    before = services.snapshot_create(project=project, kind="preference")
    judge_pairwise(item, ["a"])
    after = services.snapshot_create(project=project, kind="preference")
    assert before.content_hash != after.content_hash


def test_imported_and_simulated_labels_are_left_out_unless_asked(roles):
    project = ProjectFactory(overlap=1)
    judge_pairwise(make_item(project), ["a"])
    judge_pairwise(make_item(project), ["b"])
    judge_pairwise(make_item(project), ["a"])
    judgements = list(PairwiseJudgement.objects.order_by("id"))
    PairwiseJudgement.objects.filter(pk=judgements[1].pk).update(origin=Origin.IMPORTED)
    PairwiseJudgement.objects.filter(pk=judgements[2].pk).update(origin=Origin.SIMULATED)

    default = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0}
    )
    everything = services.snapshot_create(
        project=project,
        kind="preference",
        policy={"test_fraction": 0, "include_imported": True, "include_simulated": True},
    )

    assert default.row_counts["train"] == 1
    assert everything.row_counts["train"] == 3


def test_companion_files_load_with_datasets(roles, everything_in_train):
    project = ProjectFactory(overlap=1)
    for _ in range(3):
        judge_pairwise(make_item(project), ["a"])
    snapshot = services.snapshot_create(
        project=project, kind="preference", policy=everything_in_train
    )
    directory = snapshot.path()

    from_json = datasets.load_dataset("json", data_files=str(directory / "train.jsonl"))["train"]
    from_disk = datasets.load_from_disk(str(directory / "hf"))["train"]
    from_parquet = datasets.load_dataset("parquet", data_files=str(directory / "train.parquet"))

    assert from_json.num_rows == from_disk.num_rows == from_parquet["train"].num_rows == 3
    assert {"prompt", "chosen", "rejected"} <= set(from_json.column_names)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["content_hash"] == snapshot.content_hash


@pytest.mark.parametrize(
    ("kind", "policy"),
    [
        ("preference", {"aggregaton": "all"}),
        ("preference", {"aggregation": "mean"}),
        ("sft", {"format": "chatml"}),
        ("prompts", {"test_fraction": 1.5}),
        ("painting", {}),
    ],
)
def test_bad_policies_are_refused_before_anything_is_written(roles, kind, policy):
    project = ProjectFactory()
    with pytest.raises(ValidationError):
        services.snapshot_create(project=project, kind=kind, policy=policy)
    assert not project.snapshots.exists()
