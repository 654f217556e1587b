"""Assignment.project: a copy of its item's project, so that an annotator's work in one project
is an index range of its own (the task screen's progress no longer scans their work in every
project). Added empty, filled from the items, then required."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

FILL = """
    UPDATE feedback_assignment SET project_id = (
        SELECT i.project_id FROM feedback_item i WHERE i.id = feedback_assignment.item_id
    )
"""


class Migration(migrations.Migration):
    dependencies = [
        ("feedback", "0021_item_priority"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="assignment",
            name="project",
            field=models.ForeignKey(
                db_index=False,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="feedback.project",
            ),
        ),
        migrations.RunSQL(FILL, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="assignment",
            name="project",
            field=models.ForeignKey(
                db_index=False,
                editable=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="feedback.project",
            ),
        ),
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(
                fields=["annotator", "project", "status"], name="assignment_mine_by_project"
            ),
        ),
    ]
