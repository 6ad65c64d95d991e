"""The Celery task. Thin: the work is in turbo_tasks.delivery."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import DEFAULT_DB_ALIAS

from turbo_tasks import conf, delivery


@shared_task(name="turbo_tasks.deliver", ignore_result=True)
def deliver(jobs: list[dict[str, Any]], using: str = DEFAULT_DB_ALIAS) -> int:
    """Run the ModelStream hooks for ``jobs`` and push the frames they send.

    ``jobs`` are the JSON jobs one committed transaction recorded, e.g.
    ``[{"action": "save", "model": "chat.message", "pk": 5, "created": true}]``.
    Re-running it with the same arguments (e.g. from Flower) delivers again.
    """
    return delivery.deliver(jobs, using)


def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """A Celery router sending ``turbo_tasks.deliver`` to ``TURBO_TASKS["QUEUE"]``, for
    messages published without an explicit queue (e.g. re-runs from Flower's API)::

        CELERY_TASK_ROUTES = ("turbo_tasks.tasks.route",)
    """
    if name == "turbo_tasks.deliver":
        return {"queue": conf.get("QUEUE")}
    return None
