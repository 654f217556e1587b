"""The HTTP API object: one NinjaAPI and one error shape for every failure. Each app adds its own
router (config/api.py mounts them), using ERRORS for its documented error responses and `lookup`
for ids named in a request body.

Errors always look like ``{"error": {"code": "...", "message": "...", "details": ...}}``.
Authentication: ``Authorization: Bearer vdt_…`` (personal tokens made on /account/tokens/), or the
browser session (with its CSRF token) for the interactive docs at /api/docs.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from django.core.exceptions import (
    PermissionDenied,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
    ValidationError,
)
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as SchemaValidationError
from ninja.pagination import LimitOffsetPagination
from ninja.parser import Parser
from ninja.security import HttpBearer

from core.api_auth import session_auth
from core.errors import NotYourTask, TaskUnavailable
from core.text import lone_surrogate, refuse_lone_surrogates_in
from core.tokens import token_authenticate


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = token_authenticate(token)
        if user is not None:
            request.user = user
        return user


class UnreadableBody(ValueError):
    """A request body that is not one JSON object of text (the API answers 422)."""


# A JSON string spells a lone surrogate only as an escape, so bodies without one are not walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class ObjectParser(Parser):
    """Every body the API takes is a JSON object; anything else is refused before a schema sees
    it (ninja would read `null` or `[]` as "no fields given" and apply the defaults). Form
    fields, query strings and file names must be text, as on the pages (config.middleware)."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            data = json.loads(request.body)
        except RecursionError:
            raise UnreadableBody("The body is nested too deeply to read.") from None
        except UnicodeDecodeError:
            raise UnreadableBody("The body is not UTF-8 text.") from None
        except ValueError as exc:
            raise UnreadableBody(f"The body is not JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise UnreadableBody("The body must be a JSON object.")
        if _SURROGATE_ESCAPE.search(request.body) and _has_lone_surrogate(data):
            raise UnreadableBody(
                "The body holds an unpaired surrogate (\\ud800-\\udfff): not text."
            )
        return data

    def parse_querydict(self, data, list_fields: list[str], request: HttpRequest):
        refuse_lone_surrogates_in(data)  # a ValidationError: 422 (on_validation_error)
        return super().parse_querydict(data, list_fields, request)


def _has_lone_surrogate(data: Any) -> bool:
    """In any key or string of decoded JSON; a loop, not recursion: JSON may nest deeply."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str) and lone_surrogate(value):
            return True
        if isinstance(value, dict):
            stack += value.keys()
            stack += value.values()
        elif isinstance(value, list):
            stack += value
    return False


api = NinjaAPI(
    title="Veredicto API",
    version="1",
    description="Projects, imports, items, judgements and dataset snapshots.",
    auth=[TokenAuth(), session_auth],
    urls_namespace="api",
    parser=ObjectParser(),
)


class ErrorBody(Schema):
    code: str
    message: str
    details: Any = None


class Error(Schema):
    error: ErrorBody


# The documented error responses of an endpoint: `response={200: Out, **ERRORS}`. 413: a body
# over DATA_UPLOAD_MAX_MEMORY_SIZE (files aside); 422: one that is not a JSON object, or that
# does not match the schema.
ERRORS = {401: Error, 403: Error, 404: Error, 409: Error, 413: Error, 422: Error}


# Page windows every database here can serve: an OFFSET past bigint is a database error.
MAX_LIMIT, MAX_OFFSET = 1000, 2**31 - 1
# A row id in a query string: past bigint, SQLite cannot even bind it (a 500, not "no rows").
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class Pagination(LimitOffsetPagination):
    """ninja's limit/offset pagination, bounded in the schema (an absurd window is a 422)."""

    class Input(Schema):
        limit: int = Field(100, ge=1, le=MAX_LIMIT)
        offset: int = Field(0, ge=0, le=MAX_OFFSET)


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
    # ninja turns whatever the parser raised into a 400 "Cannot parse request body".
    if isinstance(exc.__cause__, UnreadableBody):
        return error(request, 422, "invalid_json", str(exc.__cause__))
    return error(request, exc.status_code, "error", str(exc))


def on_too_large(request, exc: Exception) -> HttpResponse:
    return error(request, 413, "too_large", f"The request is too large: {exc}")


for _too_large in (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent):
    api.exception_handler(_too_large)(on_too_large)
