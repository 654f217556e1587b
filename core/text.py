"""Text that users, imports and models write: the checks every way in shares."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.datastructures import MultiValueDict

# U+D800 to U+DFFF: halves of UTF-16 pairs. JSON may write one alone ("\ud800") and a UTF-7
# form may carry one, but it is no character: UTF-8 cannot encode it, so PostgreSQL, the
# response encoder and the sanitiser would all fail on it later.
_SURROGATE = re.compile("[\ud800-\udfff]")
# What draws nothing though it is not whitespace to str.isspace(): control and format
# characters (zero-width space and joiners, word joiner, BOM, bidi marks), and the "blank"
# letters and symbols fonts draw empty (Hangul fillers, Braille blank).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf"})
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def lone_surrogate(value: str) -> str | None:
    """The first unpaired surrogate in `value`, if it has one."""
    # isascii() is O(1) in CPython: the common case pays nothing for the search.
    found = None if value.isascii() else _SURROGATE.search(value)
    return found.group() if found else None


def refuse_lone_surrogates(value: str, *, field: str = "text") -> str:
    if found := lone_surrogate(value):
        raise ValidationError(
            {field: f"Contains an unpaired surrogate (U+{ord(found):04X}): not text."},
            code="surrogate",
        )
    return value


def refuse_lone_surrogates_in(data: MultiValueDict) -> None:
    """Form fields or a query string (QueryDict), or uploads (their file names)."""
    for name, values in data.lists():
        refuse_lone_surrogates(name, field="a field's name")
        for value in values:
            refuse_lone_surrogates(value if isinstance(value, str) else value.name, field=name)


def check_storable(value: str, *, field: str = "text") -> str:
    """A string any database, JSON column and encoder here can hold: no NUL, no lone
    surrogate. For strings that are not prose (names, tags, ids, metadata)."""
    if "\x00" in value:
        raise ValidationError({field: "Contains a NUL character."}, code="nul")
    return refuse_lone_surrogates(value, field=field)


def is_blank(value: str) -> bool:
    """Whether nothing in `value` would be seen: only whitespace and invisible characters."""
    # Returns at the first visible character: for ordinary text, the first or second.
    for ch in value:
        if "!" <= ch <= "~":  # printable ASCII, the usual case, decided without a lookup
            return False
        if not (
            ch.isspace() or ch in _BLANK_GLYPHS or unicodedata.category(ch) in _INVISIBLE_CATEGORIES
        ):
            return False
    return True


def clean_text(value: Any, *, field: str = "text", allow_blank: bool = False) -> str:
    """A user- or model-written text: a string, storable, within the length limit, and (unless
    `allow_blank`) with something visible in it. Returned exactly as written."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError({field: "Must be text."}, code="type")
    check_storable(value, field=field)
    limit = settings.VEREDICTO_MAX_TEXT_CHARS
    if len(value) > limit:
        raise ValidationError(
            {field: f"Is {len(value):,} characters long; the limit is {limit:,}."}, code="too_long"
        )
    if not allow_blank and is_blank(value):
        raise ValidationError({field: "Must not be empty."}, code="blank")
    return value


def storable_text(text: Any, *, limit: int | None = None) -> str:
    """Model output made fit to store: PostgreSQL refuses NUL in text, and a runaway generation
    should cost its tail (past `limit`, VEREDICTO_MAX_TEXT_CHARS by default), not the whole run."""
    limit = settings.VEREDICTO_MAX_TEXT_CHARS if limit is None else limit
    return str(text).replace("\x00", "")[:limit]
