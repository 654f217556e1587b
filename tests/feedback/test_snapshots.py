import json
import threading

import datasets
import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from feedback import services
from feedback.models import (
    Assignment,
    DemonstrationStatus,
    Item,
    Origin,
    PairwiseJudgement,
    Split,
    TaskKind,
)
from feedback.services import review as review_services
from jobs.models import Status
from tests.factories import (
    ProjectFactory,
    annotator,
    make_item,
    outvoted_crowd,
    submit_judgement,
)

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


def judge_as(item, user, choice, **kwargs):
    """`user` judges `item` (an assignment made directly: the test decides who judges what)."""
    a = Assignment.objects.create(item=item, annotator=user, expires_at="2100-01-01T00:00Z")
    if item.kind == TaskKind.RANKING:
        return services.ranking_submit(assignment_id=a.pk, annotator=user, ranking=choice)
    strength = kwargs.pop("strength", "clear" if choice in ("a", "b") else "")
    return services.pairwise_submit(
        assignment_id=a.pk, annotator=user, choice=choice, strength=strength, **kwargs
    )


def texts(row):
    return row["chosen"][0]["content"], row["rejected"][0]["content"]


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

    assert snapshot.status == Status.SUCCEEDED
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
        ("preference", {"min_gold_accuracy": 1.5}),
        ("preference", {"min_annotator_agreement": -0.1}),
        ("preference", {"min_item_agreement": "high"}),
        ("preference", {"min_agreement": None}),
        ("preference", {"exclude_flagged": "yes"}),
        ("preference", {"include_gold": 1}),
        ("sft", {"statuses": []}),
        ("sft", {"statuses": [["accepted"]]}),
        ("sft", {"min_item_agreement": 0.5}),  # an item-agreement filter has no meaning for SFT
        ("prompts", {"min_gold_accuracy": 0.5}),  # nor annotator trust for prompts alone
        ("preference", ["aggregation"]),
        ("preference", {"aggregation": "dawid_skene", "min_posterior": 1.5}),
        ("preference", {"min_posterior": 0.8}),  # majority: a posterior it never computes
    ],
)
def test_bad_policies_are_refused_before_anything_is_written(roles, kind, policy):
    project = ProjectFactory()
    with pytest.raises(ValidationError):
        services.snapshot_create(project=project, kind=kind, policy=policy)
    assert not project.snapshots.exists()


def test_threshold_errors_name_the_option_and_its_range(roles):
    with pytest.raises(ValidationError) as refused:
        services.clean_policy("preference", {"min_gold_accuracy": 2, "exclude_flagged": "no"})
    assert sorted(refused.value.message_dict["policy"]) == [
        "exclude_flagged is true or false.",
        "min_gold_accuracy must be a number from 0 to 1 (or null for no filter).",
    ]


# --- Dawid–Skene -------------------------------------------------------------------------------


def test_dawid_skene_believes_the_careful_annotator_whom_the_majority_outvotes(roles):
    project = ProjectFactory(overlap=4, task_kinds=[TaskKind.PAIRWISE])
    outvoted = outvoted_crowd(project)
    # careless1 alone on an item: the model trusts that vote about as much as a coin.
    lonely = make_item(project)
    submit_judgement(lonely, annotator("careless1"), choice="a", strength="clear")
    everything = {"test_fraction": 0}

    majority = services.snapshot_create(project=project, kind="preference", policy=everything)
    by_model = services.snapshot_create(
        project=project, kind="preference", policy={**everything, "aggregation": "dawid_skene"}
    )

    [voted] = [r for r in rows(majority) if r["item_id"] == outvoted.pk]
    assert texts(voted) == ("wrong", "right") and "posterior" not in voted
    modelled = {r["item_id"]: r for r in rows(by_model)}
    row = modelled[outvoted.pk]
    assert texts(row) == ("right", "wrong")
    assert row["aggregation"] == "dawid_skene" and row["posterior"] > 0.99
    assert row["agreement"] == pytest.approx(1 / 3, abs=1e-4) and row["annotator_count"] == 3
    assert 0.4 < modelled[lonely.pk]["posterior"] < 0.7
    # On the 12 other items the model gives the careful annotators' answer, a row each, where
    # the majority had three level items (both careless ones wrong) and dropped them.
    assert by_model.row_counts["train"] == 14 and majority.row_counts["train"] == 11
    assert by_model.policy["aggregation"] == "dawid_skene"

    confident = services.snapshot_create(
        project=project,
        kind="preference",
        policy={**everything, "aggregation": "dawid_skene", "min_posterior": 0.9},
    )
    assert lonely.pk not in {r["item_id"] for r in rows(confident)}
    assert outvoted.pk in {r["item_id"] for r in rows(confident)}
    assert confident.stats["dropped"]["pairs_below_min_posterior"] == 1


def test_dawid_skene_ranks_pairs_and_keeps_adjudications_and_ties_apart(roles, reviewer):
    project = ProjectFactory(overlap=3, task_kinds=[TaskKind.PAIRWISE, TaskKind.RANKING])
    ranked = make_item(project, TaskKind.RANKING, n=3, texts=["best", "middle", "worst"])
    x, y, z = (c.pk for c in ranked.ordered_completions())
    for name, ranking in (("r1", [[x], [y], [z]]), ("r2", [[x], [y], [z]]), ("r3", [[z], [x, y]])):
        submit_judgement(ranked, annotator(name), ranking=ranking)
    tied = make_item(project)
    for name in ("r1", "r2"):
        submit_judgement(tied, annotator(name), choice="tie")
    settled = make_item(project, texts=["kept", "overruled"])
    submit_judgement(settled, annotator("r1"), choice="b", strength="clear")
    review_services.item_adjudicate(item_id=settled.pk, adjudicator=reviewer, choice="a")

    policy = {"test_fraction": 0, "aggregation": "dawid_skene", "keep_ties": True}
    snapshot = services.snapshot_create(project=project, kind="preference", policy=policy)

    got = {(texts(r), r["outcome"], r["aggregation"]) for r in rows(snapshot)}
    assert got == {
        (("best", "middle"), "chosen", "dawid_skene"),
        (("best", "worst"), "chosen", "dawid_skene"),
        (("middle", "worst"), "chosen", "dawid_skene"),
        ((f"Answer 0 to {tied.prompt_id}", f"Answer 1 to {tied.prompt_id}"), "tie", "dawid_skene"),
        (("kept", "overruled"), "chosen", "adjudicated"),
    }
    posteriors = {r["aggregation"]: r["posterior"] for r in rows(snapshot)}
    assert posteriors["adjudicated"] is None and posteriors["dawid_skene"] > 0.5


# --- gold items --------------------------------------------------------------------------------


def test_gold_items_and_the_judgements_on_them_stay_out_of_every_export(roles, admin_user):
    project = ProjectFactory(overlap=1)
    ordinary = make_item(project, texts=["plain A", "plain B"])
    gold = make_item(project, texts=["gold A", "gold B"])
    review_services.item_mark_gold(item_id=gold.pk, admin=admin_user, answer={"choice": "b"})
    user = annotator("graded")
    judge_as(ordinary, user, "a")
    judge_as(gold, user, "a")
    demo_item = make_item(project, TaskKind.DEMONSTRATION)
    judge_demo = Assignment.objects.create(
        item=demo_item, annotator=user, expires_at="2100-01-01T00:00Z"
    )
    services.demonstration_submit(assignment_id=judge_demo.pk, annotator=user, text="written")
    # Demonstrations cannot be marked gold through the services; the export must not rely on it.
    Item.objects.filter(pk=demo_item.pk).update(is_gold=True)
    train = {"test_fraction": 0}

    preference = services.snapshot_create(project=project, kind="preference", policy=train)
    sft = services.snapshot_create(project=project, kind="sft", policy=train)
    prompts = services.snapshot_create(project=project, kind="prompts", policy=train)

    assert [texts(r) for r in rows(preference)] == [("plain A", "plain B")]
    assert preference.policy["include_gold"] is False
    assert preference.stats["dropped"]["gold_judgements"] == 1
    assert rows(sft) == [] and sft.stats["dropped"]["gold_judgements"] == 1
    assert [r["prompt_id"] for r in rows(prompts)] == [ordinary.prompt_id]
    assert prompts.stats["dropped"] == {"gold_prompts": 2}
    exported = "".join((s.path() / "train.jsonl").read_text() for s in (preference, sft, prompts))
    assert "gold A" not in exported and "written" not in exported

    # Asked for explicitly, the judgements on gold items come out — as the annotator's answer,
    # never as the gold answer.
    with_gold = services.snapshot_create(
        project=project, kind="preference", policy={**train, "include_gold": True}
    )
    assert sorted(texts(r) for r in rows(with_gold)) == [
        ("gold A", "gold B"),
        ("plain A", "plain B"),
    ]
    assert with_gold.stats["dropped"]["gold_judgements"] == 0


# --- adjudication ------------------------------------------------------------------------------


def test_an_adjudicated_item_takes_the_adjudicated_answer(roles, reviewer, everything_in_train):
    project = ProjectFactory(overlap=3)
    outvoted = make_item(project, texts=["majority pick", "adjudicated pick"])
    level = make_item(project, texts=["level A", "level B"])
    untouched = make_item(project, texts=["kept A", "kept B"])
    judges = [annotator(f"split{n}") for n in range(3)]
    for item, choices in ((outvoted, "aab"), (level, ["a", "b", "tie"]), (untouched, "aab")):
        for user, choice in zip(judges, choices, strict=True):
            judge_as(item, user, choice)
    adjudicate = review_services.item_adjudicate
    adjudicate(item_id=outvoted.pk, adjudicator=reviewer, choice="a", note="first thought")
    adjudicate(item_id=outvoted.pk, adjudicator=reviewer, choice="b", note="the latest counts")
    adjudicate(item_id=level.pk, adjudicator=reviewer, choice="tie")

    strict = {**everything_in_train, "min_agreement": 0.9, "min_item_agreement": 0.9}
    snapshot = services.snapshot_create(project=project, kind="preference", policy=strict)
    with_ties = services.snapshot_create(
        project=project, kind="preference", policy={**strict, "keep_ties": True}
    )
    every = services.snapshot_create(
        project=project, kind="preference", policy={**everything_in_train, "aggregation": "all"}
    )

    # The strict thresholds drop the ordinary split item, never the settled ones.
    [row] = rows(snapshot)
    assert texts(row) == ("adjudicated pick", "majority pick")
    assert (row["aggregation"], row["outcome"], row["judgement_id"]) == (
        "adjudicated",
        "chosen",
        None,
    )
    assert row["agreement"] == pytest.approx(1 / 3, abs=1e-4) and row["annotator_count"] == 3
    assert row["strength"] == 2  # the one "clear" vote for the adjudicated side
    assert snapshot.stats["adjudicated_pairs"] == 1
    assert snapshot.stats["dropped"]["pairs_below_min_item_agreement"] == 1
    assert snapshot.stats["dropped"]["pairs_without_a_winner"] == 1  # the adjudicated tie
    tie = next(r for r in rows(with_ties) if r["item_id"] == level.pk)
    assert (tie["outcome"], tie["aggregation"]) == ("tie", "adjudicated")
    assert tie["agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert with_ties.stats["adjudicated_pairs"] == 2
    # With every judgement as a row, a settled item still gives its one adjudicated row.
    by_item = {}
    for r in rows(every):
        by_item.setdefault(r["item_id"], []).append(r["aggregation"])
    assert by_item == {outvoted.pk: ["adjudicated"], untouched.pk: ["all", "all", "all"]}


def test_an_adjudicated_ranking_gives_its_implied_pairs(roles, reviewer, everything_in_train):
    project = ProjectFactory(overlap=2)
    item = make_item(project, TaskKind.RANKING, n=3, texts=["x", "y", "z"])
    x, y, z = (c.pk for c in item.ordered_completions())
    judge_as(item, annotator("r1"), [[x], [y], [z]])
    judge_as(item, annotator("r2"), [[z], [y], [x]])
    review_services.item_adjudicate(item_id=item.pk, adjudicator=reviewer, ranking=[[y], [x, z]])

    snapshot = services.snapshot_create(
        project=project, kind="preference", policy={**everything_in_train, "keep_ties": True}
    )

    got = sorted((texts(r), r["outcome"], r["aggregation"]) for r in rows(snapshot))
    assert got == [
        (("x", "z"), "tie", "adjudicated"),
        (("y", "x"), "chosen", "adjudicated"),
        (("y", "z"), "chosen", "adjudicated"),
    ]


# --- annotator trust and item agreement --------------------------------------------------------


@pytest.fixture
def crowd(roles, admin_user):
    """Four annotators on eight items. "dissenter" agrees with the other three on 2 of 8 items
    (leave-one-out agreement 0.25; the others 1.0) and gets 1 of 2 gold items right (0.5);
    "steady" gets both right (1.0); the other two never see a gold item."""
    project = ProjectFactory(overlap=4)
    items = [make_item(project, texts=[f"A{n}", f"B{n}"]) for n in range(8)]
    names = ["steady", "second", "third", "dissenter"]
    users = {name: annotator(name) for name in names}
    for n, item in enumerate(items):
        for name in names[:3]:
            judge_as(item, users[name], "a")
        judge_as(item, users["dissenter"], "a" if n < 2 else "b")
    for answer in ("a", "b"):
        gold = make_item(project)
        review_services.item_mark_gold(item_id=gold.pk, admin=admin_user, answer={"choice": answer})
        judge_as(gold, users["steady"], answer)
        judge_as(gold, users["dissenter"], "a")
    return project


@pytest.mark.parametrize(
    ("policy", "excluded", "reasons"),
    [
        ({"min_annotator_agreement": 0.25}, [], []),  # 0.25 is not below 0.25
        ({"min_annotator_agreement": 0.3}, ["dissenter"], ["agreement 0.25 below 0.3"]),
        ({"min_gold_accuracy": 0.5}, [], []),
        ({"min_gold_accuracy": 0.75}, ["dissenter"], ["gold accuracy 0.5 below 0.75"]),
    ],
)
def test_annotators_below_a_threshold_are_left_out_and_recorded(crowd, policy, excluded, reasons):
    policy = {"test_fraction": 0, **policy}
    snapshot = services.snapshot_create(project=crowd, kind="preference", policy=policy)

    assert [a["username"] for a in snapshot.stats["excluded_annotators"]] == excluded
    assert [r for a in snapshot.stats["excluded_annotators"] for r in a["reasons"]] == reasons
    assert snapshot.stats["dropped"]["excluded_annotator_judgements"] == 8 * len(excluded)
    assert snapshot.stats["dropped"]["gold_judgements"] == 4  # counted first, whoever judged
    assert snapshot.row_counts["train"] == 8
    counts = {r["annotator_count"] for r in rows(snapshot)}
    assert counts == {4 - len(excluded)}
    if "min_gold_accuracy" in policy:
        assert snapshot.stats["unmeasured_annotators"] == {"min_gold_accuracy": ["second", "third"]}
    # The same inputs give the same bytes.
    again = services.snapshot_create(project=crowd, kind="preference", policy=policy)
    assert again.content_hash == snapshot.content_hash


def test_trust_filters_change_the_exported_rows(crowd):
    everyone = services.snapshot_create(
        project=crowd, kind="preference", policy={"test_fraction": 0, "aggregation": "all"}
    )
    trusted = services.snapshot_create(
        project=crowd,
        kind="preference",
        policy={"test_fraction": 0, "aggregation": "all", "min_annotator_agreement": 0.5},
    )
    assert everyone.row_counts["train"] == 32 and trusted.row_counts["train"] == 24
    assert all(texts(r)[0].startswith("A") for r in rows(trusted))
    assert everyone.content_hash != trusted.content_hash


def test_min_item_agreement_keeps_pairs_whose_most_common_answer_has_that_share(roles):
    project = ProjectFactory(overlap=3)
    judges = [annotator(f"j{n}") for n in range(3)]
    for choices in ("aaa", "aab", ["a", "b", "tie"]):
        item = make_item(project)
        for user, choice in zip(judges, choices, strict=True):
            judge_as(item, user, choice)

    def snapshot(minimum):
        policy = {"test_fraction": 0, "aggregation": "all", "min_item_agreement": minimum}
        return services.snapshot_create(project=project, kind="preference", policy=policy)

    # Shares of the most common answer: 1, 2/3 and 1/3; "all" gives a row per decisive vote.
    assert snapshot(None).row_counts["train"] == 3 + 3 + 2
    assert snapshot(2 / 3).row_counts["train"] == 3 + 3
    strict = snapshot(0.7)
    assert strict.row_counts["train"] == 3
    assert strict.stats["dropped"]["pairs_below_min_item_agreement"] == 2


def test_flagged_annotators_can_be_left_out(roles):
    project = ProjectFactory(overlap=3, task_kinds=[TaskKind.PAIRWISE])
    for _ in range(24):
        make_item(project)
    careful, lefty = [annotator("careful1"), annotator("careful2")], annotator("lefty")
    for user in [*careful, lefty]:
        for _ in range(24):  # through the queue, which shuffles the sides per annotator
            a = services.task_next_for_annotator(project=project, annotator=user)
            a_id = a.item.item_completions.get(position=0).completion_id
            left = "a" if a.display_order[0] == a_id else "b"
            # lefty always picks the reply shown on the left, in a second
            choice, seconds = (left, 1.0) if user == lefty else ("a", 20.0)
            services.pairwise_submit(
                assignment_id=a.pk, annotator=user, choice=choice, strength="clear",
                seconds_spent=seconds,
            )  # fmt: skip

    snapshot = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0, "exclude_flagged": True}
    )

    [excluded] = snapshot.stats["excluded_annotators"]
    assert excluded["username"] == "lefty"
    assert any(r.startswith("flagged: side bias") for r in excluded["reasons"])
    assert any(r.startswith("flagged: too fast") for r in excluded["reasons"])
    assert {r["annotator_count"] for r in rows(snapshot)} == {2}


# --- demonstrations ----------------------------------------------------------------------------


def test_sft_can_require_accepted_demonstrations_and_exports_the_reviewed_text(roles, reviewer):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    demos = []
    for n in range(3):
        item = make_item(project, TaskKind.DEMONSTRATION)
        user = annotator(f"writer{n}")
        a = Assignment.objects.create(item=item, annotator=user, expires_at="2100-01-01T00:00Z")
        demos.append(
            services.demonstration_submit(assignment_id=a.pk, annotator=user, text=f"draft {n}")
        )
    review = review_services.demonstration_review
    review(demonstration_id=demos[0].pk, reviewer=reviewer, decision="edit", edited_text="fixed 0")
    review(demonstration_id=demos[1].pk, reviewer=reviewer, decision="reject", comment="wrong")

    default = services.snapshot_create(project=project, kind="sft", policy={"test_fraction": 0})
    accepted = services.snapshot_create(
        project=project, kind="sft", policy={"test_fraction": 0, "statuses": ["accepted"]}
    )

    def replies(snapshot):
        return sorted(r["messages"][-1]["content"] for r in rows(snapshot))

    assert replies(default) == ["draft 2", "fixed 0"]
    assert replies(accepted) == ["fixed 0"]
    assert demos[2].status == DemonstrationStatus.SUBMITTED


def test_sft_trust_filters_leave_out_untrusted_writers(crowd):
    for name in ("steady", "dissenter"):
        item = make_item(crowd, TaskKind.DEMONSTRATION)
        user = annotator(name)
        a = Assignment.objects.create(item=item, annotator=user, expires_at="2100-01-01T00:00Z")
        services.demonstration_submit(assignment_id=a.pk, annotator=user, text=f"by {name}")

    snapshot = services.snapshot_create(
        project=crowd, kind="sft", policy={"test_fraction": 0, "min_annotator_agreement": 0.5}
    )

    assert [r["messages"][-1]["content"] for r in rows(snapshot)] == ["by steady"]
    assert snapshot.stats["dropped"] == {"gold_judgements": 0, "excluded_annotator_judgements": 1}


def test_the_command_takes_the_same_policy_and_refuses_the_same_mistakes(crowd):
    from io import StringIO

    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="min_gold_accuracy must be a number from 0 to 1"):
        call_command(
            "export_snapshot", project=crowd.name, kind="preference",
            policy='{"min_gold_accuracy": 2}',
        )  # fmt: skip
    with pytest.raises(CommandError, match="not JSON"):
        call_command("export_snapshot", project=crowd.name, kind="preference", policy="{oops")
    assert not crowd.snapshots.exists()

    out = StringIO()
    call_command(
        "export_snapshot", project=str(crowd.pk), kind="preference", stdout=out,
        policy='{"min_annotator_agreement": 0.5, "test_fraction": 0}',
    )  # fmt: skip
    snapshot = crowd.snapshots.get()
    assert snapshot.policy["min_annotator_agreement"] == 0.5 and snapshot.row_counts["train"] == 8
    assert "annotators left out: dissenter" in out.getvalue()
    assert "8 excluded_annotator_judgements" in out.getvalue()


def test_imported_judgements_are_not_left_out_with_the_user_who_imported_them(crowd):
    dissenter = PairwiseJudgement.objects.filter(annotator__username="dissenter").first().annotator
    imported = make_item(crowd, texts=["imported chosen", "imported rejected"])
    judge_as(imported, dissenter, "a")
    PairwiseJudgement.objects.filter(item=imported).update(origin=Origin.IMPORTED)

    snapshot = services.snapshot_create(
        project=crowd,
        kind="preference",
        policy={"test_fraction": 0, "include_imported": True, "min_annotator_agreement": 0.5},
    )

    assert [a["username"] for a in snapshot.stats["excluded_annotators"]] == ["dissenter"]
    assert snapshot.stats["dropped"]["excluded_annotator_judgements"] == 8
    assert ("imported chosen", "imported rejected") in {texts(r) for r in rows(snapshot)}


def test_a_snapshot_requested_before_the_new_options_builds_with_their_defaults(roles):
    from feedback.models import DatasetSnapshot

    project = ProjectFactory(overlap=1)
    judge_pairwise(make_item(project), ["a"])
    old_policy = {
        "test_fraction": 0,
        "aggregation": "majority",
        "min_agreement": 0.5,
        "keep_ties": False,
        "include_imported": False,
        "include_simulated": False,
    }
    requested = {"project": project, "kind": "preference"}
    old = DatasetSnapshot.objects.create(name="old", policy=old_policy, **requested)
    broken_policy = {**old_policy, "test_fraction": "0.1"}
    broken = DatasetSnapshot.objects.create(name="broken", policy=broken_policy, **requested)

    built = services.snapshot_build(snapshot=old)
    # A failure is written to the row (the shared lifecycle), not raised.
    broken = services.snapshot_build(snapshot=broken)

    assert built.status == Status.SUCCEEDED and built.row_counts["train"] == 1
    assert built.policy["include_gold"] is False and built.policy["min_item_agreement"] is None
    assert broken.status == Status.FAILED and "test_fraction" in broken.error


def _import(project, tmp_path, admin_user, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = services.import_file(project=project, path=path, options=services.ImportOptions())
    assert report.ok, report.errors


def test_exported_lines_are_sorted_json_of_the_text_as_written(roles, tmp_path, admin_user):
    # Messages are read as JSON text and decoded with orjson: the lines (and so the content
    # hash) must be what json.dumps(sort_keys=True, ensure_ascii=False) makes of the rows.
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    awkward = 'Quotes " and \\ back\\slash,\ttabs,\nnew lines, \x01 control, é, 漢字, 🙂 and \u2028'
    _import(
        project,
        tmp_path,
        admin_user,
        [
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": awkward},
                ],
                "chosen": f"chosen: {awkward}",
                "rejected": "rejected",
            }
        ],
    )

    snapshot = services.snapshot_create(
        project=project, kind="preference", policy={"test_fraction": 0, "include_imported": True}
    )

    # (split on "\n" alone: U+2028 is written as it is, and splitlines() would break there)
    [line, end] = (snapshot.path() / "train.jsonl").read_bytes().decode().split("\n")
    assert end == ""
    row = json.loads(line)
    assert line == json.dumps(row, ensure_ascii=False, sort_keys=True)
    assert row["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": awkward},
    ]
    assert texts(row) == (f"chosen: {awkward}", "rejected")


def test_a_large_import_refreshes_the_statistics_of_the_tables_it_filled(
    roles, tmp_path, admin_user, monkeypatch
):
    # Without fresh statistics an export right after a big import plans for empty tables and
    # costs the server five times the CPU. "Large" is lowered here to keep the test small.
    from django.db import connection

    from feedback.services.imports import postgres as writing

    monkeypatch.setattr(writing, "_ANALYZE_AFTER", 3)
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    rows = [{"prompt": f"Question {i}?", "chosen": f"yes {i}", "rejected": "no"} for i in range(5)]
    # The tables' statistics as they are now (a test earlier in the session may have analyzed
    # them full of rows it then rolled back; reltuples outlives a rollback): five rows are then
    # more than a tenth of what they hold, as in an import into a new deployment.
    with connection.cursor() as cursor:
        for model in (Item, PairwiseJudgement):
            cursor.execute(f"ANALYZE {model._meta.db_table}")

    _import(project, tmp_path, admin_user, rows)

    def counted(model):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table]
            )
            return cursor.fetchone()[0]

    # ANALYZE inside the import's (still open) transaction counts its uncommitted rows, so
    # only it can have made pg_class say so.
    for model in (Item, PairwiseJudgement):
        assert counted(model) == model.objects.count() >= 5

    # Rows that are few for the table's size leave its statistics alone (as autovacuum would).
    before = counted(Item)
    monkeypatch.setattr(writing, "_ANALYZE_SHARE", 10)
    _import(
        project, tmp_path, admin_user, [{**row, "prompt": f"More {row['prompt']}"} for row in rows]
    )
    assert counted(Item) == before < Item.objects.count()


# --- one consistent view while annotators submit -------------------------------------------------


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_a_judgement_committed_during_a_build_is_not_half_visible(roles, monkeypatch, settings):
    """The race, forced: the build pauses between its trust figures and its row export, and
    another connection commits a judgement by a new annotator who disagrees with everyone. Under
    READ COMMITTED the export saw that judgement although the trust filter never measured its
    author (who, measured, falls below the threshold); the build must read one state."""
    from feedback.services import snapshots

    project = ProjectFactory(overlap=4)
    items = [make_item(project, texts=[f"A{n}", f"B{n}"]) for n in range(4)]
    for name in ("one", "two", "three"):
        user = annotator(name)
        for item in items:
            judge_as(item, user, "a")
    late = annotator("late")
    policy = {"test_fraction": 0, "aggregation": "all", "min_annotator_agreement": 0.5}

    paused, committed, failures = threading.Event(), threading.Event(), []

    def submit_late() -> None:
        try:
            paused.wait(30)
            judge_as(items[0], late, "b")
        except Exception as exc:
            failures.append(repr(exc))
        finally:
            connection.close()
            committed.set()

    real_trust = snapshots.annotator_trust

    def trust_then_pause(*args, **kwargs):
        decision = real_trust(*args, **kwargs)
        paused.set()
        assert committed.wait(30), "the other connection did not commit"
        return decision

    monkeypatch.setattr(snapshots, "annotator_trust", trust_then_pause)
    other = threading.Thread(target=submit_late)
    other.start()
    during = services.snapshot_create(project=project, kind="preference", policy=policy)
    other.join(30)

    assert not failures, failures
    assert PairwiseJudgement.objects.filter(annotator=late).count() == 1  # it did commit
    assert during.status == Status.SUCCEEDED
    assert during.row_counts["train"] == 12  # the three first annotators' judgements only
    assert all(texts(r)[0].startswith("A") for r in rows(during))
    assert during.stats["excluded_annotators"] == []

    monkeypatch.setattr(snapshots, "annotator_trust", real_trust)
    after = services.snapshot_create(project=project, kind="preference", policy=policy)
    assert [a["username"] for a in after.stats["excluded_annotators"]] == ["late"]
    assert after.row_counts["train"] == 12
