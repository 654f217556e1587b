"""Imported labels belong to their source (feedback/services/imports/owner.py). Those imported
before this migration were credited to the admin who uploaded them, on a submitted assignment
that held one of their item's overlap slots: they move to the imported-labels owner with the
status `imported`, and those items' submitted_count is counted again from their human slots."""

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import migrations, models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce

# IMPORTED_LABELS_USERNAME as it was when this ran: a migration keeps its own values.
OWNER = "imported labels"
JUDGEMENTS = ("Demonstration", "PairwiseJudgement", "RankingJudgement")


def reown_imported_labels(apps, schema_editor):
    Assignment = apps.get_model("feedback", "Assignment")
    Item = apps.get_model("feedback", "Item")
    imported = [
        apps.get_model("feedback", name).objects.filter(origin="imported") for name in JUDGEMENTS
    ]
    if not any(judgements.exists() for judgements in imported):
        return
    User = apps.get_model(settings.AUTH_USER_MODEL)
    owner, _ = User.objects.get_or_create(
        username=OWNER, defaults={"is_active": False, "password": make_password(None)}
    )
    for judgements in imported:
        Assignment.objects.filter(pk__in=judgements.values("assignment_id")).update(
            annotator=owner, status="imported"
        )
        judgements.update(annotator=owner)
    # submitted_count counts the slots annotators hold: submitted assignments, nothing else.
    human = (
        Assignment.objects.filter(item=OuterRef("pk"), status="submitted")
        .order_by()
        .values("item")
        .annotate(n=Count("pk"))
        .values("n")
    )
    with_imports = Assignment.objects.filter(status="imported").values("item_id")
    Item.objects.filter(pk__in=with_imports).update(
        submitted_count=Coalesce(Subquery(human), 0)
    )


class Migration(migrations.Migration):
    dependencies = [
        ("feedback", "0017_review_points_at_the_assignment"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="assignment",
            name="status",
            field=models.CharField(
                choices=[
                    ("leased", "Leased"),
                    ("submitted", "Submitted"),
                    ("skipped", "Skipped"),
                    ("imported", "Imported label"),
                ],
                default="leased",
                max_length=12,
            ),
        ),
        migrations.RunPython(reown_imported_labels, migrations.RunPython.noop),
    ]
