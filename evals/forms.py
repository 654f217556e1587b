"""Forms only parse HTTP input; evals.services owns the rules (which suite needs what)."""

from __future__ import annotations

from typing import Any

from django import forms

from evals.models import Suite
from feedback.models import DatasetSnapshot, PairwiseChoice, Project, SnapshotKind, Strength
from jobs.models import Status
from modeling.models import Checkpoint, CheckpointKind

DATE = forms.DateInput(attrs={"type": "date"})
PARAM_FIELDS = (
    "limit", "batch_size", "max_new_tokens", "temperature", "top_p", "seed", "stride",
    "num_fewshot", "task_path", "include_path",
)  # fmt: skip


class DashboardFilterForm(forms.Form):
    project = forms.ModelChoiceField(
        Project.objects.order_by("name"), required=False, empty_label="All projects"
    )
    kind = forms.ChoiceField(choices=[("", "All kinds"), *CheckpointKind.choices], required=False)
    created_from = forms.DateField(required=False, widget=DATE, label="Created from")
    created_to = forms.DateField(required=False, widget=DATE, label="to")
    sort = forms.CharField(required=False, max_length=400, widget=forms.HiddenInput)
    metric = forms.CharField(required=False, max_length=400, widget=forms.HiddenInput)

    def filters(self) -> dict[str, Any]:
        """The valid filters (an invalid one is shown with its error and left out)."""
        self.is_valid()
        data = self.cleaned_data
        return {
            "project": data.get("project"),
            "kind": data.get("kind") or "",
            "created_from": data.get("created_from"),
            "created_to": data.get("created_to"),
            "sort": data.get("sort") or "",
        }


class CompareForm(forms.Form):
    a = forms.ModelChoiceField(Checkpoint.objects.order_by("-created_at", "-id"), label="Compare")
    b = forms.ModelChoiceField(Checkpoint.objects.order_by("-created_at", "-id"), label="with")


class EvalRunForm(forms.Form):
    checkpoint = forms.ModelChoiceField(
        Checkpoint.objects.filter(kind__in=[CheckpointKind.POLICY, CheckpointKind.REWARD]).order_by(
            "-created_at", "-id"
        )
    )
    suite = forms.ChoiceField(choices=Suite.choices)
    task = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"list": "task-names"}),
        help_text="A shipped task (multiple choice, generative; the win rate's prompts) or an "
        "lm-eval task. Empty: the suite's own data.",
    )
    task_path = forms.CharField(
        required=False, max_length=1000, help_text="Or a task file on the GPU workers (absolute)."
    )
    task_file = forms.FileField(
        required=False,
        label="Or upload a task file",
        help_text='JSONL in the suite\'s format: text sets {"text"}, multiple choice, '
        "generative, preference pairs (see evals/ml/tasks.py).",
    )
    reference = forms.ModelChoiceField(
        Checkpoint.objects.filter(kind=CheckpointKind.POLICY).order_by("-created_at", "-id"),
        required=False,
        help_text="Win rate: the policy to beat (empty: the checkpoint's parent).",
    )
    judge = forms.ModelChoiceField(
        Checkpoint.objects.filter(kind=CheckpointKind.REWARD).order_by("-created_at", "-id"),
        required=False,
        help_text="Win rate: the reward model that judges.",
    )
    snapshot = forms.ModelChoiceField(
        DatasetSnapshot.objects.filter(
            kind=SnapshotKind.PREFERENCE, status=Status.SUCCEEDED
        ).select_related("project"),
        required=False,
        help_text="Reward accuracy: score its test split (empty: the shipped held-out pairs).",
    )
    limit = forms.IntegerField(required=False, min_value=1, help_text="First n items only.")
    batch_size = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="Rows per forward pass (empty: automatic for multiple choice and generation, "
        "8 otherwise).",
    )
    max_new_tokens = forms.IntegerField(required=False, min_value=1, help_text="Generative.")
    temperature = forms.FloatField(
        required=False, help_text="Generative: sample at this temperature (empty: greedy)."
    )
    top_p = forms.FloatField(required=False, help_text="Generative, when sampling.")
    seed = forms.IntegerField(required=False, min_value=0, help_text="Generative, when sampling.")
    stride = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="Perplexity: the sliding window's step for token perplexity (empty: half the "
        "model's length).",
    )
    num_fewshot = forms.IntegerField(required=False, min_value=0, help_text="lm-eval.")
    include_path = forms.CharField(
        required=False, max_length=1000, help_text="lm-eval: a folder of task YAML files."
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("task_file") and data.get("task_path"):
            raise forms.ValidationError("Upload a task file or name a path, not both.")
        return data

    def request_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        params = {name: data[name] for name in PARAM_FIELDS if data.get(name) not in (None, "")}
        return {
            "checkpoint": data["checkpoint"],
            "suite": data["suite"],
            "task": data.get("task") or "",
            "params": params,
            "reference": data.get("reference"),
            "judge": data.get("judge"),
            "snapshot": data.get("snapshot"),
        }


class BattleStartForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "autofocus": True}),
        label="Your prompt",
        # The arena's own limit is checked by the service, which says what it is.
        max_length=20_000,
    )


class BattleVoteForm(forms.Form):
    choice = forms.ChoiceField(choices=PairwiseChoice.choices)
    strength = forms.ChoiceField(choices=[("", "—"), *Strength.choices], required=False)
    seconds_spent = forms.FloatField(required=False, widget=forms.HiddenInput)


class LiveArenaForm(forms.Form):
    is_open = forms.BooleanField(required=False, initial=True, label="Open for battles")
    checkpoints = forms.ModelMultipleChoiceField(
        Checkpoint.objects.filter(kind=CheckpointKind.POLICY).order_by("-created_at"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Two of these, drawn at random, answer each battle.",
    )
    blocked_terms = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Blocked words and phrases",
        help_text="One per line. A prompt holding one (whole words, any case) is refused before "
        "anything is generated.",
    )
    max_prompt_chars = forms.IntegerField(initial=2000, label="Longest prompt (characters)")
    max_new_tokens = forms.IntegerField(initial=128, label="Longest reply (tokens)")
    temperature = forms.FloatField(initial=0.7)

    @classmethod
    def for_arena(cls, arena) -> LiveArenaForm:
        if arena is None:
            return cls()
        return cls(
            initial={
                "is_open": arena.is_open,
                "checkpoints": list(arena.checkpoints.all()),
                "blocked_terms": "\n".join(arena.blocked_terms),
                "max_prompt_chars": arena.max_prompt_chars,
                "max_new_tokens": arena.max_new_tokens,
                "temperature": arena.temperature,
            }
        )

    def update_kwargs(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        data["blocked_terms"] = data["blocked_terms"].splitlines()
        return data
