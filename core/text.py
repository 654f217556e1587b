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
