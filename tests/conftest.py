import os

import pytest
from django.contrib.auth.models import Group

from core.roles import Role
from feedback.models import TaskKind
from tests.factories import ProjectFactory, UserFactory, make_item


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The embedded tiny model, pretrained for a handful of steps: real weights and tokenizer,
    built once per test session and shared by every test package."""
    from loop.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_tiny_model(str(path), pretrain_steps=3)
    return str(path)


@pytest.fixture
def roles(db):
    for role in Role:
        Group.objects.get_or_create(name=role.value)


@pytest.fixture
def annotator(roles):
    return UserFactory(username="ann", roles=[Role.ANNOTATOR])


@pytest.fixture
def other_annotator(roles):
    return UserFactory(username="ann2", roles=[Role.ANNOTATOR])


@pytest.fixture
def reviewer(roles):
    return UserFactory(username="rev", roles=[Role.REVIEWER])


@pytest.fixture
def admin_user(roles):
    return UserFactory(username="boss", roles=[Role.ADMIN], is_staff=True, is_superuser=True)


@pytest.fixture
def nobody(roles):
    """Logged in, but holds no role."""
    return UserFactory(username="nobody")


@pytest.fixture
def project(db):
    return ProjectFactory(
        label_schema=[
            {"name": "helpfulness", "kind": "likert", "min": 1, "max": 7, "label": "Helpful"},
            {"name": "unsafe", "kind": "flag", "label": "Unsafe"},
        ]
    )


@pytest.fixture
def pairwise_item(project):
    return make_item(project, TaskKind.PAIRWISE)


@pytest.fixture
def ranking_item(project):
    return make_item(project, TaskKind.RANKING)


@pytest.fixture
def demo_item(project):
    return make_item(project, TaskKind.DEMONSTRATION)


def pytest_report_header(config):
    from django.conf import settings

    db = settings.DATABASES["default"]
    return [f"database: {db['ENGINE'].rsplit('.', 1)[-1]}  broker: {settings.CELERY_BROKER_URL}"]


# Playwright's sync API runs an event loop in this thread; the live server's ORM work happens in
# its own thread, but Django's async guard cannot tell.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    from tests.playwright_support import CHROMIUM_ARGS, chromium_path

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    # Whatever the Content-Security-Policy refused (an inline script or style, an eval) is a
    # page that works in tests only by luck: it fails the test.
    refused: list[str] = []
    page.on(
        "console",
        lambda m: "Content Security Policy" in m.text and refused.append(f"{page.url}: {m.text}"),
    )
    yield page
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"
