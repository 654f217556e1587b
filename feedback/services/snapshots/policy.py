"""A snapshot's policy: which judgements it takes, how it aggregates them, how it splits."""

from __future__ import annotations

from typing import Any

import orjson
from django.core.exceptions import ValidationError

from feedback.models import (
    JudgementStatus,
    Origin,
    SnapshotKind,
    Split,
    Strength,
)

STRENGTH_SCORE = {Strength.SLIGHT: 1, Strength.CLEAR: 2, Strength.STRONG: 3}
# Which annotators to trust, by the quality page's figures (feedback.quality.trust); None is off.
TRUST_DEFAULTS = {
    "min_annotator_agreement": None,
    "min_gold_accuracy": None,
    "exclude_flagged": False,
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    SnapshotKind.SFT: {
        "statuses": ["submitted", "accepted"],
        "format": "messages",
        **TRUST_DEFAULTS,
    },
    SnapshotKind.PREFERENCE: {
        # A vote or ranking a reviewer rejected is left out, as a rejected demonstration is.
        "statuses": ["submitted", "accepted"],
        "aggregation": "majority",
        "min_agreement": 0.5,
        "min_posterior": None,
        "min_item_agreement": None,
        "keep_ties": False,
        **TRUST_DEFAULTS,
    },
    SnapshotKind.PROMPTS: {},
}
_COMMON = {
    "test_fraction": 0.1,
    "include_imported": False,
    "include_simulated": False,
    "include_ai": False,
    "include_gold": False,
}
_SWITCHES = (
    "keep_ties",
    "include_imported",
    "include_simulated",
    "include_ai",
    "include_gold",
    "exclude_flagged",
)
_SHARES = (
    "min_agreement",
    "min_item_agreement",
    "min_annotator_agreement",
    "min_gold_accuracy",
    "min_posterior",
)
AGGREGATIONS = ("majority", "all", "dawid_skene")
CHUNK = 2000


def clean_policy(kind: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and refuse unknown keys and wrong values: a typo must not silently export
    the wrong data."""
    if kind not in SnapshotKind.values:
        raise ValidationError({"kind": f"Kind is one of {', '.join(SnapshotKind.values)}."})
    allowed = {**_COMMON, **_DEFAULTS[kind]}
    if not isinstance(policy or {}, dict):
        raise ValidationError({"policy": "The policy is an object of option: value."})
    policy = dict(policy or {})
    unknown = set(policy) - set(allowed)
    if unknown:
        raise ValidationError(
            {"policy": f"Unknown policy keys for {kind}: {', '.join(sorted(unknown))}."}
        )
    cleaned = {**allowed, **policy}
    errors = [_check(key, value) for key, value in cleaned.items()]
    if cleaned.get("min_posterior") is not None and cleaned["aggregation"] != "dawid_skene":
        errors.append("min_posterior applies to aggregation dawid_skene only.")
    if any(errors):
        raise ValidationError({"policy": [error for error in errors if error]})
    return cleaned


def _check(key: str, value: Any) -> str:
    """The error for one policy value, or ""."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in _SWITCHES and not isinstance(value, bool):
        return f"{key} is true or false."
    if key == "test_fraction" and not (number and 0 <= value < 1):
        return "test_fraction must be a number from 0 up to (not including) 1."
    if key in _SHARES and not (number and 0 <= value <= 1):
        if value is None and key != "min_agreement":
            return ""
        return f"{key} must be a number from 0 to 1" + (
            "." if key == "min_agreement" else " (or null for no filter)."
        )
    if key == "format" and value not in ("messages", "prompt_completion"):
        return "format is messages or prompt_completion."
    if key == "statuses" and not (
        isinstance(value, list)
        and value
        and all(isinstance(status, str) for status in value)
        and set(value) <= set(JudgementStatus.values)
    ):
        return "statuses is a list of submitted, accepted, rejected."
    if key == "aggregation" and value not in AGGREGATIONS:
        return "aggregation is majority, all or dawid_skene."
    return ""


def prompt_split(prompt_hash: str, declared: str, test_fraction: float) -> str:
    if declared == Split.TEST:
        return Split.TEST
    bucket = int(prompt_hash[:8], 16) / 0x1_0000_0000
    return Split.TEST if bucket < test_fraction else Split.TRAIN


def conversation(system: str, messages: str) -> list[dict[str, str]]:
    """The prompt as a conversation, from its system text and its messages' JSON text."""
    return ([{"role": "system", "content": system}] if system else []) + orjson.loads(messages)


def assistant_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def origins(policy: dict[str, Any]) -> list[str]:
    origins = [Origin.HUMAN]
    if policy["include_imported"]:
        origins.append(Origin.IMPORTED)
    if policy["include_simulated"]:
        origins.append(Origin.SIMULATED)
    if policy["include_ai"]:
        origins.append(Origin.AI)
    return origins


# Whose work the trust filters judge. An imported judgement is the file's, not the work of the
# user who imported it: it is neither measured nor left out by annotator. An AI annotator is
# measured as a person is (the quality page lists it with the same figures).
MEASURED = (Origin.HUMAN, Origin.SIMULATED, Origin.AI)
