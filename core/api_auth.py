"""The API's browser-session authentication (for the interactive docs at /api/docs).

django-ninja's `django_auth` checks CSRF before it looks at the session, so a POST by nobody (or
with a bad token, which falls through to it) was refused as 403 "CSRF check Failed". Without a
signed-in session there is nothing for CSRF to protect: such a request is simply not
authenticated, and the API answers 401 in its error shape. A signed-in session still needs its
CSRF token."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import SessionAuth


class SignedInSessionAuth(SessionAuth):
    def __call__(self, request: HttpRequest) -> Any | None:
        if not request.user.is_authenticated:
            return None
        try:
            return super().__call__(request)
        except HttpError as exc:  # ninja's CSRF refusal: say what is missing
            raise PermissionDenied(
                "CSRF check failed: a signed-in browser session must send its CSRF token "
                "(X-CSRFToken header); scripts should use a token (Authorization: Bearer)."
            ) from exc


session_auth = SignedInSessionAuth()
