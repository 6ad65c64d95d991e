"""The Celery application of this repository: ``celery -A worker worker -Q turbo_tasks``."""

from worker.celery import app

__all__ = ["app"]
