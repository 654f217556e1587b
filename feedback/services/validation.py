"""Checks shared by every way data enters: forms, the API, imports and management commands."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.core.exceptions import ValidationError

from core.text import check_storable, clean_text
from feedback.validators import normalise_label_schema

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 64

__all__ = ["check_storable", "clean_label_schema", "clean_labels", "clean_messages", "clean_text"]


def clean_messages(messages: Any, system: Any = "") -> tuple[str, list[dict[str, str]]]:
    """Normalise a conversation: a leading system message moves to `system`, roles are checked,
    and it must end with a user turn because the next turn is what annotators judge."""
    if not isinstance(messages, list) or not messages:
        raise ValidationError({"messages": "Must be a non-empty list of messages."})
    if len(messages) > MAX_MESSAGES:
        raise ValidationError({"messages": f"At most {MAX_MESSAGES} messages."})
    system = clean_text(system, field="system", allow_blank=True)
    cleaned: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ValidationError(
                {"messages": f"Message {index}: must be {{role, content}} and nothing else."}
            )
        role = message.get("role")
        if role not in ROLES:
            raise ValidationError(
                {"messages": f"Message {index}: unknown role {role!r} (use {', '.join(ROLES)})."}
            )
        content = clean_text(message.get("content"), field=f"messages[{index}].content")
        if role == "system":
            if index != 0 or system:
                raise ValidationError({"messages": "Only one system message, and it comes first."})
            system = content
            continue
        cleaned.append({"role": role, "content": content})
    if not cleaned or cleaned[-1]["role"] != "user":
        raise ValidationError({"messages": "The conversation must end with a user message."})
    return system, cleaned


def clean_labels(
    schema: list[dict], labels: Any, *, reply_ids: Collection[int] = ()
) -> dict[str, Any]:
    """Answers to a project's label schema: Likert integers within range (per reply, a
    `{completion id: n}` object over `reply_ids`), flags as booleans, free text as text.
    A per-reply scale on an item without replies (a demonstration) is not asked."""
    if labels in (None, ""):
        labels = {}
    if not isinstance(labels, dict):
        raise ValidationError({"labels": "Must be an object of label answers."})
    by_name = {spec["name"]: spec for spec in schema}
    unknown = set(labels) - set(by_name)
    if unknown:
        raise ValidationError({"labels": f"Unknown labels: {', '.join(sorted(unknown))}."})
    cleaned: dict[str, Any] = {}
    for name, spec in by_name.items():
        value = labels.get(name)
        if spec["kind"] == "flag":
            cleaned[name] = value in (True, "true", "on", "1", 1)
        elif spec.get("scope") == "reply":
            if reply_ids:
                per_reply = _likert_per_reply(spec, value, reply_ids)
                if per_reply:
                    cleaned[name] = per_reply
        elif value in (None, ""):
            if spec.get("required"):
                raise ValidationError({"labels": f"{spec.get('label') or name} is required."})
        elif spec["kind"] == "text":
            cleaned[name] = clean_text(value, field=f"labels.{name}")
        else:
            cleaned[name] = _likert_value(spec, value)
    return cleaned


def _likert_value(spec: dict, value: Any, where: str = "") -> int:
    name = spec["name"] + where
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError({"labels": f"{name} must be a whole number."}) from None
    if not spec["min"] <= number <= spec["max"]:
        raise ValidationError(
            {"labels": f"{name} must be between {spec['min']} and {spec['max']}."}
        )
    return number


def _likert_per_reply(spec: dict, value: Any, reply_ids: Collection[int]) -> dict[str, int]:
    """Keys are completion ids as strings, as JSON stores them."""
    if value in (None, ""):
        value = {}
    if not isinstance(value, dict):
        raise ValidationError({"labels": f"{spec['name']} is one answer per reply, by reply id."})
    wanted = {str(reply_id) for reply_id in reply_ids}
    strange = ", ".join(sorted({str(key) for key in value} - wanted))
    if strange:
        raise ValidationError(
            {"labels": f"{spec['name']}: {strange} are not replies of this task."}
        )
    answers = {
        str(key): _likert_value(spec, number, f" (reply {key})")
        for key, number in value.items()
        if number not in (None, "")
    }
    if spec.get("required") and set(answers) != wanted:
        raise ValidationError({"labels": f"{spec.get('label') or spec['name']}: rate every reply."})
    return answers


def clean_label_schema(schema: Any) -> list[dict]:
    """The project model's own rule (feedback.validators), for callers outside a model."""
    try:
        return normalise_label_schema(schema)
    except ValidationError as exc:
        raise ValidationError({"label_schema": exc.messages}) from None
