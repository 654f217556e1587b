# API tokens now belong to core (core 0001 takes over the same table): drop them from this app's
# state only.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('feedback', '0008_arena_reveal_and_fewer_fk_indexes'),
        ('core', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='ApiToken')],
            database_operations=[],
        ),
    ]
