from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("turbo_tasks", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="outboxjob",
            name="published_at",
            field=models.DateTimeField(blank=True, db_index=True, null=True),
        ),
    ]
