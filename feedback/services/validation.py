"""Checks shared by every way data enters: forms, the API, imports and management commands."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from core.text import clean_text

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 64

__all__ = ["clean_label_schema", "clean_labels", "clean_messages", "clean_text"]


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


def clean_labels(schema: list[dict], labels: Any) -> dict[str, Any]:
    """Answers to a project's label schema: Likert integers within range, flags as booleans."""
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
            continue
        if value in (None, ""):
            if spec.get("required"):
                raise ValidationError({"labels": f"{spec.get('label', name)} is required."})
            continue
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValidationError({"labels": f"{name} must be a whole number."}) from None
        if not spec["min"] <= number <= spec["max"]:
            raise ValidationError(
                {"labels": f"{name} must be between {spec['min']} and {spec['max']}."}
            )
        cleaned[name] = number
    return cleaned


def clean_label_schema(schema: Any) -> list[dict]:
    if schema in (None, ""):
        return []
    if not isinstance(schema, list):
        raise ValidationError({"label_schema": "Must be a list of label definitions."})
    names = set()
    cleaned = []
    for spec in schema:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ValidationError({"label_schema": "Every label needs a name."})
        if spec["name"] in names:
            raise ValidationError({"label_schema": f"Duplicate label {spec['name']!r}."})
        names.add(spec["name"])
        kind = spec.get("kind")
        if kind == "flag":
            cleaned.append({"name": spec["name"], "kind": "flag", "label": spec.get("label", "")})
        elif kind == "likert":
            low, high = spec.get("min", 1), spec.get("max", 5)
            if not (isinstance(low, int) and isinstance(high, int) and low < high):
                raise ValidationError({"label_schema": f"{spec['name']}: min must be below max."})
            cleaned.append(
                {
                    "name": spec["name"],
                    "kind": "likert",
                    "min": low,
                    "max": high,
                    "label": spec.get("label", ""),
                    "required": bool(spec.get("required", False)),
                }
            )
        else:
            raise ValidationError({"label_schema": f"{spec['name']}: kind is likert or flag."})
    return cleaned
