from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("benchapp", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="room", name="stamped", field=models.BooleanField(default=False)
        ),
    ]
