"""Verifiable rewards: Python functions that score completions, registered by name.

GRPO and RLOO jobs name them in their config (`reward_functions`, with `reward_weights`), beside
or instead of a reward-model checkpoint; training.py hands them to TRL as `reward_funcs`. Each
follows TRL's reward-function contract (trl/trainer/grpo_trainer.py, `_calculate_rewards`):

    fn(prompts=[...], completions=[...], **columns) -> list[float | None]

prompts and completions are conversations (lists of {"role", "content"}) in the conversational
datasets our snapshots write; every other dataset column comes as a keyword list (`reference`
for exact_match). None means "no opinion on this row": TRL skips it when it weighs the rewards.

Built in: `exact_match` (against a `reference` column) and `format` (a regex the whole reply
must match; the pattern is the job's `format_pattern`). Apps above modeling register their own
at start-up (loop registers `toy_task` in LoopConfig.ready) — modeling never imports them, so the
layering holds. No torch here: the web process validates names at launch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

RewardFunction = Callable[..., list[float | None]]

_REGISTRY: dict[str, RewardFunction] = {}

# A single short line: a reply, not a ramble or a list of guesses over several lines.
DEFAULT_FORMAT_PATTERN = r"[^\n]{1,64}"


def register_reward(name: str, function: RewardFunction) -> None:
    """Make `function` available to jobs as `name`. Registering the same function twice is a
    no-op (AppConfig.ready may run more than once); another function under a taken name is an
    error, since a job's meaning must not depend on import order."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
        raise ValueError(f"A reward function name is snake_case, at most 64 characters: {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not function:
        raise ValueError(f"A different reward function is already registered as {name!r}")
    _REGISTRY[name] = function


def registered_rewards() -> list[str]:
    return sorted(_REGISTRY)


def reward_function(name: str, **params: Any) -> RewardFunction:
    """The registered function, with job-level parameters bound (format: pattern). TRL logs each
    reward under the function's __name__, so the bound function keeps the registered name."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown reward function {name!r}; registered: {', '.join(registered_rewards())}"
        )
    function = _REGISTRY[name]
    if not params:
        return function

    def bound(**kwargs):
        return function(**params, **kwargs)

    bound.__name__ = name
    return bound


def completion_text(completion: Any) -> str:
    """The text of a completion, conversational ([{"role": "assistant", "content": ...}]) or
    plain (a string)."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)


def prompt_text(prompt: Any) -> str:
    """The last user turn of a prompt, conversational or plain: the question to be answered."""
    if isinstance(prompt, str):
        return prompt
    users = [message.get("content") or "" for message in prompt if message.get("role") == "user"]
    return users[-1] if users else ""


def _normalise(text: str) -> str:
    return " ".join(text.strip().casefold().split())


def exact_match(*, completions, reference=None, **_) -> list[float | None]:
    """1.0 when the reply equals the row's `reference` up to case and whitespace, else 0.0;
    None for rows without a reference (or a dataset without the column)."""
    references = reference if reference is not None else [None] * len(completions)
    return [
        None if ref is None else float(_normalise(completion_text(c)) == _normalise(str(ref)))
        for c, ref in zip(completions, references, strict=True)
    ]


def format_reward(*, completions, pattern: str = DEFAULT_FORMAT_PATTERN, **_) -> list[float]:
    """1.0 when the whole reply (outer whitespace stripped) matches `pattern`, else 0.0."""
    compiled = re.compile(pattern)
    return [float(compiled.fullmatch(completion_text(c).strip()) is not None) for c in completions]


format_reward.__name__ = "format"
register_reward("exact_match", exact_match)
register_reward("format", format_reward)
