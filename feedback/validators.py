"""Rules for a project's settings, on the model itself: the Django admin, the app's project form,
the API and the services all refuse the same values with the same messages.

Field validators raise plain messages (Django files them under the field); the services wrap
them as `{field: message}` where they are called outside a model. Codes are our own: a field
replaces the message of an error whose code it knows ("invalid", "required") with its own.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from django.core.exceptions import ValidationError

TASK_KINDS = ("demonstration", "pairwise", "ranking")  # feedback.models.TaskKind's values
LABEL_KINDS = ("likert", "flag", "text")
LIKERT_SCOPES = ("item", "reply")
# A label's name becomes a form field (`label_<name>`) and a key in every exported row.
LABEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,49}")
MAX_LABELS = 20
LIKERT_BOUNDS = (-100, 100)

NO_TASK_KINDS = f"Choose at least one task kind: {', '.join(TASK_KINDS)}."

MIN_OVERLAP, MAX_OVERLAP = 1, 50
# Below a minute a lease expires while its annotator is still reading, and the queue hands the
# item to someone else; then the first answer is refused.
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 60, 7 * 24 * 3600
MAX_GOLD_RATE = 0.5


def normalise_name(value: Any) -> Any:
    """A name as stored: NFC, without surrounding whitespace. "é" typed as one code point or
    as "e" and a combining accent looks the same, so it must be the same name (and a duplicate
    of it); NFC is also what keyboards and most files produce."""
    if not isinstance(value, str):
        return value
    return unicodedata.normalize("NFC", value).strip()


def validate_task_kinds(value: Any) -> None:
    choices = ", ".join(TASK_KINDS)
    if not isinstance(value, list) or not value:
        raise ValidationError(NO_TASK_KINDS, code="no_task_kinds")
    unknown = [kind for kind in value if kind not in TASK_KINDS or not isinstance(kind, str)]
    if unknown:
        named = ", ".join(repr(kind) for kind in unknown)
        raise ValidationError(f"Unknown task kind {named}: choose from {choices}.", code="bad_kind")
    if len(set(value)) != len(value):
        raise ValidationError("Each task kind may appear only once.", code="duplicate_entry")


def validate_label_schema(value: Any) -> None:
    normalise_label_schema(value)


def normalise_label_schema(schema: Any) -> list[dict]:
    """The schema with defaults filled in; raises a message naming the first bad label."""
    if schema in (None, ""):
        return []
    if not isinstance(schema, list):
        raise ValidationError("Must be a list of label definitions.", code="bad_label")
    if len(schema) > MAX_LABELS:
        raise ValidationError(f"At most {MAX_LABELS} labels.", code="bad_label")
    names: set[str] = set()
    return [_normalise_label(spec, names) for spec in schema]


def _normalise_label(spec: Any, names: set[str]) -> dict:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValidationError("Every label needs a name.", code="bad_label")
    name = spec["name"]
    if not LABEL_NAME.fullmatch(name):
        raise ValidationError(
            f"Label name {name[:60]!r}: letters, digits, _ and -, starting with a letter "
            "(at most 50).",
            code="bad_label",
        )
    if name in names:
        raise ValidationError(f"Duplicate label {name!r}.", code="duplicate_entry")
    names.add(name)
    label = spec.get("label") or ""
    if not isinstance(label, str) or len(label) > 200:
        raise ValidationError(
            f"{name}: the shown text is at most 200 characters.", code="bad_label"
        )
    kind = spec.get("kind")
    if kind == "flag":
        return {"name": name, "kind": "flag", "label": label}
    if kind == "text":
        return {"name": name, "kind": "text", "label": label, "required": _flag(spec, "required")}
    if kind == "likert":
        return {"name": name, "kind": "likert", "label": label, **_likert(name, spec)}
    raise ValidationError(
        f"{name}: kind is {', '.join(LABEL_KINDS[:-1])} or {LABEL_KINDS[-1]}.", code="bad_label"
    )


def _likert(name: str, spec: dict) -> dict:
    low, high = spec.get("min", 1), spec.get("max", 5)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (low, high)):
        raise ValidationError(f"{name}: min and max must be whole numbers.", code="bad_label")
    if not low < high:
        raise ValidationError(f"{name}: min ({low}) must be below max ({high}).", code="bad_label")
    if low < LIKERT_BOUNDS[0] or high > LIKERT_BOUNDS[1]:
        raise ValidationError(
            f"{name}: the scale must lie within {LIKERT_BOUNDS[0]} to {LIKERT_BOUNDS[1]}.",
            code="bad_label",
        )
    scope = spec.get("scope", "item")
    if scope not in LIKERT_SCOPES:
        raise ValidationError(
            f"{name}: a Likert scale is per item or per reply, not {scope!r}.", code="bad_label"
        )
    return {"min": low, "max": high, "scope": scope, "required": _flag(spec, "required")}


def _flag(spec: dict, key: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise ValidationError(f"{spec['name']}: {key} is true or false.", code="bad_label")
    return value
