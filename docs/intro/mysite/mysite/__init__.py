# Load the Celery app whenever Django starts, so writes publish their broadcasts through it.
from .celery import app as celery_app

__all__ = ("celery_app",)
