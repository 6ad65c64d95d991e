"""``{% load turbo_streams %}``, turbo-django's library name: the same tags as
``{% load turbo_tasks %}`` (``turbo_subscribe``, ``turbo_tasks_script``)."""

from turbo_tasks.templatetags.turbo_tasks import register

__all__ = ["register"]
