"""Turning a raw row into a checked `ParsedRow` of one of four shapes, or why it is invalid."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from json.encoder import encode_basestring_ascii as _quote  # what json.dumps quotes with
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError

from feedback.models import Split, TaskKind

from ..projects import MAX_RANKED, MIN_RANKED, prompt_hash
from ..validation import clean_messages, clean_text
from .readers import BadRow, read_rows

SHAPES = ("prompts", "comparisons", "preference", "sft")
PAIRINGS = ("all_pairs", "adjacent", "first_vs_rest")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
_SPLITS = tuple(Split.values)  # a tuple, not a set: a bad split may be unhashable JSON


@dataclass(frozen=True)
class ImportOptions:
    shape: str = "auto"
    comparison_mode: str = "pairwise"  # or "ranking"
    pairing: str = "all_pairs"
    source: str = ""

    def __post_init__(self) -> None:
        if self.shape not in ("auto", *SHAPES):
            raise ValidationError({"shape": f"Shape is auto or one of {', '.join(SHAPES)}."})
        if self.comparison_mode not in ("pairwise", "ranking"):
            raise ValidationError({"comparison_mode": "Comparison mode is pairwise or ranking."})
        if self.pairing not in PAIRINGS:
            raise ValidationError({"pairing": f"Pairing is one of {', '.join(PAIRINGS)}."})


@dataclass
class ParsedRow:
    shape: str
    system: str
    messages: list[dict[str, str]]
    split: str = Split.TRAIN
    tags: list[str] = field(default_factory=list)
    external_id: str = ""
    completions: list[tuple[str, str]] = field(default_factory=list)  # (text, model)
    demonstration: str = ""

    # Cached: writing a row looks both up several times.
    @cached_property
    def prompt_hash(self) -> str:
        return prompt_hash(self.system, self.messages)

    @cached_property
    def key(self) -> str:
        """sha256 of json.dumps([shape, prompt hash, completions, demonstration]), spelled out
        with json's own string quoting: the same text, in a third of the time. Keys are stored
        (Item.import_key), so this text must never change."""
        pairs = ", ".join(f"[{_quote(text)}, {_quote(model)}]" for text, model in self.completions)
        payload = (
            f"[{_quote(self.shape)}, {_quote(self.prompt_hash)}, [{pairs}], "
            f"{_quote(self.demonstration)}]"
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def detect_shape(row: dict) -> str:
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "completions" in row:
        return "comparisons"
    if "completion" in row:
        return "sft"
    messages = row.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return "sft" if messages[-1].get("role") == "assistant" else "prompts"
    if "prompt" in row or "messages" in row:
        return "prompts"
    raise ValidationError(
        "Cannot tell the shape: expected prompt or messages (and maybe completions, "
        "chosen/rejected or completion)."
    )


def _as_conversation(value: Any, field_name: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return value
    raise ValidationError(f"{field_name} must be text or a list of messages.")


def _hh_turns(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> messages (Anthropic HH-RLHF text layout)."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if len(parts) < 3:
        raise ValidationError("expected Human:/Assistant: turns")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _reply(value: Any, field_name: str) -> tuple[list[dict] | None, str]:
    """A chosen/rejected value as (conversation before the reply | None, reply text)."""
    if isinstance(value, str):
        if "\n\nHuman:" in value or value.startswith("Human:"):
            turns = _hh_turns(value)
            if turns[-1]["role"] != "assistant":
                raise ValidationError(f"{field_name} must end with an Assistant turn.")
            return turns[:-1], turns[-1]["content"]
        return None, value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        if value[-1].get("role") != "assistant":
            raise ValidationError(f"{field_name} must end with an assistant message.")
        return (value[:-1] or None), value[-1].get("content")
    raise ValidationError(f"{field_name} must be text or a list of messages.")


def parse_row(row: dict, options: ImportOptions) -> ParsedRow:
    shape = detect_shape(row) if options.shape == "auto" else options.shape
    split = row.get("split") or Split.TRAIN
    if split not in _SPLITS:
        raise ValidationError(f"split must be train or test, not {split!r}.")
    tags = row.get("tags") or []
    if not isinstance(tags, list):
        raise ValidationError("tags must be a list.")
    base = {"split": split, "tags": [str(t) for t in tags], "external_id": str(row.get("id") or "")}
    system = row.get("system") or ""

    if shape == "preference":
        chosen_prefix, chosen = _reply(row.get("chosen"), "chosen")
        rejected_prefix, rejected = _reply(row.get("rejected"), "rejected")
        if row.get("prompt") not in (None, ""):
            conversation = _as_conversation(row["prompt"], "prompt")
        elif chosen_prefix is not None:
            if rejected_prefix is not None and rejected_prefix != chosen_prefix:
                raise ValidationError("chosen and rejected continue different conversations.")
            conversation = chosen_prefix
        else:
            raise ValidationError("a prompt is needed when chosen/rejected are bare replies.")
        system, messages = clean_messages(conversation, system)
        chosen = clean_text(chosen, field="chosen")
        rejected = clean_text(rejected, field="rejected")
        if chosen == rejected:
            raise ValidationError("chosen and rejected are the same text.")
        models = (str(row.get("chosen_model") or ""), str(row.get("rejected_model") or ""))
        pair = [(chosen, models[0]), (rejected, models[1])]
        return ParsedRow(shape, system, messages, completions=pair, **base)

    if shape == "sft":
        if "completion" in row:
            conversation = _as_conversation(row.get("prompt"), "prompt")
            _, reply = _reply(row["completion"], "completion")
        else:
            messages = row.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ValidationError("messages must be a non-empty list.")
            conversation, reply = messages[:-1], messages[-1]
            if not isinstance(reply, dict) or reply.get("role") != "assistant":
                raise ValidationError("an SFT conversation must end with an assistant message.")
            reply = reply.get("content")
        system, messages = clean_messages(conversation, system)
        return ParsedRow(
            shape, system, messages, demonstration=clean_text(reply, field="completion"), **base
        )

    conversation = row.get("messages") if "messages" in row else row.get("prompt")
    system, messages = clean_messages(_as_conversation(conversation, "prompt"), system)
    if shape == "prompts":
        return ParsedRow(shape, system, messages, **base)

    raw = row.get("completions")
    if not isinstance(raw, list) or not 2 <= len(raw) <= 64:
        raise ValidationError("completions must be a list of 2 or more replies.")
    completions = []
    for index, entry in enumerate(raw):
        text, model = (entry, "") if isinstance(entry, str) else (None, "")
        if isinstance(entry, dict):
            text, model = entry.get("text"), str(entry.get("model") or "")
        completions.append((clean_text(text, field=f"completions[{index}]"), model))
    if len({text for text, _ in completions}) != len(completions):
        raise ValidationError("completions repeat the same text.")
    if options.comparison_mode == "ranking" and not MIN_RANKED <= len(completions) <= MAX_RANKED:
        raise ValidationError(f"ranking needs {MIN_RANKED} to {MAX_RANKED} completions.")
    return ParsedRow(shape, system, messages, completions=completions, **base)


def required_kinds(shape: str, options: ImportOptions) -> set[str]:
    if shape == "sft":
        return {TaskKind.DEMONSTRATION}
    if shape == "preference":
        return {TaskKind.PAIRWISE}
    if shape == "comparisons":
        return {TaskKind.RANKING if options.comparison_mode == "ranking" else TaskKind.PAIRWISE}
    return set()


def parsed_rows(path: Path, options: ImportOptions) -> Iterator[tuple[int, ParsedRow | str]]:
    """Each row parsed, or the reason it is invalid."""
    for number, row in read_rows(path):
        if isinstance(row, BadRow):
            yield number, str(row)
            continue
        try:
            yield number, parse_row(row, options)
        except ValidationError as exc:
            yield number, "; ".join(exc.messages)
