"""Deploy hardening: `check --deploy` is clean under production settings, test mode cannot be
switched on in production, proxy headers are believed only behind a proxy, HSTS and a strict
Content-Security-Policy are sent, and no template needs inline script or style."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "templates"


def production(tmp_path: Path, code: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter on config.settings with a production-like environment
    (nothing inherited from the test run but PATH)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "veredicto.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


SETTINGS = """
import django, json; django.setup(); from django.conf import settings as s
print(json.dumps({k: getattr(s, k) for k in ("DEBUG", "TESTING", "SECURE_PROXY_SSL_HEADER",
    "SECURE_HSTS_SECONDS", "PASSWORD_HASHERS")}))
"""


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    code = "import sys; from django.core.management import execute_from_command_line as run; "
    code += "run(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])"
    done = production(tmp_path, code)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues (0 silenced)" in done.stdout


def test_production_settings_hash_with_pbkdf2_and_trust_no_proxy_header(tmp_path):
    done = production(tmp_path, SETTINGS)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["DEBUG"] is False and found["TESTING"] is False
    assert found["SECURE_PROXY_SSL_HEADER"] is None
    assert found["SECURE_HSTS_SECONDS"] >= 365 * 24 * 3600
    assert "PBKDF2" in found["PASSWORD_HASHERS"][0]


def test_behind_a_proxy_its_forwarded_proto_header_is_believed(tmp_path):
    done = production(tmp_path, SETTINGS, BEHIND_PROXY="1")
    assert done.returncode == 0, done.stderr
    header = json.loads(done.stdout.splitlines()[-1])["SECURE_PROXY_SSL_HEADER"]
    assert header == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_test_mode_is_refused_with_a_clear_error_when_debug_is_off(tmp_path):
    done = production(tmp_path, SETTINGS, VEREDICTO_TESTING="1")
    assert done.returncode != 0
    assert "VEREDICTO_TESTING is set but DEBUG is off" in done.stderr


def test_test_mode_from_the_environment_still_works_with_debug_on(tmp_path):
    done = production(tmp_path, SETTINGS, VEREDICTO_TESTING="1", DEBUG="1", SECRET_KEY="")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["TESTING"] is True


@pytest.mark.django_db
def test_a_client_sent_forwarded_proto_does_not_make_a_request_secure(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    response = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301
    assert response["Location"].startswith("https://")


@pytest.mark.django_db
def test_https_responses_carry_hsts(client, settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    response = client.get("/accounts/login/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


@pytest.mark.django_db
def test_pages_send_a_strict_content_security_policy(client, annotator):
    client.force_login(annotator)
    policy = client.get("/")["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy


INLINE = {
    "inline script": re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>"),
    "style element": re.compile(r"<style\b"),
    "style attribute": re.compile(r"\sstyle=", re.I),
    "event handler": re.compile(r"\son[a-z]+\s*=", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
    "htmx inline handler": re.compile(r"\shx-on[:-]", re.I),
}


@pytest.mark.parametrize("template", sorted(TEMPLATES.rglob("*.html")), ids=lambda p: p.name)
def test_no_template_needs_what_the_policy_refuses(template):
    text = template.read_text()
    found = [what for what, pattern in INLINE.items() if pattern.search(text)]
    assert not found, f"{template.relative_to(REPO)}: {found}"
