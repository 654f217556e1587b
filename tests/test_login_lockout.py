"""Guessing passwords is throttled: per account and per address (django-axes, in the database),
password-reset requests too; the lockout is a clear page, and API tokens are unaffected."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core import mail
from django.core.cache import cache
from django.test import Client

from core.tokens import token_create
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
LIMIT = settings.AXES_FAILURE_LIMIT


def sign_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def fail(client: Client, username: str, times: int, address: str = "10.0.0.1") -> None:
    for _ in range(times):
        assert sign_in(client, username, "wrong", address).status_code in (200, 429)


def test_the_right_password_is_refused_after_too_many_wrong_ones(client, annotator):
    fail(client, "ann", LIMIT)
    response = sign_in(client, "ann", "pw")
    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed sign-ins" in page
    assert f"locked for {round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)} minutes" in page
    assert "_auth_user_id" not in client.session


def test_fewer_wrong_passwords_than_the_limit_still_let_the_owner_in(client, annotator):
    fail(client, "ann", LIMIT - 1)
    assert sign_in(client, "ann", "pw").status_code == 302


def test_an_account_is_locked_whichever_addresses_the_guesses_come_from(client, annotator):
    for i in range(LIMIT):
        fail(client, "ann", 1, address=f"10.0.1.{i}")
    assert sign_in(Client(), "ann", "pw", address="10.0.2.1").status_code == 429


def test_an_address_is_locked_whichever_accounts_it_tries(client, annotator, roles):
    for i in range(LIMIT):
        fail(client, f"someone{i}", 1)
    assert sign_in(client, "ann", "pw").status_code == 429  # same address, other account
    assert sign_in(Client(), "ann", "pw", address="10.9.9.9").status_code == 302


def test_a_forwarded_for_header_is_ignored_unless_behind_a_proxy(client, annotator):
    for i in range(LIMIT):  # the attacker rotates a header it makes up
        client.post(
            LOGIN, {"username": f"x{i}", "password": "no"}, HTTP_X_FORWARDED_FOR=f"1.2.3.{i}"
        )
    assert sign_in(client, "ann", "pw", address="127.0.0.1").status_code == 429


def test_behind_a_proxy_the_address_it_appended_is_the_one_counted(settings, client, annotator):
    settings.BEHIND_PROXY = True
    for i in range(LIMIT):  # the client forges the left part; the proxy appends the real one
        client.post(
            LOGIN, {"username": f"x{i}", "password": "no"},
            HTTP_X_FORWARDED_FOR=f"1.2.3.{i}, 10.5.5.5", REMOTE_ADDR="10.0.0.254",
        )  # fmt: skip
    other = Client().post(
        LOGIN, {"username": "ann", "password": "pw"}, HTTP_X_FORWARDED_FOR="10.6.6.6",
        REMOTE_ADDR="10.0.0.254",
    )  # fmt: skip
    assert other.status_code == 302  # another client behind the same proxy is not locked
    locked = client.post(
        LOGIN, {"username": "ann", "password": "pw"}, HTTP_X_FORWARDED_FOR="10.5.5.5",
        REMOTE_ADDR="10.0.0.254",
    )  # fmt: skip
    assert locked.status_code == 429


def test_the_admin_login_is_locked_too(client, admin_user):
    for _ in range(LIMIT):
        client.post("/admin/login/", {"username": "boss", "password": "no"}, REMOTE_ADDR="10.0.0.7")
    response = client.post(
        "/admin/login/", {"username": "boss", "password": "pw"}, REMOTE_ADDR="10.0.0.7"
    )
    assert response.status_code == 429


def test_api_tokens_keep_working_from_a_locked_out_address(client, annotator):
    _, key = token_create(user=annotator, name="ci")
    fail(client, "ann", LIMIT, address="127.0.0.1")
    assert sign_in(client, "ann", "pw", address="127.0.0.1").status_code == 429
    response = client.get("/api/projects", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


@pytest.fixture
def empty_cache():
    cache.clear()
    yield
    cache.clear()


def test_password_reset_requests_are_throttled_per_address(client, roles, empty_cache):
    UserFactory(username="mail", email="mail@example.com")
    for i in range(settings.PASSWORD_RESET_LIMIT):
        response = client.post("/accounts/password_reset/", {"email": f"u{i}@example.com"})
        assert response.status_code == 302
    response = client.post("/accounts/password_reset/", {"email": "mail@example.com"})
    assert response.status_code == 429
    assert "Too many password reset requests" in response.content.decode()
    assert len(mail.outbox) == 0


def test_password_reset_requests_are_throttled_per_email_address(client, roles, empty_cache):
    UserFactory(username="mail", email="mail@example.com")
    for i in range(settings.PASSWORD_RESET_LIMIT):
        address = f"10.3.0.{i}"
        response = client.post(
            "/accounts/password_reset/", {"email": "Mail@example.com"}, REMOTE_ADDR=address
        )
        assert response.status_code == 302
    assert len(mail.outbox) == settings.PASSWORD_RESET_LIMIT
    response = client.post(
        "/accounts/password_reset/", {"email": "mail@example.com"}, REMOTE_ADDR="10.3.1.1"
    )
    assert response.status_code == 429
    assert len(mail.outbox) == settings.PASSWORD_RESET_LIMIT
