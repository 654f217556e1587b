# Evaluation runs take the shared background-work lifecycle (jobs.models.BackgroundWork), whose
# column for the worker is `worker_host`.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('evals', '0001_initial'),
    ]

    operations = [
        migrations.RenameField(model_name='evalrun', old_name='host', new_name='worker_host'),
    ]
