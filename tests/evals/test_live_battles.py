"""Live arena battles (evals.services.battles): an admin sets up which checkpoints battle and what
prompts are refused; an annotator's prompt queues two anonymous replies; the vote becomes an
ordinary pairwise item that the leaderboard counts; names stay hidden, in the page and the API,
until the vote. The replies' sampling and streaming run for real in
tests/browser/test_live_battle.py; here they are written into the rows as a worker would."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from core.errors import NotYourTask, TaskUnavailable
from evals import selectors, services
from evals.models import Battle, LiveArena
from evals.services.battles import blocked_term_in
from feedback.models import (
    CompletionSource,
    Item,
    Origin,
    PairwiseJudgement,
    TaskKind,
)
from jobs.models import Status
from modeling.models import Checkpoint, CheckpointKind, PlaygroundTurn
from tests.factories import ProjectFactory, UserFactory
from tests.feedback.test_api import assert_error, bearer

pytestmark = pytest.mark.django_db

NAMES = ("contender-alpha", "contender-bravo")


@pytest.fixture
def contenders(db):
    return [
        Checkpoint.objects.create(name=name, kind=CheckpointKind.POLICY, storage_path="/m/x")
        for name in NAMES
    ]


@pytest.fixture
def project(db):
    return ProjectFactory(name="Arena", task_kinds=[TaskKind.PAIRWISE], strength_optional=True)


@pytest.fixture
def arena(project, contenders, admin_user):
    return services.live_arena_update(
        project=project,
        updated_by=admin_user,
        checkpoints=contenders,
        blocked_terms=["secret plan", "Nuclear"],
    )


def answer(battle: Battle, texts=("Four.", "It is 4.")) -> Battle:
    """What the GPU workers do: both replies written, the rows finished."""
    for turn, text in zip(battle.replies, texts, strict=True):
        PlaygroundTurn.objects.filter(pk=turn.pk).update(status=Status.SUCCEEDED, reply=text)
    return Battle.objects.get(pk=battle.pk)


# --- setting up --------------------------------------------------------------------------------


def test_an_admin_sets_up_live_battles_and_bad_settings_are_named(
    project, contenders, admin_user, annotator
):
    reward = Checkpoint.objects.create(name="rm", kind=CheckpointKind.REWARD, storage_path="/m")
    with pytest.raises(ValidationError) as refused:
        services.live_arena_update(
            project=project,
            updated_by=admin_user,
            checkpoints=[contenders[0], reward],
            blocked_terms=["x" * 101],
            temperature=9,
            max_prompt_chars=0,
        )
    errors = refused.value.message_dict
    assert "rm" in errors["checkpoints"][0]
    assert set(errors) == {"checkpoints", "blocked_terms", "temperature", "max_prompt_chars"}
    with pytest.raises(ValidationError, match="at least two"):
        services.live_arena_update(
            project=project, updated_by=admin_user, checkpoints=contenders[:1]
        )
    no_pairs = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    with pytest.raises(ValidationError, match="pairwise"):
        services.live_arena_update(project=no_pairs, updated_by=admin_user, checkpoints=contenders)
    with pytest.raises(NotYourTask):
        services.live_arena_update(project=project, updated_by=annotator, checkpoints=contenders)
    assert not LiveArena.objects.exists()  # nothing half-saved

    arena = services.live_arena_update(
        project=project,
        updated_by=admin_user,
        checkpoints=contenders,
        blocked_terms=["  secret   plan ", "", "Secret plan", "nuclear"],
    )
    assert arena.blocked_terms == ["secret plan", "nuclear"]
    assert set(arena.checkpoints.all()) == set(contenders)


def test_the_settings_page_saves_and_shows_errors_in_place(client, project, contenders, admin_user):
    client.force_login(admin_user)
    url = f"/evals/projects/{project.pk}/arena/"
    assert client.get(url).status_code == 200
    refused = client.post(url, {"checkpoints": [contenders[0].pk], "is_open": "on",
                                "max_prompt_chars": 2000, "max_new_tokens": 64,
                                "temperature": 0.7})  # fmt: skip
    assert refused.status_code == 422
    assert "choose at least two checkpoints" in refused.content.decode()
    saved = client.post(url, {"checkpoints": [c.pk for c in contenders], "is_open": "on",
                              "blocked_terms": "one\ntwo words", "max_prompt_chars": 500,
                              "max_new_tokens": 64, "temperature": 0.5})  # fmt: skip
    assert saved.status_code == 302
    arena = LiveArena.objects.get(project=project)
    assert (arena.blocked_terms, arena.max_prompt_chars, arena.max_new_tokens) == (
        ["one", "two words"],
        500,
        64,
    )


def test_blocked_terms_match_whole_words_in_any_case():
    assert blocked_term_in("Tell me the SECRET  plan now", ["secret plan"]) == "secret plan"
    assert blocked_term_in("nuclear-powered", ["Nuclear"]) == "Nuclear"
    assert blocked_term_in("unclear answers", ["clear"]) is None
    assert blocked_term_in("secretive planning", ["secret plan"]) is None


# --- starting ----------------------------------------------------------------------------------


def test_a_battle_queues_one_reply_from_each_of_two_different_models(arena, annotator):
    battle = services.battle_start(project=arena.project, annotator=annotator, prompt=" 2 + 2? ")
    a, b = battle.replies
    assert battle.prompt == "2 + 2?"
    assert {a.checkpoint.name, b.checkpoint.name} == set(NAMES)
    for turn in (a, b):
        assert turn.status == Status.QUEUED
        assert turn.messages == [{"role": "user", "content": "2 + 2?"}]
        assert turn.requested_by == annotator
        assert turn.sampling["max_new_tokens"] == arena.max_new_tokens
    assert a.sampling["seed"] != b.sampling["seed"] or a.checkpoint != b.checkpoint


def test_sides_and_models_are_drawn_at_random(arena, annotator):
    firsts = {
        answer(
            services.battle_start(project=arena.project, annotator=annotator, prompt=f"q{i}")
        ).reply_a.checkpoint.name
        for i in range(40)
    }
    assert firsts == set(NAMES)  # 2^-39 to fail by chance


def test_one_battle_at_a_time_while_its_replies_are_sampled(
    client, arena, annotator, other_annotator
):
    """Each battle takes two GPU replies: one person pressing Start again and again must not fill
    the workers' queue. The next battle waits until both replies are in (or one failed); a vote
    is not required, and other annotators are not held up."""
    first = services.battle_start(project=arena.project, annotator=annotator, prompt="q1")
    with pytest.raises(TaskUnavailable, match="still being answered") as refused:
        services.battle_start(project=arena.project, annotator=annotator, prompt="q2")
    assert refused.value.code == "busy"
    assert Battle.objects.count() == 1 and PlaygroundTurn.objects.count() == 2
    assert services.battle_start(project=arena.project, annotator=other_annotator, prompt="q")

    # In the browser: said above the form, and the prompt typed is still in it.
    client.force_login(annotator)
    page = client.post(f"/evals/projects/{arena.project.pk}/battles/new/", {"prompt": "Why?"})
    assert page.status_code == 422
    html = page.content.decode()
    assert "still being answered" in html and "Why?</textarea>" in html
    # Through the API: 409 with its code.
    response = client.post(
        f"/api/projects/{arena.project.pk}/battles",
        data=json.dumps({"prompt": "Why?"}),
        content_type="application/json",
        headers=bearer(annotator),
    )
    assert_error(response, 409, "busy")

    # One reply in and the other failed: done sampling, so the next may start.
    a, b = first.replies
    PlaygroundTurn.objects.filter(pk=a.pk).update(status=Status.SUCCEEDED, reply="Four.")
    PlaygroundTurn.objects.filter(pk=b.pk).update(status=Status.RUNNING, reply="Fo")
    with pytest.raises(TaskUnavailable, match="still being answered"):
        services.battle_start(project=arena.project, annotator=annotator, prompt="q2")
    PlaygroundTurn.objects.filter(pk=b.pk).update(status=Status.FAILED)
    assert services.battle_start(project=arena.project, annotator=annotator, prompt="q2")


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("   ", "Type a prompt"),
        ("What is the secret   PLAN?", "does not accept prompts about “secret plan”"),
        ("x" * 2001, "at most 2000 characters"),
    ],
)
def test_a_refused_prompt_generates_nothing_and_says_why(arena, annotator, prompt, message):
    with pytest.raises(ValidationError, match=message):
        services.battle_start(project=arena.project, annotator=annotator, prompt=prompt)
    assert not PlaygroundTurn.objects.exists() and not Battle.objects.exists()


def test_who_may_battle(arena, annotator, reviewer, admin_user, contenders):
    outsider = UserFactory(username="outsider", roles=["annotator"])
    arena.project.annotators.set([annotator])
    with pytest.raises(NotYourTask):
        services.battle_start(project=arena.project, annotator=outsider, prompt="hi")
    with pytest.raises(NotYourTask):
        services.battle_start(project=arena.project, annotator=reviewer, prompt="hi")
    assert services.battle_start(project=arena.project, annotator=admin_user, prompt="hi")
    arena.is_open = False
    arena.save()
    with pytest.raises(TaskUnavailable, match="no live battles open"):
        services.battle_start(project=arena.project, annotator=annotator, prompt="hi")
    bare = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    with pytest.raises(TaskUnavailable):
        services.battle_start(project=bare, annotator=annotator, prompt="hi")


# --- voting ------------------------------------------------------------------------------------


def test_the_vote_is_a_pairwise_item_the_leaderboard_counts(arena, annotator):
    battle = services.battle_start(project=arena.project, annotator=annotator, prompt="2 + 2?")
    with pytest.raises(TaskUnavailable, match="finish their replies"):
        services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="a")
    battle = answer(battle)
    model_a = battle.reply_a.checkpoint.name

    voted = services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="a")
    again = services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="b")  # 2nd click

    item = Item.objects.get()
    assert voted.item == again.item == item
    assert item.kind == TaskKind.PAIRWISE and item.project == arena.project
    assert item.metadata == {"live_battle": battle.pk} and item.submitted_count == 1
    sides = [ic.completion for ic in item.item_completions.order_by("position")]
    assert [c.text for c in sides] == ["Four.", "It is 4."]
    assert [c.model_name for c in sides] == [t.checkpoint.name for t in battle.replies]
    assert {c.source for c in sides} == {CompletionSource.CHECKPOINT}
    judgement = PairwiseJudgement.objects.get()
    assert (judgement.choice, judgement.origin, judgement.annotator) == (
        "a",
        Origin.HUMAN,
        annotator,
    )
    assert selectors.arena_battles(project=arena.project) == [
        (model_a, battle.reply_b.checkpoint.name, "model_a")
    ]


def test_a_vote_is_checked_like_any_other_and_a_refused_one_stores_nothing(
    arena, annotator, project
):
    project.strength_optional = False
    project.save()
    battle = answer(services.battle_start(project=project, annotator=annotator, prompt="hi"))
    with pytest.raises(ValidationError, match="how much better"):
        services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="b")
    with pytest.raises(ValidationError, match="Choose A, B"):
        services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="c")
    assert not Item.objects.exists() and not PairwiseJudgement.objects.exists()
    assert not Battle.objects.get().is_voted
    services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="b", strength="clear")
    assert PairwiseJudgement.objects.get().strength == "clear"


def test_nobody_votes_on_someone_else_s_battle(arena, annotator, other_annotator):
    battle = answer(services.battle_start(project=arena.project, annotator=annotator, prompt="x"))
    with pytest.raises(NotYourTask):
        services.battle_vote(battle_id=battle.pk, annotator=other_annotator, choice="a")
    assert selectors.battle_of(battle_id=battle.pk, user=other_annotator) is None


def test_a_failed_reply_cannot_be_voted_on(arena, annotator):
    battle = services.battle_start(project=arena.project, annotator=annotator, prompt="x")
    PlaygroundTurn.objects.filter(pk=battle.reply_a_id).update(
        status=Status.FAILED, error="CUDA out of memory in /models/contender-alpha"
    )
    PlaygroundTurn.objects.filter(pk=battle.reply_b_id).update(status=Status.SUCCEEDED, reply="y")
    battle = Battle.objects.get(pk=battle.pk)
    state = selectors.battle_state(battle)
    assert state["failed"] and not state["ready"]
    assert "contender" not in json.dumps(state)  # the error may name the model: not before a vote
    with pytest.raises(TaskUnavailable):
        services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="a")


def test_two_battles_on_the_same_prompt_share_it(arena, annotator):
    for _ in range(2):
        battle = answer(
            services.battle_start(project=arena.project, annotator=annotator, prompt="q")
        )
        services.battle_vote(battle_id=battle.pk, annotator=annotator, choice="tie")
    assert Item.objects.count() == 2
    assert Item.objects.values("prompt").distinct().count() == 1


# --- names hidden until the vote: HTML and API -------------------------------------------------


def test_the_pages_hide_the_names_until_the_vote_and_then_show_them(client, arena, annotator):
    client.force_login(annotator)
    assert "Arena" in client.get("/evals/arena/").content.decode()
    refused = client.post(
        f"/evals/projects/{arena.project.pk}/battles/new/", {"prompt": "the nuclear codes"}
    )
    assert refused.status_code == 422
    assert "does not accept prompts about “Nuclear”" in refused.content.decode()
    assert "the nuclear codes" in refused.content.decode()  # what was typed is kept

    started = client.post(f"/evals/projects/{arena.project.pk}/battles/new/", {"prompt": "2+2?"})
    battle = Battle.objects.get()
    assert started.status_code == 302 and started["Location"] == f"/evals/battles/{battle.pk}/"
    waiting = client.get(started["Location"]).content.decode()
    assert 'hx-trigger="every 500ms"' in waiting and "vote-form" not in waiting
    PlaygroundTurn.objects.filter(pk=battle.reply_a_id).update(
        status=Status.RUNNING, reply="Fo"
    )  # the reply so far, as the worker streams it
    polled = client.get(started["Location"], headers={"HX-Request": "true"}).content.decode()
    assert "Fo" in polled and "<html" not in polled
    answer(battle)
    ready = client.get(started["Location"]).content.decode()
    assert "vote-form" in ready
    for page in (waiting, polled, ready):
        assert not any(name in page for name in NAMES)

    voted = client.post(f"/evals/battles/{battle.pk}/vote/", {"choice": "b"}, follow=True)
    page = voted.content.decode()
    assert all(name in page for name in NAMES) and "vote-form" not in page
    assert PairwiseJudgement.objects.get().choice == "b"


def test_the_api_hides_the_names_until_the_vote(client, arena, annotator, other_annotator):
    headers = bearer(annotator)

    def call(method, path, body=None, who=headers):
        kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body else {}
        return getattr(client, method)(f"/api{path}", headers=who, **kwargs)

    refused = call("post", f"/projects/{arena.project.pk}/battles", {"prompt": "a secret plan"})
    assert_error(refused, 422)
    started = call("post", f"/projects/{arena.project.pk}/battles", {"prompt": "2+2?"})
    assert started.status_code == 201, started.content
    body = started.json()
    assert [r["model"] for r in body["replies"]] == [None, None] and not body["ready"]
    assert not any(name in started.content.decode() for name in NAMES)

    assert_error(call("post", f"/battles/{body['id']}/vote", {"choice": "a"}), 409, "not_ready")
    answer(Battle.objects.get(pk=body["id"]))
    ready = call("get", f"/battles/{body['id']}")
    assert ready.json()["ready"] and not any(name in ready.content.decode() for name in NAMES)
    assert_error(call("get", f"/battles/{body['id']}", who=bearer(other_annotator)), 404)

    voted = call("post", f"/battles/{body['id']}/vote", {"choice": "a"})
    assert voted.status_code == 200, voted.content
    result = voted.json()
    assert result["voted"] and result["choice"] == "a" and result["item_id"]
    assert sorted(r["model"] for r in result["replies"]) == sorted(NAMES)
