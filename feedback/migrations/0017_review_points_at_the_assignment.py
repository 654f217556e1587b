"""Second half of 0014, in its own transaction: PostgreSQL refuses to alter a table whose rows
were just updated in the same transaction while their foreign-key checks are still pending."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("feedback", "0016_review_every_kind_and_optional_strength")]

    operations = [
        migrations.AlterField(
            model_name="review",
            name="assignment",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="reviews",
                to="feedback.assignment",
            ),
        ),
        migrations.RemoveField(model_name="review", name="demonstration"),
        migrations.AddIndex(
            model_name="demonstration",
            index=models.Index(fields=["status", "updated_at"], name="demonstration_review"),
        ),
        migrations.AddIndex(
            model_name="pairwisejudgement",
            index=models.Index(fields=["status", "updated_at"], name="pairwisejudgement_review"),
        ),
        migrations.AddIndex(
            model_name="rankingjudgement",
            index=models.Index(fields=["status", "updated_at"], name="rankingjudgement_review"),
        ),
    ]
