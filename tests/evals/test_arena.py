"""The human-vote arena: which judgements are battles, how choices map to FastChat's winners, and
the leaderboard (Bradley-Terry with seeded bootstrap intervals, the interval rank, the reference
anchor, online Elo) on synthetic votes from known strengths; the page and who may see it."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from evals import selectors
from feedback import services as feedback_services
from feedback.models import (
    Assignment,
    AssignmentStatus,
    Completion,
    CompletionSource,
    Item,
    ItemCompletion,
    Origin,
    PairwiseJudgement,
    Prompt,
    TaskKind,
)
from modeling.models import Checkpoint, CheckpointKind
from tests.evals.test_dashboard import assert_nothing_from_another_host
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

TRUTH = {"base": 1000, "sft": 1150, "dpo": 1300, "broken": 700}


def cast(project, votes, *, origin=Origin.HUMAN, source=CompletionSource.CHECKPOINT, gold=False):
    """Judged pairwise items in bulk, one item per (model_a, model_b, choice) vote, A at position
    0: what the annotation services leave behind, without a thousand round trips each."""
    annotator = UserFactory(username=f"voter-{origin}")
    start = timezone.now() - timedelta(days=1)
    offset = Prompt.objects.count()
    prompts = Prompt.objects.bulk_create(
        Prompt(project=project, messages=[{"role": "user", "content": f"q{offset + i}"}],
               content_hash=f"{origin}-{offset + i}")
        for i in range(len(votes))
    )  # fmt: skip
    completions = Completion.objects.bulk_create(
        Completion(prompt=prompt, text=f"reply of {name}", model_name=name, source=source)
        for prompt, (a, b, _) in zip(prompts, votes, strict=True)
        for name in (a, b)
    )
    items = Item.objects.bulk_create(
        Item(project=project, kind=TaskKind.PAIRWISE, prompt=p, submitted_count=1, is_gold=gold)
        for p in prompts
    )
    ItemCompletion.objects.bulk_create(
        ItemCompletion(item=item, completion=completions[2 * i + side], position=side)
        for i, item in enumerate(items)
        for side in (0, 1)
    )
    assignments = Assignment.objects.bulk_create(
        Assignment(item=item, annotator=annotator, status=AssignmentStatus.SUBMITTED,
                   expires_at=start, finished_at=start)
        for item in items
    )  # fmt: skip
    PairwiseJudgement.objects.bulk_create(
        PairwiseJudgement(
            assignment=assignment,
            item=assignment.item,
            annotator=annotator,
            origin=origin,
            choice=choice,
            strength="clear" if choice in ("a", "b") else "",
            shown_left="a",
            created_at=start + timedelta(seconds=i),
        )
        for i, (assignment, (_, _, choice)) in enumerate(zip(assignments, votes, strict=True))
    )


def synthetic_votes(truth: dict[str, float], n: int, seed: int, tie_rate: float = 0.1):
    """Votes drawn from the Bradley-Terry model itself, some of them ties or both-bad."""
    rng = np.random.default_rng(seed)
    names = list(truth)
    votes = []
    for _ in range(n):
        a, b = rng.choice(len(names), size=2, replace=False)
        p_a = 1 / (1 + 10 ** ((truth[names[b]] - truth[names[a]]) / 400))
        if rng.random() < tie_rate:
            choice = "tie" if rng.random() < 0.5 else "both_bad"
        else:
            choice = "a" if rng.random() < p_a else "b"
        votes.append((names[a], names[b], choice))
    return votes


@pytest.fixture
def arena(db):
    return ProjectFactory(name="Arena")


# --- battles -------------------------------------------------------------------------------------


def test_every_choice_maps_to_fastchat_winner_labels_through_the_real_services(arena, roles):
    annotator = UserFactory(username="judge", roles=["annotator"])
    choices = ["a", "b", "tie", "both_bad"]
    for i, _ in enumerate(choices):
        prompt = feedback_services.prompt_create(project=arena, messages=f"Question {i}?")
        pair = [
            feedback_services.completion_create(
                prompt=prompt, text=f"{name} says {i}", model_name=name,
                source=CompletionSource.CHECKPOINT,
            )
            for name in ("new", "old")
        ]  # fmt: skip
        feedback_services.item_create(
            project=arena, kind=TaskKind.PAIRWISE, prompt=prompt, completions=pair
        )
    for choice in choices:
        assignment = feedback_services.task_next_for_annotator(project=arena, annotator=annotator)
        # The screen shuffles sides; the stored choice is canonical (a = position 0, "new").
        feedback_services.pairwise_submit(
            assignment_id=assignment.pk,
            annotator=annotator,
            choice=choice,
            strength="clear" if choice in ("a", "b") else "",
        )
    assert sorted(selectors.arena_battles(project=arena)) == sorted(
        [
            ("new", "old", "model_a"),
            ("new", "old", "model_b"),
            ("new", "old", "tie"),
            ("new", "old", "tie (bothbad)"),
        ]
    )


def test_only_human_votes_on_two_different_named_models_count(arena):
    cast(arena, [("x", "y", "a")])
    cast(arena, [("x", "x", "a")])  # a model against itself
    cast(arena, [("x", "", "a")])  # an unnamed reply
    cast(arena, [("x", "y", "b")], source=CompletionSource.HUMAN)  # a person's reply
    cast(arena, [("x", "y", "b")], gold=True)  # gold items measure annotators
    cast(arena, [("x", "y", "b")], origin=Origin.IMPORTED)
    cast(arena, [("x", "y", "tie")], origin=Origin.SIMULATED)
    other = ProjectFactory()
    cast(other, [("x", "y", "b")])  # another project
    assert selectors.arena_battles(project=arena) == [("x", "y", "model_a")]
    assert selectors.arena_battles(project=arena, include_simulated=True) == [
        ("x", "y", "model_a"),
        ("x", "y", "tie"),
    ]
    votes = {p["item__project__name"]: p["votes"] for p in selectors.arena_projects()}
    assert votes == {"Arena": 1, other.name: 1}


def test_votes_come_in_the_order_they_were_cast(arena):
    cast(arena, [("x", "y", "a"), ("y", "z", "b"), ("z", "x", "tie")])
    assert selectors.arena_battles(project=arena) == [
        ("x", "y", "model_a"),
        ("y", "z", "model_b"),
        ("z", "x", "tie"),
    ]


# --- the leaderboard ----------------------------------------------------------------------------


def test_leaderboard_recovers_known_strengths_with_sane_intervals(arena):
    # decisive votes only: ties drawn at a fixed rate (not from the model) pull ratings together
    cast(arena, synthetic_votes(TRUTH, 1200, seed=7, tie_rate=0.0))
    board = selectors.arena_leaderboard(project=arena, reference="base")
    rows = {row["model"]: row for row in board.rows}
    assert [row["model"] for row in board.rows] == ["dpo", "sft", "base", "broken"]
    assert board.battles == 1200 and sum(row["votes"] for row in board.rows) == 2 * 1200
    for model, truth in TRUTH.items():
        row = rows[model]
        assert row["rating"] == pytest.approx(truth, abs=60)
        assert row["low"] <= row["rating"] <= row["high"]
        assert row["low"] <= truth <= row["high"]  # seeded: the 95% intervals cover the truth
        assert row["wins"] + row["losses"] + row["ties"] == row["votes"]
    # the anchor sits at exactly 1000 in every bootstrap round
    assert rows["base"]["rating"] == pytest.approx(1000)
    assert rows["base"]["low"] == pytest.approx(1000) and rows["base"]["high"] == pytest.approx(
        1000
    )
    assert rows["base"]["is_reference"]
    # 150 points apart with 1200 votes: the intervals separate the models
    assert rows["dpo"]["low"] > rows["sft"]["high"] > rows["sft"]["low"] > rows["base"]["high"]
    # rank = 1 + number of models whose lower bound exceeds this model's upper bound
    for row in board.rows:
        assert row["rank"] == 1 + sum(other["low"] > row["high"] for other in board.rows)
    assert [rows[m]["rank"] for m in ("dpo", "sft", "base", "broken")] == [1, 2, 3, 4]
    # online Elo, for comparison, agrees on the order
    assert sorted(TRUTH, key=lambda m: -rows[m]["elo"]) == ["dpo", "sft", "base", "broken"]


def test_the_bootstrap_is_seeded(arena):
    cast(arena, synthetic_votes(TRUTH, 200, seed=3))
    first = selectors.arena_leaderboard(project=arena, reference="base")
    again = selectors.arena_leaderboard(project=arena, reference="base")
    assert first.rows == again.rows


def test_a_tie_or_both_bad_is_half_a_win_for_each_side(arena):
    cast(arena, [("x", "y", "a")] * 5 + [("x", "y", "b")] * 5 + [("x", "y", "tie")] * 3)
    cast(arena, [("x", "z", "a"), ("x", "z", "b")] + [("x", "z", "both_bad")] * 4)
    board = selectors.arena_leaderboard(project=arena, reference="x")
    for row in board.rows:
        assert row["rating"] == pytest.approx(1000, abs=0.01)
    assert {row["model"]: row["ties"] for row in board.rows} == {"x": 7, "y": 3, "z": 4}


def test_choosing_another_reference_shifts_every_rating_by_the_same_amount(arena):
    cast(arena, synthetic_votes(TRUTH, 400, seed=11))
    by_base = {r["model"]: r["rating"] for r in selectors.arena_leaderboard(project=arena).rows}
    by_dpo = {
        r["model"]: r["rating"]
        for r in selectors.arena_leaderboard(project=arena, reference="dpo").rows
    }
    assert by_dpo["dpo"] == pytest.approx(1000)
    shift = by_base["dpo"] - 1000
    for model in TRUTH:
        assert by_base[model] - by_dpo[model] == pytest.approx(shift, abs=1e-3)


def test_the_default_reference_is_the_first_base_checkpoint(arena):
    cast(arena, synthetic_votes(TRUTH, 100, seed=5))
    now = timezone.now()
    Checkpoint.objects.create(name="sft", kind=CheckpointKind.POLICY, storage_path="/m/sft",
                              created_at=now - timedelta(days=3))  # fmt: skip
    base = Checkpoint.objects.create(name="base", kind=CheckpointKind.POLICY, storage_path="/m/b",
                                     created_at=now)  # fmt: skip
    Checkpoint.objects.filter(name="sft").update(parent=base)  # a trained model: not a base
    board = selectors.arena_leaderboard(project=arena)
    assert board.reference == "base"
    # models that are not registered checkpoints: the first by name
    other = ProjectFactory()
    cast(other, [("m2", "m1", "a"), ("m1", "m2", "a")])
    assert selectors.arena_leaderboard(project=other).reference == "m1"


def test_an_unknown_reference_falls_back_to_the_default(arena):
    cast(arena, [("x", "y", "a"), ("y", "x", "a")])
    board = selectors.arena_leaderboard(project=arena, reference="nobody")
    assert board.unknown_reference == "nobody" and board.reference == "x"


def test_no_votes_gives_an_empty_leaderboard(arena):
    board = selectors.arena_leaderboard(project=arena)
    assert board.rows == [] and board.battles == 0


# --- the page -----------------------------------------------------------------------------------


def test_leaderboard_page_has_the_table_and_chart_data_with_local_chartjs(client, reviewer, arena):
    cast(arena, synthetic_votes(TRUTH, 300, seed=1))
    Checkpoint.objects.create(name="dpo", kind=CheckpointKind.POLICY, storage_path="/m/dpo")
    client.force_login(reviewer)
    page = client.get(f"/evals/projects/{arena.pk}/leaderboard/?reference=sft").content.decode()
    data = json.loads(
        re.search(r'<script id="leaderboard-data" type="application/json">(.*?)</script>', page)[1]
    )
    assert data["reference"] == "sft" and data["labels"][0] == "dpo"
    assert all(low <= rating <= high for rating, (low, high) in
               zip(data["ratings"], data["errorBars"], strict=True))  # fmt: skip
    assert '<script src="/static/vendor/chartjs/chart.umd.min.js"' in page
    assert_nothing_from_another_host(page)
    dpo = Checkpoint.objects.get(name="dpo")
    assert f'href="/train/checkpoints/{dpo.pk}/">dpo</a>' in page  # registered: linked
    assert '<span class="badge">reference</span>' in page
    assert 'data-eval-chart="leaderboard"' in page


def test_model_names_on_the_leaderboard_are_escaped(client, reviewer, arena):
    cast(
        arena,
        [("<img src=x onerror=alert(1)>", "y", "a"), ("y", "<img src=x onerror=alert(1)>", "a")],
    )
    client.force_login(reviewer)
    page = client.get(f"/evals/projects/{arena.pk}/leaderboard/").content.decode()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_annotators_cannot_see_the_leaderboard(client, annotator, arena):
    client.force_login(annotator)
    assert client.get(f"/evals/projects/{arena.pk}/leaderboard/").status_code == 403


def test_the_dashboard_links_each_arena_with_its_vote_count(client, reviewer, arena):
    cast(arena, [("x", "y", "a"), ("y", "x", "b")])
    client.force_login(reviewer)
    page = client.get("/evals/dashboard/").content.decode()
    assert f'<a href="/evals/projects/{arena.pk}/leaderboard/">Arena</a>' in page
    assert "2 human votes" in page


# --- fair leaderboards (issue #18) -------------------------------------------------------------


def test_models_that_never_met_are_rated_in_groups_of_their_own(client, reviewer, arena):
    """Imported models that never met the checkpoints were anchored on one scale with them:
    intervals of thousands of points and every model rank 1."""
    cast(arena, synthetic_votes({"base": 1000, "sft": 1200}, 300, seed=2, tie_rate=0.0))
    cast(arena, synthetic_votes({"imp-x": 1000, "imp-y": 1200}, 300, seed=3, tie_rate=0.0))
    board = selectors.arena_leaderboard(project=arena, reference="base")

    assert [group.models for group in board.groups] == [["sft", "base"], ["imp-y", "imp-x"]]
    assert [group.reference for group in board.groups] == ["base", "imp-x"]
    for group in board.groups:
        rows = {row["model"]: row for row in group.rows}
        assert rows[group.reference]["rating"] == pytest.approx(1000)
        assert all(row["high"] - row["low"] < 200 and row["enough"] for row in group.rows)
        assert [row["rank"] for row in group.rows] == [1, 2]
        assert group.battles == 300 and group.rateable
    assert {row["model"]: row["group"] for row in board.rows} == {
        "sft": 0, "base": 0, "imp-y": 1, "imp-x": 1
    }  # fmt: skip
    assert board.chart()["labels"] == ["sft", "base"]  # one scale per chart

    client.force_login(reviewer)
    page = client.get(f"/evals/projects/{arena.pk}/leaderboard/?reference=base").content.decode()
    assert "Models that never met the ones above" in page
    assert page.count('class="data leaderboard"') == 2


def test_a_model_with_few_votes_or_no_finite_rating_says_not_enough_votes(client, reviewer, arena):
    cast(arena, synthetic_votes({"a": 1000, "b": 1100}, 100, seed=4, tie_rate=0.0))
    cast(arena, [("newcomer", "a", "a")] * 3)  # three votes, never lost: no finite rating
    board = selectors.arena_leaderboard(project=arena, reference="a")
    rows = {row["model"]: row for row in board.rows}
    assert rows["a"]["enough"] and rows["b"]["enough"] and not rows["newcomer"]["enough"]
    assert not board.groups[0].rateable
    assert "newcomer" not in board.chart()["labels"]
    client.force_login(reviewer)
    page = client.get(f"/evals/projects/{arena.pk}/leaderboard/").content.decode()
    assert "not enough votes" in page and "never lost (or never won) against the others" in page


def test_the_win_rate_matrix_counts_battles_and_half_wins_for_ties(arena):
    cast(arena, [("x", "y", "a")] * 3 + [("x", "y", "b")] + [("y", "x", "tie")] * 2)
    board = selectors.arena_leaderboard(project=arena, reference="x", rounds=0)
    matrix = {
        line["model"]: {c["model"]: c for c in line["cells"]} for line in board.groups[0].matrix
    }
    assert matrix["x"]["y"]["votes"] == 6 and matrix["x"]["y"]["win_rate"] == pytest.approx(4 / 6)
    assert matrix["y"]["x"]["win_rate"] == pytest.approx(2 / 6)
    assert matrix["x"]["x"]["self"]


def test_the_leaderboard_shows_style_controlled_ratings_beside_the_plain_ones(
    client, reviewer, arena
):
    cast(arena, synthetic_votes(TRUTH, 300, seed=6))
    board = selectors.arena_leaderboard(project=arena, reference="base")
    rows = {row["model"]: row for row in board.rows}
    # The synthetic replies all have the same style ("reply of <name>"): no style effect, so
    # style control agrees with the plain fit.
    for row in board.rows:
        assert row["style_rating"] == pytest.approx(row["rating"], abs=1)
    assert rows["base"]["style_rating"] == pytest.approx(1000)
    assert set(board.groups[0].style_effects) == {"length", "headers", "lists", "bold"}
    client.force_login(reviewer)
    page = client.get(f"/evals/projects/{arena.pk}/leaderboard/").content.decode()
    assert "Style-controlled" in page and "Style effects on votes" in page
    api_rows = client.get(f"/api/projects/{arena.pk}/leaderboard").json()["rows"]
    assert all(row["style_rating"] is not None for row in api_rows)


def _length_biased_battles(rng, *, strength: float, length_bias: float, longer: float, n: int):
    """Battles of "m" against "base": the voter prefers m by `strength` (logit) and longer
    replies by `length_bias`; m's replies are `longer` words longer on average."""
    battles, lengths = [], []
    for _ in range(n):
        base_len = rng.integers(5, 60)
        d = rng.normal(longer, 15)
        m_len = max(1.0, base_len + d)
        logit = strength + length_bias * np.tanh((m_len - base_len) / 15)
        winner = "model_a" if rng.random() < 1 / (1 + np.exp(-logit)) else "model_b"
        if rng.random() < 0.5:  # m on either side
            battles.append(("m", "base", winner))
            lengths.append((m_len, base_len))
        else:
            flipped = {"model_a": "model_b", "model_b": "model_a"}[winner]
            battles.append(("base", "m", flipped))
            lengths.append((base_len, m_len))
    return battles, lengths


def test_length_controlled_win_rate_is_alpacaeval_s_glm_and_removes_a_length_advantage():
    import statsmodels.api as sm

    from evals.ml.arena import length_controlled_win_rates

    rng = np.random.default_rng(0)
    # As good as the baseline, but longer, and voters like longer replies.
    battles, lengths = _length_biased_battles(rng, strength=0.0, length_bias=1.5, longer=20, n=2000)
    battles += [("m", "base", "tie")] * 10
    lengths += [(30.0, 30.0)] * 10
    rates = length_controlled_win_rates(battles, lengths, baseline="base", rounds=50)["m"]

    # The same regression by statsmodels (a binomial GLM takes the half wins of ties).
    y, d = [], []
    for (a, _, winner), (la, lb) in zip(battles, lengths, strict=True):
        won = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}[winner]
        y.append(won if a == "m" else 1 - won)
        d.append(la - lb if a == "m" else lb - la)
    d = np.array(d)
    design = np.column_stack([np.ones(len(d)), np.tanh(d / d.std())])
    glm = sm.GLM(np.array(y), design, family=sm.families.Binomial()).fit()
    assert rates["lc_win_rate"] == pytest.approx(1 / (1 + np.exp(-glm.params[0])), abs=1e-4)
    assert rates["length_effect"] == pytest.approx(glm.params[1], abs=1e-3)
    assert rates["n"] == 2010 and rates["win_rate"] == pytest.approx(np.mean(y))

    # The plain win rate credits the length; the controlled one does not.
    assert rates["win_rate"] > 0.6
    assert rates["low"] < 0.5 < rates["high"] and abs(rates["lc_win_rate"] - 0.5) < 0.05

    # A model that is better at equal length keeps its advantage.
    better, better_lengths = _length_biased_battles(
        rng, strength=1.0, length_bias=1.5, longer=0, n=2000
    )
    rates = length_controlled_win_rates(better, better_lengths, baseline="base", rounds=20)["m"]
    assert rates["lc_win_rate"] == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.05)
    assert rates["low"] > 0.5


def test_the_leaderboard_shows_win_rates_against_the_reference_plain_and_length_controlled(
    client, reviewer, arena
):
    # 30 battles where "verbose" answers at length and wins; 30 at the base's length, won
    # half the time. Plain: 45 of 60 won; at equal length the regression says one in two.
    votes = [("verbose", "base", "a")] * 30 + [
        ("verbose", "base", "a"),
        ("base", "verbose", "a"),
    ] * 15
    cast(arena, votes)
    long_reply = "reply of verbose " + " ".join(["word"] * 27)
    for n, completion in enumerate(Completion.objects.filter(model_name="verbose").order_by("id")):
        if n < 30:
            completion.text = long_reply
            completion.save(update_fields=["text"])
    board = selectors.arena_leaderboard(project=arena, reference="base")
    row = {row["model"]: row for row in board.rows}["verbose"]
    assert row["vs_reference_battles"] == 60
    assert row["vs_reference_win_rate"] == pytest.approx(0.75)
    assert row["vs_reference_lc_win_rate"] == pytest.approx(0.5, abs=0.01)
    assert row["vs_reference_low"] < 0.5 < row["vs_reference_high"]
    assert {r["model"]: r for r in board.rows}["base"]["vs_reference_win_rate"] is None

    client.force_login(reviewer)
    page = client.get(f"/evals/projects/{arena.pk}/leaderboard/?reference=base").content.decode()
    assert "Win rate vs base" in page and "Length-controlled" in page
    verbose_row = re.search(r"<tr>\s*<td[^>]*>[^<]*</td>\s*<td>verbose.*?</tr>", page, re.S).group(
        0
    )
    assert "75.0%" in verbose_row and "50.0%" in verbose_row
    api_rows = client.get(f"/api/projects/{arena.pk}/leaderboard?reference=base").json()["rows"]
    api = {r["model"]: r for r in api_rows}["verbose"]
    assert api["vs_reference_win_rate"] == pytest.approx(0.75)
    assert api["vs_reference_lc_win_rate"] == pytest.approx(0.5, abs=0.01)
