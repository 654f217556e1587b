"""Idempotency keys for the API's writes, as the IETF draft "The Idempotency-Key HTTP Header
Field" and Stripe define them. No maintained package fits django-ninja: the Django ones are
DRF middleware that guard concurrent requests with a lock in the web process, which two
gunicorn workers do not share.

A client sends ``Idempotency-Key: <a unique string, a UUID say>`` with a POST and may then send
the same request again (after a timeout, a lost response, a 5xx) without creating a second row:

- same user, same key, same method, path and body: the first response again, with its status,
  marked ``Idempotent-Replayed: true``; the endpoint does not run.
- same user and key, another endpoint or body: 422 ``idempotency_key_reused``.
- sent while the first is still running: it waits for the first (the unique index makes
  PostgreSQL wait) and then gets its response.
- only a 2xx response is kept: after an error nothing is, and the same key runs again.
- keys are forgotten after IDEMPOTENCY_KEY_HOURS (24); the sweep deletes older rows.

How: the request runs in one transaction. After authentication, and before the endpoint, the
key's row is inserted; the endpoint's writes, the row and, once serialised, the response commit
together. So a committed key always has its response, and of two requests with one key the
second's insert waits on the unique constraint and, once the first commits, finds its row.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja.decorators import decorate_view
from ninja.utils import contribute_operation_callback

from core import rows
from core.api import error
from core.models import IdempotencyKey

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, as a header carries it

OPENAPI_PARAMETER = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Send the same key again to retry this request safely: the first "
    "response is replayed and nothing is created twice (kept 24 hours).",
}


# --- the service -------------------------------------------------------------------------------


def _expiry(now: datetime) -> datetime:
    return now - timedelta(hours=settings.IDEMPOTENCY_KEY_HOURS)


def idempotency_claim(
    *, user: AbstractBaseUser, key: str, fingerprint: str
) -> tuple[IdempotencyKey, bool]:
    """(row, True) when this request holds the key now, in the caller's transaction; else the
    committed row of the request that held it first, and False. A request still running with
    the key makes this wait for its end.

    One statement, written out since every keyed write runs it (core/rows.py): an INSERT that
    takes over the key's row only when that has expired, as deleting it first would."""
    now = timezone.now()
    times = [connection.ops.adapt_datetimefield_value(t) for t in (now, _expiry(now))]
    while True:
        params = [user.pk, key, fingerprint, *times]
        taken = rows.fetch(_claim_sql(), params)
        if taken:
            row = IdempotencyKey(
                pk=taken[0][0], user=user, key=key, fingerprint=fingerprint, created_at=now
            )
            row._state.adding = False
            return row, True
        earlier = IdempotencyKey.objects.filter(user=user, key=key).first()
        if earlier is not None:  # else it was forgotten in between: claim it again
            return earlier, False


@cache
def _claim_sql() -> str:
    table, key = IdempotencyKey._meta.db_table, connection.ops.quote_name("key")
    # ON CONFLICT waits for a transaction that inserted the key and has not ended yet, then
    # looks at its row again: a committed one is kept (no row returned), a rolled-back one is
    # gone and this insert takes the key.
    return f"""
        INSERT INTO {table} (user_id, {key}, fingerprint, status_code, content_type, body,
                             created_at)
        VALUES (%s, %s, %s, NULL, '', '', %s)
        ON CONFLICT (user_id, {key}) DO UPDATE SET
          fingerprint = excluded.fingerprint, status_code = NULL, content_type = '', body = '',
          created_at = excluded.created_at
        WHERE {table}.created_at < %s
        RETURNING id
    """


def idempotency_record(*, row: IdempotencyKey, response: HttpResponse) -> None:
    row.status_code = response.status_code
    row.content_type = response.get("Content-Type", "")
    row.body = response.content.decode()
    sql = f"""
        UPDATE {IdempotencyKey._meta.db_table} SET status_code = %s, content_type = %s, body = %s
        WHERE id = %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [row.status_code, row.content_type, row.body, row.pk])


def idempotency_keys_purge(*, now: datetime | None = None) -> int:
    """Forget keys past their time (the scheduled sweep calls it)."""
    expired = IdempotencyKey.objects.filter(created_at__lt=_expiry(now or timezone.now()))
    return expired.delete()[0]


def request_fingerprint(request: HttpRequest) -> str:
    """What makes two requests the same one: method, path, query and body. A JSON body counts
    by its content (key order and spacing aside); a form by its fields and each file's name and
    bytes, since a multipart body's boundary differs each time a client encodes it."""
    digest = hashlib.sha256(f"{request.method} {request.get_full_path()}\n".encode())
    if request.content_type == "multipart/form-data":
        fields = sorted((name, request.POST.getlist(name)) for name in request.POST)
        digest.update(json.dumps(fields).encode())
        for name in sorted(request.FILES):
            for upload in request.FILES.getlist(name):
                digest.update(f"\n{name}={upload.name}\n".encode())
                for chunk in upload.chunks():  # from the start; the endpoint reads it again
                    digest.update(chunk)
        return digest.hexdigest()
    try:
        body = json.dumps(json.loads(request.body), sort_keys=True, separators=(",", ":"))
        digest.update(body.encode())
    except ValueError:
        digest.update(request.body)
    return digest.hexdigest()


# --- the API decorator -------------------------------------------------------------------------


@dataclass
class _Claim:
    key: str
    row: IdempotencyKey | None = None  # set once this request holds the key


def idempotent(func: Callable[..., Any]) -> Callable[..., Any]:
    """Honour an Idempotency-Key on an API operation: put it under `@router.post(...)`."""

    @wraps(func)
    def claimed(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # Runs after authentication, with the body parsed: the user and the request are known.
        claim: _Claim | None = getattr(request, "_idempotency", None)
        if claim is None:
            return func(request, *args, **kwargs)
        fingerprint = request_fingerprint(request)
        row, holder = idempotency_claim(user=request.user, key=claim.key, fingerprint=fingerprint)
        if not holder:
            return _replay(request, row, fingerprint)
        claim.row = row
        return func(request, *args, **kwargs)

    def contribute(operation) -> None:
        extra = dict(operation.openapi_extra or {})
        extra["parameters"] = [*extra.get("parameters", []), OPENAPI_PARAMETER]
        operation.openapi_extra = extra

    contribute_operation_callback(claimed, contribute)
    return decorate_view(_in_one_transaction)(claimed)


def _in_one_transaction(run: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Around the whole operation (authentication, endpoint, serialisation): the response is
    only known here, and it must commit with the endpoint's writes."""

    @wraps(run)
    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        key = request.headers.get(HEADER)
        if key is None:
            return run(request, *args, **kwargs)
        if not _VALID_KEY.fullmatch(key):
            return error(
                request,
                422,
                "invalid_idempotency_key",
                f"{HEADER} must be 1 to 255 printable ASCII characters.",
            )
        claim = request._idempotency = _Claim(key)  # type: ignore[attr-defined]
        with transaction.atomic():
            response = run(request, *args, **kwargs)
            if claim.row is not None:
                if 200 <= response.status_code < 300:
                    idempotency_record(row=claim.row, response=response)
                else:  # nothing kept, the key included: a retry runs again
                    transaction.set_rollback(True)
        return response

    return view


def _replay(request: HttpRequest, row: IdempotencyKey, fingerprint: str) -> HttpResponse:
    if row.fingerprint != fingerprint:
        return error(
            request,
            422,
            "idempotency_key_reused",
            f"This {HEADER} was sent with another request; use a new key for a new request.",
        )
    response = HttpResponse(row.body, status=row.status_code, content_type=row.content_type)
    response[REPLAYED_HEADER] = "true"
    return response
