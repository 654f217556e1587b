"""Review reaches every kind of judgement (issue #17): pairwise and ranking judgements get the
status demonstrations had, a review points at the judgement's assignment (one judgement per
assignment, whatever its kind) instead of at a demonstration, and the review queue's order is
indexed. Projects may let an A/B vote leave out its strength.
"""

import django.db.models.deletion
from django.db import migrations, models

STATUS = models.CharField(
    choices=[("submitted", "Submitted"), ("accepted", "Accepted"), ("rejected", "Rejected")],
    default="submitted",
    max_length=12,
)


def reviews_point_at_assignments(apps, schema_editor):
    Review = apps.get_model("feedback", "Review")
    Demonstration = apps.get_model("feedback", "Demonstration")
    Review.objects.update(
        assignment_id=models.Subquery(
            Demonstration.objects.filter(pk=models.OuterRef("demonstration_id")).values(
                "assignment_id"
            )[:1]
        )
    )


def reviews_point_at_demonstrations(apps, schema_editor):
    Review = apps.get_model("feedback", "Review")
    Demonstration = apps.get_model("feedback", "Demonstration")
    # Reviews of other kinds had no place before this migration.
    Review.objects.exclude(assignment_id__in=Demonstration.objects.values("assignment_id")).delete()
    Review.objects.update(
        demonstration_id=models.Subquery(
            Demonstration.objects.filter(assignment_id=models.OuterRef("assignment_id")).values(
                "pk"
            )[:1]
        )
    )


class Migration(migrations.Migration):
    dependencies = [("feedback", "0015_project_names_in_nfc")]

    operations = [
        migrations.AddField(model_name="pairwisejudgement", name="status", field=STATUS),
        migrations.AddField(model_name="rankingjudgement", name="status", field=STATUS),
        migrations.AddField(
            model_name="project",
            name="strength_optional",
            field=models.BooleanField(
                default=False,
                help_text="Pairwise: an A/B vote may leave out how much better (slightly, "
                "clearly, much), so one key or click casts it, as in Chatbot Arena.",
            ),
        ),
        migrations.AddField(
            model_name="review",
            name="assignment",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="reviews",
                to="feedback.assignment",
            ),
        ),
        migrations.AlterField(
            model_name="review",
            name="demonstration",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="reviews",
                to="feedback.demonstration",
            ),
        ),
        migrations.RunPython(reviews_point_at_assignments, reviews_point_at_demonstrations),
    ]
