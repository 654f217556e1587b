"""The next-round form: which project, which model to compare with, how to sample."""

from __future__ import annotations

from typing import Any

from django import forms

from feedback.models import Project, TaskKind
from loop.comparisons import MAX_PROMPTS, SamplingParams
from modeling.models import Checkpoint, CheckpointKind


def pairwise_projects():
    # JSON `contains` is not available on SQLite; projects are few, so filter in Python.
    ids = [p.pk for p in Project.objects.all() if TaskKind.PAIRWISE in p.task_kinds]
    return Project.objects.filter(pk__in=ids)


class ComparisonForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)
    reference = forms.ModelChoiceField(
        queryset=Checkpoint.objects.none(),
        required=False,
        empty_label="Its parent",
        label="Compare with",
    )
    n_prompts = forms.IntegerField(min_value=1, max_value=MAX_PROMPTS, initial=20, label="Prompts")
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=128)
    temperature = forms.FloatField(
        min_value=0, max_value=5, initial=0.8, widget=forms.NumberInput(attrs={"step": "any"})
    )
    top_p = forms.FloatField(
        min_value=0.01, max_value=1, initial=0.95, widget=forms.NumberInput(attrs={"step": "any"})
    )
    seed = forms.IntegerField(min_value=0, initial=0)

    def __init__(self, *args, checkpoint: Checkpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = pairwise_projects()
        self.fields["reference"].queryset = Checkpoint.objects.filter(
            kind=CheckpointKind.POLICY
        ).exclude(pk=checkpoint.pk)
        if checkpoint.parent_id is None:
            self.fields["reference"].empty_label = None

    def request_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "project": data["project"],
            "reference": data["reference"],
            "n_prompts": data["n_prompts"],
            "sampling": SamplingParams(
                max_new_tokens=data["max_new_tokens"],
                temperature=data["temperature"],
                top_p=data["top_p"],
                seed=data["seed"],
            ),
        }
