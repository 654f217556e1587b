"""Forms only parse HTTP input; the services own the rules (the API calls the same services)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.conf import settings
from django.http import QueryDict

from feedback.models import Completion, PairwiseChoice, Strength, TaskKind

SIDES = [("left", "Left"), ("right", "Right"), ("tie", "Tie"), ("both_bad", "Both bad")]


def _max_chars() -> int:
    return settings.VEREDICTO_MAX_TEXT_CHARS


class TimedForm(forms.Form):
    seconds_spent = forms.FloatField(required=False, min_value=0, widget=forms.HiddenInput)


class DemonstrationForm(TimedForm):
    text = forms.CharField(
        strip=False,
        widget=forms.Textarea(attrs={"rows": 14, "data-markdown-source": ""}),
        error_messages={"required": "Write the reply before submitting."},
    )
    # The model's draft the editor started from (feedback.services.assist), if it had one.
    draft_id = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["text"].max_length = _max_chars()
        self.fields["text"].widget.attrs["maxlength"] = _max_chars()


class PairwiseForm(TimedForm):
    side = forms.ChoiceField(
        choices=SIDES,
        widget=forms.RadioSelect,
        error_messages={"required": "Pick the better reply (or tie / both bad)."},
    )
    strength = forms.ChoiceField(choices=Strength.choices, required=False, widget=forms.RadioSelect)
    rationale = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 2})
    )

    def canonical_choice(self, display_order: list[int], a_id: int) -> str:
        """Map what the annotator saw (left/right) back to the item's A/B."""
        side = self.cleaned_data["side"]
        if side in ("tie", "both_bad"):
            return PairwiseChoice.TIE if side == "tie" else PairwiseChoice.BOTH_BAD
        left_is_a = not display_order or display_order[0] == a_id
        return PairwiseChoice.A if (side == "left") == left_is_a else PairwiseChoice.B


class RankingForm(TimedForm):
    """One rank field per completion; equal ranks are ties. Works without JavaScript."""

    rationale = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 2})
    )

    def __init__(self, *args, completions: list[Completion], **kwargs):
        super().__init__(*args, **kwargs)
        self.completion_ids = [c.pk for c in completions]
        choices = [(n, n) for n in range(1, len(completions) + 1)]
        for position, completion in enumerate(completions, start=1):
            self.fields[f"rank_{completion.pk}"] = forms.TypedChoiceField(
                choices=choices, coerce=int, initial=position, label=f"Rank of reply {position}"
            )

    def ranking(self) -> list[list[int]]:
        ranks: dict[int, list[int]] = {}
        for cid in self.completion_ids:
            ranks.setdefault(self.cleaned_data[f"rank_{cid}"], []).append(cid)
        return [ranks[rank] for rank in sorted(ranks)]

    def rank_fields(self) -> list[tuple[int, forms.BoundField]]:
        return [(cid, self[f"rank_{cid}"]) for cid in self.completion_ids]


class SkipForm(forms.Form):
    reason = forms.CharField(required=False, max_length=500)


def labels_from_post(schema: list[dict], data: QueryDict) -> dict[str, Any]:
    """Label answers arrive as `label_<name>`, a per-reply scale as `label_<name>.<reply id>`;
    checkboxes that are off are simply absent."""
    answers: dict[str, Any] = {}
    for spec in schema:
        field = f"label_{spec['name']}"
        if spec["kind"] == "flag":
            answers[spec["name"]] = data.get(field) == "on"
        elif spec.get("scope") == "reply":
            per_reply = {
                key.removeprefix(f"{field}."): value
                for key, value in data.items()
                if key.startswith(f"{field}.") and value != ""
            }
            if per_reply:
                answers[spec["name"]] = per_reply
        elif data.get(field) not in (None, ""):
            answers[spec["name"]] = data.get(field)
    return answers


@dataclass(frozen=True)
class LabelInput:
    """One input of the labels fieldset, ready for the template."""

    field: str
    title: str
    spec: dict
    value: Any


def label_inputs(
    schema: list[dict], values: dict[str, Any], replies: list[tuple[int, str]]
) -> list[LabelInput]:
    """`replies`: (completion id, what the screen calls it) in display order; a per-reply scale
    gets one input each, and none on a task without replies."""
    inputs = []
    for spec in schema:
        field, title = f"label_{spec['name']}", spec.get("label") or spec["name"]
        value = values.get(spec["name"])
        if spec.get("scope") == "reply":
            answers = value if isinstance(value, dict) else {}
            inputs += [
                LabelInput(f"{field}.{cid}", f"{title}: {name}", spec, answers.get(str(cid)))
                for cid, name in replies
            ]
        else:
            inputs.append(LabelInput(field, title, spec, value))
    return inputs


class ProjectForm(forms.Form):
    """A project's settings as posted by the project page; the model checks their values."""

    name = forms.CharField(max_length=200)
    description = forms.CharField(max_length=500, required=False)
    guidelines = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 10})
    )
    task_kinds = forms.MultipleChoiceField(
        choices=TaskKind.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    overlap = forms.IntegerField(
        initial=1, help_text="How many different annotators judge each item (1 to 50)."
    )
    lease_seconds = forms.IntegerField(
        initial=1800,
        label="Lease seconds",
        help_text="How long a task stays reserved for whoever opened it (60 s to a week).",
    )
    gold_rate = forms.FloatField(
        initial=0.0,
        help_text="Share of tasks that are gold items with known answers, unannounced (0 to 0.5).",
    )
    reveal_models = forms.BooleanField(
        required=False,
        label="Reveal models after each vote",
        help_text="Arena battles: show which model wrote each side once the vote is in.",
    )
    strength_optional = forms.BooleanField(
        required=False,
        label="A/B votes may skip “how much better”",
        help_text="One key casts a comparison (1 left, 2 right), as in Chatbot Arena; "
        "Shift+1–3 first still records how much.",
    )
    show_ai_votes = forms.BooleanField(
        required=False,
        label="Show AI annotators' votes",
        help_text="Comparisons: show how reward models voted on the same pair. Off, annotators "
        "never see them; either way they count as no person's work.",
    )
    is_active = forms.BooleanField(
        required=False, initial=True, label="Open", help_text="A closed project hands out no work."
    )
    annotators = forms.ModelMultipleChoiceField(
        queryset=None,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Who may annotate",
        help_text="Nobody ticked: every annotator.",
    )

    def __init__(self, *args, annotators, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["annotators"].queryset = annotators

    def settings(self) -> dict[str, Any]:
        return {name: value for name, value in self.cleaned_data.items() if name != "annotators"}


class LabelForm(forms.Form):
    """One label of a project's schema; a row without a name is an unused blank row."""

    name = forms.CharField(
        required=False, max_length=50, help_text="Letters, digits, _ and -; used in exports."
    )
    label = forms.CharField(required=False, max_length=200, label="Shown as")
    kind = forms.ChoiceField(
        choices=[("likert", "Likert scale"), ("flag", "Flag (yes / no)"), ("text", "Free text")]
    )
    scope = forms.ChoiceField(
        choices=[("item", "Once per task"), ("reply", "For each reply")],
        required=False,
        label="Rate",
    )
    min = forms.IntegerField(required=False, initial=1)
    max = forms.IntegerField(required=False, initial=5)
    required = forms.BooleanField(required=False)

    def spec(self) -> dict[str, Any] | None:
        data = self.cleaned_data
        if not data.get("name") or data.get("DELETE"):
            return None
        spec = {"name": data["name"].strip(), "kind": data["kind"], "label": data["label"]}
        if data["kind"] == "likert":
            spec |= {
                "min": 1 if data["min"] is None else data["min"],
                "max": 5 if data["max"] is None else data["max"],
                "scope": data["scope"] or "item",
            }
        if data["kind"] != "flag":
            spec["required"] = data["required"]
        return spec


LabelFormSet = forms.formset_factory(LabelForm, extra=1, can_delete=True)


def label_formset(data: QueryDict | None = None, *, schema: list[dict] = ()) -> forms.BaseFormSet:
    """The label editor. Posting `add_label` (the no-JavaScript way) re-renders one row more."""
    if data is not None and "add_label" in data:
        data = data.copy()
        data["labels-TOTAL_FORMS"] = str(int(data.get("labels-TOTAL_FORMS") or 0) + 1)
    return LabelFormSet(data, prefix="labels", initial=list(schema) if data is None else None)


def label_schema_from(formset: forms.BaseFormSet) -> list[dict[str, Any]]:
    return [spec for form in formset.forms if (spec := form.spec()) is not None]


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL, CSV or Parquet.")
    shape = forms.ChoiceField(
        choices=[
            ("auto", "Detect per row"),
            ("prompts", "Prompts"),
            ("comparisons", "Prompts with completions to compare"),
            ("preference", "Preference pairs (prompt, chosen, rejected)"),
            ("sft", "SFT demonstrations"),
        ],
        initial="auto",
    )
    comparison_mode = forms.ChoiceField(
        choices=[("pairwise", "Pairwise items"), ("ranking", "One ranking item per prompt")],
        initial="pairwise",
        help_text="For prompts with several completions.",
    )
    pairing = forms.ChoiceField(
        choices=[
            ("all_pairs", "Every pair"),
            ("adjacent", "Adjacent pairs (1–2, 2–3, …)"),
            ("first_vs_rest", "First completion against each other"),
        ],
        initial="all_pairs",
    )
    source = forms.CharField(required=False, max_length=200, help_text="Defaults to the file name.")

    def options(self):
        from feedback.services.imports import ImportOptions

        return ImportOptions(
            shape=self.cleaned_data["shape"],
            comparison_mode=self.cleaned_data["comparison_mode"],
            pairing=self.cleaned_data["pairing"],
            source=self.cleaned_data["source"],
        )


class SnapshotForm(forms.Form):
    kind = forms.ChoiceField(
        choices=[
            ("preference", "Preference pairs (reward model, DPO)"),
            ("sft", "SFT demonstrations"),
            ("prompts", "Prompts only (PPO, RLOO, GRPO)"),
        ]
    )
    name = forms.CharField(required=False, max_length=200)
    test_fraction = forms.FloatField(initial=0.1, min_value=0, max_value=0.9)
    aggregation = forms.ChoiceField(
        choices=[
            ("majority", "Majority per item"),
            ("dawid_skene", "Dawid–Skene posterior per item"),
            ("all", "Every judgement is a row"),
        ],
        initial="majority",
        help_text="Preference. Dawid–Skene weighs each vote by its annotator's estimated "
        "reliability (quality page). An adjudicated item always gives its adjudicated answer.",
    )
    min_agreement = forms.FloatField(
        initial=0.5,
        min_value=0,
        max_value=1,
        help_text="Majority: the winner's least share of the votes.",
    )
    min_item_agreement = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Min item agreement",
        help_text="Preference, optional: drop items whose most common answer has a smaller "
        "share of the votes.",
    )
    min_posterior = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Min posterior",
        help_text="Dawid–Skene, optional: drop pairs whose label has a lower probability.",
    )
    keep_ties = forms.BooleanField(required=False, help_text="Keep ties / both-bad as rows.")
    accepted_only = forms.BooleanField(
        required=False,
        help_text="Only judgements a reviewer accepted (rejected ones are always left out).",
    )
    min_annotator_agreement = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Min annotator agreement",
        help_text="Optional: leave out annotators whose agreement with the others (quality page) "
        "is lower.",
    )
    min_gold_accuracy = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Min gold accuracy",
        help_text="Optional: leave out annotators with a lower accuracy on gold items.",
    )
    exclude_flagged = forms.BooleanField(
        required=False,
        label="Leave out flagged annotators",
        help_text="Too fast, side bias, low agreement or low gold accuracy on the quality page.",
    )
    include_imported = forms.BooleanField(required=False)
    include_simulated = forms.BooleanField(required=False)
    include_ai = forms.BooleanField(required=False, label="Include AI annotators' votes")

    # How the data page groups the fields.
    SECTIONS = (
        ("Snapshot", ("kind", "name", "test_fraction")),
        (
            "Preference pairs",
            ("aggregation", "min_agreement", "min_posterior", "min_item_agreement", "keep_ties"),
        ),
        ("Review (SFT and preference)", ("accepted_only",)),
        (
            "Annotator trust (SFT and preference)",
            ("min_annotator_agreement", "min_gold_accuracy", "exclude_flagged"),
        ),
        ("Sources", ("include_imported", "include_simulated", "include_ai")),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("min_posterior") is not None and data.get("aggregation") != "dawid_skene":
            self.add_error("min_posterior", "Applies to the Dawid–Skene aggregation only.")
        return data

    def sections(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(legend, [self[name] for name in names]) for legend, names in self.SECTIONS]

    def policy(self) -> dict[str, Any]:
        data = self.cleaned_data
        policy = {
            "test_fraction": data["test_fraction"],
            "include_imported": data["include_imported"],
            "include_simulated": data["include_simulated"],
            "include_ai": data["include_ai"],
        }
        if data["kind"] in ("preference", "sft"):
            policy["statuses"] = (
                ["accepted"] if data["accepted_only"] else ["submitted", "accepted"]
            )
            policy |= {
                "min_annotator_agreement": data["min_annotator_agreement"],
                "min_gold_accuracy": data["min_gold_accuracy"],
                "exclude_flagged": data["exclude_flagged"],
            }
        if data["kind"] == "preference":
            policy |= {
                "aggregation": data["aggregation"],
                "min_agreement": data["min_agreement"],
                "min_posterior": data["min_posterior"],
                "min_item_agreement": data["min_item_agreement"],
                "keep_ties": data["keep_ties"],
            }
        return policy
