import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
# Celery reads the CELERY_* settings from settings.py.
app.config_from_object("django.conf:settings", namespace="CELERY")
# Finds the tasks.py of installed apps: turbo_tasks.deliver among them.
app.autodiscover_tasks()
