"""``{% count_render %}``: counts renders of the F3 template in Redis (``bench:renders``),
so the benchmark can check that a worker renders once per action, not once per socket.
``{% task_started_at %}`` and ``{% rendered_at %}``: the worker's ``time.time()`` when the
current task started (Celery's task_prerun; the bench worker runs one task at a time) and at
render, which split F2's latency into stages."""

import time

from celery.signals import task_prerun
from django import template
from django.conf import settings

register = template.Library()

RENDERS_KEY = "bench:renders"
_client = None


@register.simple_tag
def count_render() -> str:
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL)
    _client.incr(RENDERS_KEY)
    return ""


@register.simple_tag
def rendered_at() -> str:
    return f"{time.time():.6f}"


_task_started = 0.0


@task_prerun.connect
def _note_task_start(**kwargs: object) -> None:
    global _task_started
    _task_started = time.time()


@register.simple_tag
def task_started_at() -> str:
    return f"{_task_started:.6f}"
