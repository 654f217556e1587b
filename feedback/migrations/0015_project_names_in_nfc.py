"""Project names are stored in NFC (feedback.validators.normalise_name): existing names too, so
that a new name is refused as a duplicate of one that looks the same. Two existing names that
become the same keep apart with a numbered suffix."""

import unicodedata

from django.db import migrations


def names_to_nfc(apps, schema_editor):
    Project = apps.get_model("feedback", "Project")
    taken = set(Project.objects.values_list("name", flat=True))
    for project in Project.objects.order_by("pk"):
        name = unicodedata.normalize("NFC", project.name).strip()
        if name == project.name:
            continue
        taken.discard(project.name)
        candidate, n = name, 2
        while candidate in taken:
            suffix = f" ({n})"
            candidate, n = name[: 200 - len(suffix)] + suffix, n + 1
        project.name = candidate
        project.save(update_fields=["name"])
        taken.add(candidate)


class Migration(migrations.Migration):
    dependencies = [("feedback", "0014_item_metadata")]

    operations = [migrations.RunPython(names_to_nfc, migrations.RunPython.noop)]
