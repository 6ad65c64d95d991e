"""The turbo_tasks example: a small chat site (``python example/manage.py …``).

The Celery app is loaded here, as Celery's Django guide does, so the web process publishes
broadcasts through the configured broker (see turbo_tasks.W004).
"""

from worker import app as celery_app

__all__ = ("celery_app",)
