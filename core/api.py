"""The HTTP API object: one NinjaAPI and one error shape for every failure. Each app adds its own
router (config/api.py mounts them), using ERRORS for its documented error responses and `lookup`
for ids named in a request body.

Errors always look like ``{"error": {"code": "...", "message": "...", "details": ...}}``.
Authentication: ``Authorization: Bearer vdt_…`` (personal tokens made on /account/tokens/), or the
browser session (with its CSRF token) for the interactive docs at /api/docs.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as SchemaValidationError
from ninja.security import HttpBearer

from core.api_auth import session_auth
from core.errors import NotYourTask, TaskUnavailable
from core.tokens import token_authenticate


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = token_authenticate(token)
        if user is not None:
            request.user = user
        return user


api = NinjaAPI(
    title="Veredicto API",
    version="1",
    description="Projects, imports, items, judgements and dataset snapshots.",
    auth=[TokenAuth(), session_auth],
    urls_namespace="api",
)


class ErrorBody(Schema):
    code: str
    message: str
    details: Any = None


class Error(Schema):
    error: ErrorBody


# The documented error responses of an endpoint: `response={200: Out, **ERRORS}`.
ERRORS = {401: Error, 403: Error, 404: Error, 409: Error, 422: Error}


def lookup(model, pk: int | None, field: str, missing: dict[str, str], what: str = ""):
    """The row with this id, or None; an unknown id is noted in ``missing`` under the field's
    name, so that a request naming several rows is refused once, naming each one it lacks."""
    if pk is None:
        return None
    found = model.objects.filter(pk=pk).first()
    if found is None:
        missing[field] = f"No {what or model._meta.verbose_name} #{pk}."
    return found


def error(request: HttpRequest, status: int, code: str, message: str, details=None):
    body = {"error": {"code": code, "message": message, "details": details}}
    return api.create_response(request, body, status=status)


@api.exception_handler(SchemaValidationError)
def on_schema_error(request, exc: SchemaValidationError) -> HttpResponse:
    return error(
        request, 422, "invalid_request", "The request does not match the schema.", exc.errors
    )


@api.exception_handler(ValidationError)
def on_validation_error(request, exc: ValidationError) -> HttpResponse:
    details = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
    return error(request, 422, "invalid", "; ".join(exc.messages), details)


@api.exception_handler(TaskUnavailable)
def on_task_unavailable(request, exc: TaskUnavailable) -> HttpResponse:
    return error(request, 409, getattr(exc, "code", None) or "unavailable", exc.messages[0])


@api.exception_handler(NotYourTask)
def on_not_yours(request, exc: NotYourTask) -> HttpResponse:
    return error(request, 404, "not_found", str(exc) or "Not found.")


@api.exception_handler(PermissionDenied)
def on_forbidden(request, exc: PermissionDenied) -> HttpResponse:
    return error(request, 403, "forbidden", str(exc) or "Your role does not allow this.")


@api.exception_handler(Http404)
def on_not_found(request, exc: Http404) -> HttpResponse:
    return error(request, 404, "not_found", "Not found.")


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request, exc: AuthenticationError) -> HttpResponse:
    return error(request, 401, "unauthenticated", "Send a valid token: Authorization: Bearer vdt_…")


@api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError) -> HttpResponse:
    return error(request, exc.status_code, "error", str(exc))
