"""What a reply is sampled with: the settings every form that asks a checkpoint for replies
shares (the playground on the checkpoint page, the loop's next-round comparisons), stored as
JSON on the row that asks and checked before anything is queued."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError

MAX_NEW_TOKENS = 4096
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**32 - 1  # what torch's and numpy's seeding accept (transformers.set_seed seeds both)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 is greedy decoding
    top_p: float = 0.95
    seed: int = 0

    def clean(self, *, max_new_tokens: int = MAX_NEW_TOKENS) -> SamplingParams:
        """Self, or a ValidationError naming each setting out of range (by its form field)."""
        errors = {}
        if not 1 <= self.max_new_tokens <= max_new_tokens:
            errors["max_new_tokens"] = f"Between 1 and {max_new_tokens} new tokens."
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            errors["temperature"] = f"Temperature is between 0 and {MAX_TEMPERATURE:g}."
        if not 0 < self.top_p <= 1:
            errors["top_p"] = "top_p is in (0, 1]."
        if not 0 <= self.seed <= MAX_SEED:
            errors["seed"] = f"The seed is between 0 and {MAX_SEED}."
        if errors:
            raise ValidationError(errors)
        return self
