"""Item.priority: which open items the queue starts first (active sampling, loop.active).

The queue index gains the column between submitted_count and id, in the queue's own order, so
the next open item is still the first index entry that passes the filters. Adding a float
column with a constant default is a catalogue change on PostgreSQL 11+ (no table rewrite); the
index is rebuilt (seconds per million items).
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('feedback', '0020_ai_drafts_and_ai_annotators'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='item',
            name='item_queue_order',
        ),
        migrations.AddField(
            model_name='item',
            name='priority',
            field=models.FloatField(default=0.0),
        ),
        migrations.AddIndex(
            model_name='item',
            index=models.Index(fields=['project', '-submitted_count', '-priority', 'id'], name='item_queue_order'),
        ),
    ]
