import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="OutboxJob",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("job", models.JSONField()),
                (
                    "created_at",
                    models.DateTimeField(db_index=True, default=django.utils.timezone.now),
                ),
                ("claim", models.UUIDField(blank=True, db_index=True, null=True)),
                ("claimed_until", models.DateTimeField(blank=True, null=True)),
            ],
            options={"verbose_name": "outbox job", "ordering": ["id"]},
        ),
    ]
