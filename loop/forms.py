"""The next-round form: which project, which model to compare with, how to sample."""

from __future__ import annotations

from typing import Any

from django import forms

from feedback.models import Project, TaskKind
from loop.active import Strategy
from loop.comparisons import MAX_PROMPTS
from modeling.forms import SamplingForm
from modeling.models import Checkpoint, CheckpointKind


def pairwise_projects():
    # JSON `contains` is not available on SQLite; projects are few, so filter in Python.
    ids = [p.pk for p in Project.objects.all() if TaskKind.PAIRWISE in p.task_kinds]
    return Project.objects.filter(pk__in=ids)


class ComparisonForm(SamplingForm):
    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)
    reference = forms.ModelChoiceField(
        queryset=Checkpoint.objects.none(),
        required=False,
        empty_label="Its parent",
        label="Compare with",
    )
    n_prompts = forms.IntegerField(min_value=1, max_value=MAX_PROMPTS, initial=20, label="Prompts")
    strategy = forms.ChoiceField(
        choices=Strategy.choices,
        initial=Strategy.RANDOM,
        required=False,  # left out: random, the order before active sampling
        label="Label first",
        help_text="Which waiting pairs annotators get first once the batch is made.",
    )
    reward_models = forms.ModelMultipleChoiceField(
        queryset=Checkpoint.objects.none(),
        required=False,
        label="Reward-model ensemble",
        help_text="Two or more reward models trained with different seeds (not for random).",
    )

    # then the sampling settings
    field_order = ["project", "reference", "n_prompts", "strategy", "reward_models"]

    def __init__(self, *args, checkpoint: Checkpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = pairwise_projects()
        self.fields["reference"].queryset = Checkpoint.objects.filter(
            kind=CheckpointKind.POLICY
        ).exclude(pk=checkpoint.pk)
        self.fields["reward_models"].queryset = Checkpoint.objects.filter(
            kind=CheckpointKind.REWARD
        )
        if checkpoint.parent_id is None:
            self.fields["reference"].empty_label = None

    def request_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "project": data["project"],
            "reference": data["reference"],
            "n_prompts": data["n_prompts"],
            "strategy": data["strategy"] or Strategy.RANDOM,
            "reward_models": list(data["reward_models"]),
            "sampling": self.sampling(),
        }
