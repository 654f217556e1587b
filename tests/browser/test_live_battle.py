"""A live arena battle in a real browser, through a real worker of the `gpu` queue: an annotator
types a prompt, two tiny checkpoints answer it (each reply sampled in its own process and
written into its row as it grows, the page polling), the names stay hidden in the page and in
the API until the vote, and the vote lands on the project's leaderboard."""

from __future__ import annotations

import re

import pytest

from core.roles import Role
from evals import selectors, services
from evals.models import Battle
from feedback.models import PairwiseJudgement, TaskKind
from jobs.models import Status
from modeling import services as modeling_services
from tests.factories import ProjectFactory, UserFactory
from tests.feedback.test_api import bearer
from tests.modeling.conftest import empty_gpu_queue, gpu_worker  # noqa: F401  (fixtures by name)
from tests.playwright_support import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NAMES = ("contender-alpha", "contender-bravo")


def letters(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


@pytest.fixture
def arena(roles, tiny_model_dir):
    admin = UserFactory(username="boss", roles=[Role.ADMIN])
    project = ProjectFactory(
        name="Live arena", task_kinds=[TaskKind.PAIRWISE], strength_optional=True
    )
    contenders = [
        modeling_services.checkpoint_register(name=name, storage_path=tiny_model_dir)
        for name in NAMES
    ]
    return services.live_arena_update(
        project=project,
        updated_by=admin,
        checkpoints=contenders,
        blocked_terms=["forbidden topic"],
        max_new_tokens=16,
        temperature=1.0,
    )


@pytest.mark.usefixtures("gpu_worker")
def test_a_live_battle_hides_the_names_until_the_vote_which_lands_on_the_leaderboard(page, arena):
    annotator = UserFactory(username="ann", roles=[Role.ANNOTATOR])
    reviewer = UserFactory(username="rev", roles=[Role.REVIEWER])
    login(page, annotator.username)
    page.click("nav >> text=Arena")
    page.click("text=New battle")

    page.fill("#id_prompt", "Tell me about the forbidden topic")
    page.click("#battle-form button.primary")
    assert "does not accept prompts about “forbidden topic”" in page.inner_text("#battle-form")
    assert page.input_value("#id_prompt") == "Tell me about the forbidden topic"
    assert not Battle.objects.exists()  # refused before anything was generated

    page.fill("#id_prompt", "What is 2 plus 3?")
    page.click("#battle-form button.primary")
    page.wait_for_selector("#battle-replies[hx-trigger]")  # queued: the page polls
    page.wait_for_selector("#vote-form", timeout=240_000)
    battle = Battle.objects.get()
    assert [reply.status for reply in battle.replies] == [Status.SUCCEEDED] * 2
    for side, reply in zip("ab", battle.replies, strict=True):
        # Shown as markdown ("+ x" is a list item): compare letters and digits only.
        shown = page.inner_text(f".pane[data-side={side}]")
        assert letters(reply.reply) in letters(shown)
        if not reply.reply:  # the seed is drawn per battle: the model may stop at once
            assert "an empty reply" in shown
    html = page.content()
    api = page.request.get(f"/api/battles/{battle.pk}", headers=bearer(annotator))
    assert api.ok and api.json()["ready"]
    for name in NAMES:
        assert name not in html and name not in api.text()
    shot(page, "live-battle", full_page=True)

    page.keyboard.press("Shift+Digit2")  # "clearly": optional here, kept when given
    page.keyboard.press("Digit1")  # A is better: the key casts the vote
    page.wait_for_selector("#battle-result")
    result = page.inner_text("#battle-result")
    assert f"Model A was {battle.reply_a.checkpoint.name}" in result
    assert f"model B was {battle.reply_b.checkpoint.name}" in result

    board = page.request.get(
        f"/api/projects/{arena.project_id}/leaderboard", headers=bearer(reviewer)
    ).json()
    assert board["battles"] == 1
    assert {row["model"] for row in board["rows"]} == set(NAMES)
    assert PairwiseJudgement.objects.get().strength == "clear"
    assert selectors.arena_battles(project=arena.project) == [
        (battle.reply_a.checkpoint.name, battle.reply_b.checkpoint.name, "model_a")
    ]
