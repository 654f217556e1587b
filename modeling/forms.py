"""Forms only parse HTTP input; services own the rules. The launch form grows one input per field
of the job kind's config class (modeling.ml.CONFIG_CLASSES), so a new trainer setting appears in
the UI with its default and description without touching this file."""

from __future__ import annotations

import enum
import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError

from core.forms import add_service_errors
from feedback.models import DatasetSnapshot
from jobs.models import Status
from modeling import selectors, services
from modeling.ml import CONFIG_CLASSES  # plain pydantic, imported lazily: no torch here
from modeling.models import (
    JOBS_NEEDING_REWARD_MODEL,
    Checkpoint,
    CheckpointKind,
    PlaygroundTurn,
)
from modeling.presets import PRESETS, preset_values
from modeling.sampling import MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE, SamplingParams
from modeling.services.assist import MAX_ITEMS as ASSIST_MAX_ITEMS

CONFIG_PREFIX = "cfg_"


def _unwrap(annotation: Any) -> Any:
    """`Annotated[int, Field(ge=1)] | None` -> int: the input type; pydantic checks the rest."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            annotation = args[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


class LooseJSONField(forms.CharField):
    """For settings like `str | list[str]`: JSON when it parses (["q_proj", "v_proj"]), else the
    plain text (all-linear), so nobody has to type quotes around a string."""

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if value in self.empty_values:
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value

    def prepare_value(self, value: Any) -> Any:
        if hasattr(value, "model_dump"):  # a nested setting such as `distributed`
            value = value.model_dump()
        return value if value is None or isinstance(value, str) else json.dumps(value)


def config_form_field(name: str, info) -> forms.Field:
    """A form input for one pydantic field. Everything is optional here: a blank input means
    "the default", and pydantic reports what is really missing or out of range."""
    annotation = _unwrap(info.annotation)
    initial = None if info.is_required() else info.get_default(call_default_factory=True)
    common = {
        "required": False,
        "label": name.replace("_", " ").capitalize(),
        "help_text": info.description or "",
        "initial": initial,
    }
    if annotation is bool:
        return forms.BooleanField(**common)
    if annotation is int:
        return forms.IntegerField(**common)
    if annotation is float:
        return forms.FloatField(**common, widget=forms.NumberInput(attrs={"step": "any"}))
    if get_origin(annotation) is Literal:
        choices = [(str(value), str(value)) for value in get_args(annotation)]
        return forms.ChoiceField(choices=[("", "(default)"), *choices], **common)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [(str(member.value), str(member.value)) for member in annotation]
        initial = initial.value if isinstance(initial, enum.Enum) else initial
        return forms.ChoiceField(
            choices=[("", "(default)"), *choices], **{**common, "initial": initial}
        )
    if annotation is str:
        return forms.CharField(**common)
    return LooseJSONField(**common)


class JobLaunchForm(forms.Form):
    parent = forms.ModelChoiceField(
        queryset=Checkpoint.objects.none(), empty_label=None, label="Start from"
    )
    snapshot = forms.ModelChoiceField(
        queryset=DatasetSnapshot.objects.none(), empty_label=None, label="Dataset snapshot"
    )
    reward_model = forms.ModelChoiceField(
        queryset=Checkpoint.objects.none(), empty_label=None, label="Reward model"
    )
    time_limit_minutes = forms.IntegerField(
        min_value=1, max_value=30 * 24 * 60, label="Time limit (minutes)"
    )

    def __init__(self, *args, kind: str, presets: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.presets = [name for name in presets or [] if name in PRESETS]
        # What the presets put in the inputs of an unbound form (the values, not the defaults).
        self.preset_config = preset_values(kind=kind, names=self.presets)
        self.cleaned_config: dict[str, Any] | None = None
        self.fields["parent"].queryset = selectors.parent_choices(kind=kind)
        self.fields["snapshot"].queryset = selectors.snapshot_choices(kind=kind)
        self.fields["time_limit_minutes"].initial = settings.VEREDICTO_JOB_TIME_LIMIT_SECONDS // 60
        if kind in JOBS_NEEDING_REWARD_MODEL:
            self.fields["reward_model"].queryset = selectors.reward_model_choices()
            if "reward_functions" in CONFIG_CLASSES[kind].model_fields:
                # RLOO and GRPO may score with registered reward functions alone.
                self.fields["reward_model"].required = False
                self.fields["reward_model"].empty_label = "(none: reward functions only)"
        else:
            del self.fields["reward_model"]
        self.config_fields = list(CONFIG_CLASSES[kind].model_fields)
        for name, info in CONFIG_CLASSES[kind].model_fields.items():
            self.fields[CONFIG_PREFIX + name] = config_form_field(name, info)
            if name in self.preset_config:
                self.fields[CONFIG_PREFIX + name].initial = self.preset_config[name]

    def raw_config(self) -> dict[str, Any]:
        """What was typed, blanks left out so the config class fills its defaults."""
        raw = {}
        for name in self.config_fields:
            value = self.cleaned_data.get(CONFIG_PREFIX + name)
            if value is None or value == "":
                continue
            raw[name] = value
        return raw

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        try:
            self.cleaned_config = services.job_config_clean(kind=self.kind, raw=self.raw_config())
        except ValidationError as exc:
            add_service_errors(self, exc, field_prefix=CONFIG_PREFIX)
        return cleaned

    def preset_links(self) -> list[dict[str, Any]]:
        """The presets the page offers, each with the query that adds it to those applied (and
        keeps a preselected starting checkpoint)."""
        keep = [("parent", self.initial["parent"])] if self.initial.get("parent") else []
        links = []
        for name, preset in PRESETS.items():
            names = [*(other for other in self.presets if other != name), name]
            links.append(
                {
                    "name": name,
                    "label": preset["label"],
                    "description": preset["description"],
                    "active": name in self.presets,
                    "query": urlencode([*(("preset", n) for n in names), *keep]),
                }
            )
        return links

    def config_bound_fields(self) -> list[forms.BoundField]:
        return [self[CONFIG_PREFIX + name] for name in self.config_fields]

    def input_bound_fields(self) -> list[forms.BoundField]:
        names = ["parent", "snapshot", "reward_model", "time_limit_minutes"]
        return [self[name] for name in names if name in self.fields]

    def launch_kwargs(self) -> dict[str, Any]:
        return {
            "parent": self.cleaned_data["parent"],
            "snapshot": self.cleaned_data["snapshot"],
            "reward_model": self.cleaned_data.get("reward_model"),
            "config": self.cleaned_config,
            "time_limit_seconds": self.cleaned_data["time_limit_minutes"] * 60,
        }


class SamplingForm(forms.Form):
    """The sampling settings of every form that asks a checkpoint for replies (the playground
    here, the loop's next-round comparisons). The limits repeat SamplingParams.clean's, so the
    browser refuses what the service would."""

    max_new_tokens = forms.IntegerField(min_value=1, max_value=MAX_NEW_TOKENS, initial=128)
    temperature = forms.FloatField(
        min_value=0,
        max_value=MAX_TEMPERATURE,
        initial=0.8,
        widget=forms.NumberInput(attrs={"step": "any"}),
        help_text="0 always picks the likeliest token.",
    )
    top_p = forms.FloatField(
        min_value=0.01, max_value=1, initial=0.95, widget=forms.NumberInput(attrs={"step": "any"})
    )
    seed = forms.IntegerField(min_value=0, max_value=MAX_SEED, initial=0)

    def sampling_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in ("temperature", "top_p", "max_new_tokens", "seed")]

    def sampling(self) -> SamplingParams:
        data = self.cleaned_data
        return SamplingParams(
            max_new_tokens=data["max_new_tokens"],
            temperature=data["temperature"],
            top_p=data["top_p"],
            seed=data["seed"],
        )


class PlaygroundForm(SamplingForm):
    prompt = forms.CharField(
        strip=False,  # the service strips, and a message of spaces gets its own error
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "Type a message for the model."},
        label="Message",
    )
    system = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="System prompt",
        help_text="Optional; sent before the conversation.",
    )
    max_new_tokens = forms.IntegerField(
        min_value=1,
        max_value=services.PLAYGROUND_MAX_NEW_TOKENS,
        initial=64,
        label="Max new tokens",
        error_messages={
            "max_value": f"At most {services.PLAYGROUND_MAX_NEW_TOKENS} new tokens.",
            "min_value": "At least 1 new token.",
        },
    )
    # The turn this message answers; checked against the user and checkpoint by the service.
    previous = forms.ModelChoiceField(
        queryset=PlaygroundTurn.objects.all(),
        required=False,
        widget=forms.HiddenInput,
        error_messages={"invalid_choice": "That conversation is gone: start a new one."},
    )

    field_order = ["prompt", "system", "temperature", "top_p", "max_new_tokens", "seed"]

    @classmethod
    def after(cls, turn: PlaygroundTurn | None) -> PlaygroundForm:
        """The form under a turn: its settings kept, ready for the next message (or, after a
        failure, for the same message again)."""
        if turn is None:
            return cls()
        initial = {**turn.sampling, "system": turn.system, "previous": turn.pk}
        if turn.status == Status.FAILED:
            initial["prompt"] = turn.prompt
        return cls(initial=initial)

    def previous_turn(self, *, user: AbstractBaseUser) -> PlaygroundTurn | None:
        """The turn the message was sent after, if it parsed and is the user's."""
        previous = getattr(self, "cleaned_data", {}).get("previous")
        return previous if previous and previous.requested_by_id == user.pk else None

    def request_kwargs(self) -> dict[str, Any]:
        # "Start over" sends the message as the first of a new conversation.
        previous = None if self.data.get("new") else self.cleaned_data["previous"]
        return {
            "prompt": self.cleaned_data["prompt"],
            "system": self.cleaned_data["system"],
            "sampling": self.sampling(),
            "previous": previous,
        }


class DrafterForm(forms.Form):
    """A project's drafting model: the checkpoint whose drafts pre-fill demonstration editors."""

    checkpoint = forms.ModelChoiceField(
        queryset=Checkpoint.objects.none(),
        required=False,
        empty_label="None: annotators start from an empty editor",
        label="Drafting model",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].queryset = Checkpoint.objects.filter(kind=CheckpointKind.POLICY)


class DraftRunForm(SamplingForm):
    max_items = forms.IntegerField(min_value=1, max_value=ASSIST_MAX_ITEMS, initial=200,
                                   label="At most this many items")  # fmt: skip

    field_order = ["max_items"]


class VoteRunForm(forms.Form):
    checkpoint = forms.ModelChoiceField(
        queryset=Checkpoint.objects.none(), empty_label=None, label="Reward model"
    )
    max_items = forms.IntegerField(min_value=1, max_value=ASSIST_MAX_ITEMS, initial=200,
                                   label="At most this many items")  # fmt: skip

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].queryset = Checkpoint.objects.filter(kind=CheckpointKind.REWARD)
