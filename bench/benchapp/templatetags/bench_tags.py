"""``{% count_render %}``: counts renders of the F3 template in Redis (``bench:renders``),
so the benchmark can check that a worker renders once per action, not once per socket.
``{% rendered_at %}``: the worker's ``time.time()`` at render, which splits F2's latency into
commit → render and render → socket."""

import time

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
