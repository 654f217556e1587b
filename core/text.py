"""Text that users, imports and models write: the checks every way in shares."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError


def clean_text(value: Any, *, field: str = "text", allow_blank: bool = False) -> str:
    """A user- or model-written text: a string, not blank, no NUL, within the length limit."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError({field: "Must be text."}, code="type")
    if "\x00" in value:
        raise ValidationError({field: "Contains a NUL character."}, code="nul")
    limit = settings.VEREDICTO_MAX_TEXT_CHARS
    if len(value) > limit:
        raise ValidationError(
            {field: f"Is {len(value):,} characters long; the limit is {limit:,}."}, code="too_long"
        )
    if not allow_blank and not value.strip():
        raise ValidationError({field: "Must not be empty."}, code="blank")
    return value


def storable_text(text: Any, *, limit: int | None = None) -> str:
    """Model output made fit to store: PostgreSQL refuses NUL in text, and a runaway generation
    should cost its tail (past `limit`, VEREDICTO_MAX_TEXT_CHARS by default), not the whole run."""
    limit = settings.VEREDICTO_MAX_TEXT_CHARS if limit is None else limit
    return str(text).replace("\x00", "")[:limit]
