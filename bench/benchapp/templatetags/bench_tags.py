"""``{% count_render %}``: counts renders of the F3 template in Redis (``bench:renders``),
so the benchmark can check that a worker renders once per action, not once per socket."""

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
