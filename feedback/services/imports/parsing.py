"""Turning a raw row into a checked `ParsedRow` of one of four shapes, or why it is invalid."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from functools import cached_property
from json.encoder import encode_basestring_ascii as _quote  # what json.dumps quotes with
from pathlib import Path
from typing import Any

import orjson
from django.core.exceptions import ValidationError

from feedback.models import Split, TaskKind

from ..projects import MAX_RANKED, MIN_RANKED, prompt_hash
from ..validation import check_storable, clean_messages, clean_text
from .readers import TOO_DEEP, BadRow, read_rows

SHAPES = ("prompts", "comparisons", "preference", "sft")
PAIRINGS = ("all_pairs", "adjacent", "first_vs_rest")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
_SIDES = ("chosen", "rejected")
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
        check_storable(self.source, field="source")


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
    metadata: dict[str, Any] = field(default_factory=dict)  # the row's other keys

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
    for given, missing in (_SIDES, _SIDES[::-1]):
        # Half a preference pair is no prompt: read as one, its reply would be dropped unseen.
        if given in row:
            raise ValidationError(
                f"{missing} is missing: a preference row needs both chosen and rejected."
            )
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
    if value is None:
        raise ValidationError(f"{field_name} is missing.")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return value
    raise ValidationError(f"{field_name} must be text or a list of messages.")


def _hh_turns(text: str, field_name: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> messages (Anthropic HH-RLHF text layout), each
    turn's text exactly as written between the markers, spaces included."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if len(parts) < 3:
        raise ValidationError("expected Human:/Assistant: turns")
    if parts[0]:
        raise ValidationError(f"{field_name} has text before the first Human: turn.")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[role], "content": content}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _reply(value: Any, field_name: str) -> tuple[list[dict] | None, str]:
    """A chosen/rejected/completion value as (conversation before the reply | None, reply)."""
    if value is None:
        raise ValidationError(f"{field_name} is missing.")
    if isinstance(value, str):
        if "\n\nHuman:" in value or value.startswith("Human:"):
            turns = _hh_turns(value, field_name)
            if turns[-1]["role"] != "assistant":
                raise ValidationError(f"{field_name} must end with an Assistant turn.")
            return (turns[:-1] or None), turns[-1]["content"]
        return None, value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        if value[-1].get("role") != "assistant":
            raise ValidationError(f"{field_name} must end with an assistant message.")
        return (value[:-1] or None), value[-1].get("content")
    raise ValidationError(f"{field_name} must be text or a list of messages.")


def _conversation(prompt: Any, history: list[dict] | None, field_name: str) -> list[dict]:
    """The conversation a reply continues, kept whole: the row's `prompt`, or the `history`
    the reply came with (HH and UltraFeedback carry it in chosen/rejected), or that history
    when the prompt only repeats its last turns. Any other disagreement is refused: choosing
    one of them would silently drop turns."""
    if prompt in (None, ""):
        if history is None:
            raise ValidationError("a prompt is needed when the replies come without one.")
        return history
    stated = _as_conversation(prompt, "prompt")
    if history is None or history == stated:
        return stated
    if len(stated) < len(history) and history[-len(stated) :] == stated:
        return history
    raise ValidationError(
        f"prompt does not match the conversation in {field_name}: give the whole conversation "
        "or its last turns."
    )


def _short_text(value: Any, field_name: str) -> str:
    """An id or a model name: text that fits its 200-character column."""
    if not value:  # most rows: no id, no model names
        return ""
    text = check_storable(str(value), field=field_name)
    if len(text) > 200:
        raise ValidationError(f"{field_name} is longer than 200 characters.")
    return text


# Keys a shape reads; any other key a row carries is kept on its items as metadata.
# (UltraFeedback's `messages` repeats its chosen conversation.)
_READ = frozenset(
    {"prompt", "messages", "system", "tags", "split", "id", "completions", "completion",
     "chosen", "rejected", "chosen_model", "rejected_model"}
)  # fmt: skip
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 20


def _metadata(row: dict) -> dict[str, Any]:
    """The row's other keys as JSON that every database here stores (UltraFeedback's scores,
    prompt_id...); Parquet dates become ISO text."""
    extra = [key for key in row if key not in _READ]
    if not extra:
        return {}
    for key in extra:  # first: errors about a value name its key
        check_storable(key, field="metadata")
    kept = {key: _json_value(row[key], key) for key in extra}
    size = len(orjson.dumps(kept))
    if size > MAX_METADATA_BYTES:
        raise ValidationError(
            f"the other keys (metadata) are {size:,} bytes as JSON; the limit is "
            f"{MAX_METADATA_BYTES:,}."
        )
    return kept


def _json_value(value: Any, where: str, depth: int = 1) -> Any:
    if depth > MAX_METADATA_DEPTH:
        raise ValidationError(f"{where}: nested more than {MAX_METADATA_DEPTH} levels.")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return check_storable(value)
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc.messages[0]}") from None
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValidationError(f"{where}: the number is too large to keep.")
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN or infinity
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(item, where, depth + 1) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        for key in value:
            check_storable(key, field="metadata")
        return {key: _json_value(item, where, depth + 1) for key, item in value.items()}
    raise ValidationError(
        f"{where}: {type(value).__name__} cannot be kept as metadata (JSON values only)."
    )


def parse_row(row: dict, options: ImportOptions) -> ParsedRow:
    shape = detect_shape(row) if options.shape == "auto" else options.shape
    split = row.get("split") or Split.TRAIN
    if split not in _SPLITS:
        raise ValidationError(f"split must be train or test, not {split!r}.")
    tags = row.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str | int | float) for tag in tags):
        raise ValidationError("tags must be a list of text.")
    base = {
        "split": split,
        "tags": [check_storable(str(tag), field="tags") for tag in tags],
        "external_id": _short_text(row.get("id"), "id"),
        "metadata": _metadata(row),
    }
    system = row.get("system") or ""

    if shape == "preference":
        chosen_history, chosen = _reply(row.get("chosen"), "chosen")
        rejected_history, rejected = _reply(row.get("rejected"), "rejected")
        if None not in (chosen_history, rejected_history) and chosen_history != rejected_history:
            raise ValidationError("chosen and rejected continue different conversations.")
        history = rejected_history if chosen_history is None else chosen_history
        conversation = _conversation(row.get("prompt"), history, "chosen")
        system, messages = clean_messages(conversation, system)
        chosen = clean_text(chosen, field="chosen")
        rejected = clean_text(rejected, field="rejected")
        if chosen == rejected:
            raise ValidationError("chosen and rejected are the same text.")
        models = [_short_text(row.get(f"{side}_model"), f"{side}_model") for side in _SIDES]
        pair = [(chosen, models[0]), (rejected, models[1])]
        return ParsedRow(shape, system, messages, completions=pair, **base)

    if shape == "sft":
        if "completion" in row:
            history, reply = _reply(row["completion"], "completion")
            conversation = _conversation(row.get("prompt"), history, "completion")
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

    if "messages" in row:
        conversation = row["messages"]
        # Text is a prompt's shorthand, never a messages list's: taking it as one user turn
        # would import a malformed row as if it were fine.
        if not isinstance(conversation, list):
            raise ValidationError(
                f"messages must be a list of {{role, content}} messages, not "
                f"{_json_type(conversation)}."
            )
    else:
        conversation = _as_conversation(row.get("prompt"), "prompt")
    system, messages = clean_messages(conversation, system)
    if shape == "prompts":
        return ParsedRow(shape, system, messages, **base)

    raw = row.get("completions")
    if not isinstance(raw, list) or not 2 <= len(raw) <= 64:
        raise ValidationError("completions must be a list of 2 or more replies.")
    completions = []
    for index, entry in enumerate(raw):
        text, model = (entry, "") if isinstance(entry, str) else (None, "")
        if isinstance(entry, dict):
            text, model = entry.get("text"), _short_text(entry.get("model"), "model")
        completions.append((clean_text(text, field=f"completions[{index}]"), model))
    if len({text for text, _ in completions}) != len(completions):
        raise ValidationError("completions repeat the same text.")
    if options.comparison_mode == "ranking" and not MIN_RANKED <= len(completions) <= MAX_RANKED:
        raise ValidationError(f"ranking needs {MIN_RANKED} to {MAX_RANKED} completions.")
    return ParsedRow(shape, system, messages, completions=completions, **base)


def _json_type(value: Any) -> str:
    """What a JSON value is, in the words of an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return {str: "text", dict: "an object"}.get(type(value), type(value).__name__)


def row_error(exc: ValidationError) -> str:
    """A row's problems in one line, each naming the field it is about where it has one."""
    if not hasattr(exc, "error_dict"):
        return "; ".join(exc.messages)
    named = [
        (field, message) for field, messages in exc.message_dict.items() for message in messages
    ]
    return "; ".join(f"{field}: {message}" for field, message in named)


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
            parsed = parse_row(row, options)
        except ValidationError as exc:
            yield number, row_error(exc)
        except RecursionError:  # nested values that json.loads followed and str() cannot
            yield number, TOO_DEEP
        else:
            yield number, parsed
