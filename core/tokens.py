"""Personal API tokens: created and revoked by their owner, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets
from functools import cache

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.utils import timezone

from core import rows
from core.auth import user_with_roles, user_with_roles_sql
from core.models import ApiToken
from core.text import clean_text

TOKEN_PREFIX = "vdt_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """Returns the row and the token itself, which is never retrievable again."""
    name = clean_text(name, field="name").strip()[:100]
    if user.api_tokens.filter(name=name, revoked_at__isnull=True).exists():
        raise ValidationError({"name": "You already have an active token with this name."})
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=key[:10], key_hash=_digest(key))
    return token, key


def token_revoke(*, user: AbstractBaseUser, token_id: int) -> None:
    revoked = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if not revoked:
        raise ValidationError("No such active token.")


def token_authenticate(key: str) -> AbstractBaseUser | None:
    """The active user holding this unrevoked token, their roles loaded: one query, since every
    API request runs it (core/auth.py reads a session's user the same way)."""
    if not key or not key.startswith(TOKEN_PREFIX):
        return None
    found = rows.fetch(_token_sql(), [_digest(key)])
    if not found:
        return None
    user = user_with_roles(found)
    token = rows.instance(ApiToken, found[0][-rows.width(ApiToken) :])
    # Coarse last-use stamp: one write per token per minute at most.
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return user


@cache
def _token_sql() -> str:
    user_pk = get_user_model()._meta.pk.column
    return user_with_roles_sql(
        join=f"JOIN {ApiToken._meta.db_table} t ON t.user_id = u.{user_pk}",
        also=rows.columns(ApiToken, "t"),
        where="t.key_hash = %s AND t.revoked_at IS NULL AND u.is_active",
    )
