"""The API under hostile or half-authenticated requests: anonymous writes answer 401 in the
API's error shape (not 403 "CSRF check Failed"), a signed-in browser session still needs its
CSRF token, and reviewers reach snapshots through the API exactly as through the UI."""

from __future__ import annotations

import pytest
from django.test import Client

from core.tokens import token_create
from feedback import services
from tests.factories import make_item

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser() -> Client:
    """A client that enforces CSRF like a real browser request does (Django's test client
    skips the check unless asked)."""
    return Client(enforce_csrf_checks=True)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert {"code", "message", "details"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize(
    "path", ["/api/projects/1/next", "/api/assignments/1/skip", "/api/jobs", "/api/evals/runs"]
)
def test_anonymous_posts_answer_401_in_the_api_error_shape(browser, path):
    error = assert_error(
        browser.post(path, content_type="application/json"), 401, "unauthenticated"
    )
    assert "Bearer" in error["message"]


def test_a_post_with_a_bad_token_answers_401(browser, project):
    response = browser.post(
        f"/api/projects/{project.pk}/next", headers={"Authorization": "Bearer vdt_not-a-token"}
    )
    assert_error(response, 401, "unauthenticated")


def test_a_token_post_needs_no_csrf_token(browser, annotator, pairwise_item):
    _, key = token_create(user=annotator, name="script")
    response = browser.post(
        f"/api/projects/{pairwise_item.project_id}/next", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200


def test_a_signed_in_session_post_without_its_csrf_token_is_refused(browser, annotator, project):
    browser.force_login(annotator)
    error = assert_error(browser.post(f"/api/projects/{project.pk}/next"), 403, "forbidden")
    assert "CSRF" in error["message"]


def test_a_signed_in_session_post_with_its_csrf_token_works(browser, annotator, pairwise_item):
    browser.force_login(annotator)
    browser.get("/")  # the page sets the CSRF cookie, as for the docs at /api/docs
    token = browser.cookies["csrftoken"].value
    response = browser.post(
        f"/api/projects/{pairwise_item.project_id}/next", headers={"X-CSRFToken": token}
    )
    assert response.status_code == 200


# --- snapshots: the same roles in the API as in the UI ------------------------------------------


@pytest.fixture
def snapshot(settings, tmp_path, project, admin_user):
    settings.MEDIA_ROOT = tmp_path
    make_item(project)
    requested = services.snapshot_request(
        project=project, kind="prompts", name="s", created_by=admin_user
    )
    return services.snapshot_build(snapshot=requested)


def pages(snapshot) -> list[tuple[str, str]]:
    """(UI page, API endpoint) pairs that show the same thing."""
    project = snapshot.project_id
    return [
        (f"/projects/{project}/data/", f"/api/projects/{project}/snapshots"),
        (f"/snapshots/{snapshot.pk}/", f"/api/snapshots/{snapshot.pk}"),
        (
            f"/snapshots/{snapshot.pk}/files/manifest.json",
            f"/api/snapshots/{snapshot.pk}/files/manifest.json",
        ),
    ]


@pytest.mark.parametrize("user_fixture", ["reviewer", "annotator", "admin_user"])
def test_snapshot_access_is_the_same_through_the_api_and_the_ui(
    client, request, user_fixture, snapshot
):
    user = request.getfixturevalue(user_fixture)
    _, key = token_create(user=user, name="parity")
    client.force_login(user)
    for page, endpoint in pages(snapshot):
        ui = client.get(page).status_code
        api = Client().get(endpoint, headers={"Authorization": f"Bearer {key}"}).status_code
        assert (ui, api) in ((200, 200), (403, 403)), f"{user}: {page} {ui}, {endpoint} {api}"
    expected = 200 if user_fixture == "admin_user" else 403
    assert client.get(pages(snapshot)[1][0]).status_code == expected
