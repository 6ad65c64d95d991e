"""Celery app for the example site and the test suite, configured from Django settings.

Every ``CELERY_*`` Django setting becomes Celery configuration (``CELERY_BROKER_URL`` →
``broker_url``). Users with their own Celery app need nothing from here: the
``turbo_tasks.deliver`` task is found by ``app.autodiscover_tasks()`` like any app's task.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

app = Celery("worker")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Flower only sees what workers report; without events a task is invisible until Flower
# happens to switch them on.
app.conf.worker_send_task_events = True
app.autodiscover_tasks()
