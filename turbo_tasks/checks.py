"""System checks for misconfigurations that make broadcasts vanish silently."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from turbo_tasks import _compat, conf

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"
REDIS_CORE_LAYER = "channels_redis.core.RedisChannelLayer"


def register() -> None:
    checks.register(check_settings, "turbo_tasks")
    checks.register(check_channel_layer, "turbo_tasks")
    checks.register(check_catch_up, "turbo_tasks")
    checks.register(check_celery_app, "turbo_tasks")
    checks.register(check_sender_middleware, "turbo_tasks")


MIDDLEWARE = "turbo_tasks.middleware.TurboTasksMiddleware"


def check_sender_middleware(**kwargs: Any) -> list[checks.CheckMessage]:
    from turbo_tasks.registry import registry

    sparing = sorted(
        name for name in registry.names() if getattr(registry.get(name), "exclude_sender", False)
    )
    if sparing and MIDDLEWARE not in getattr(settings, "MIDDLEWARE", ()):
        return [
            checks.Warning(
                f"Stream(s) {', '.join(sparing)} say Meta.exclude_sender = True, but no request "
                f"names its sender: {MIDDLEWARE} is not in MIDDLEWARE, so every frame reaches "
                f"every socket, the sender's too.",
                hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE.",
                id="turbo_tasks.W006",
            )
        ]
    return []


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_VALUE_RULES: list[tuple[str, str, Any]] = [
    ("MAX_JOBS_PER_MESSAGE", "a positive integer", lambda v: type(v) is int and v > 0),
    ("MAX_SUBSCRIPTIONS_PER_SOCKET", "a positive integer", lambda v: type(v) is int and v > 0),
    ("MAX_FRAME_SIZE", "a positive integer", lambda v: type(v) is int and v > 0),
    ("HISTORY_LENGTH", "an integer >= 0", lambda v: type(v) is int and v >= 0),
    ("HISTORY_SECONDS", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    ("GROUP_REFRESH_SECONDS", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    ("GAP_CHECK_SECONDS", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    ("REFRESH_DEBOUNCE_SECONDS", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    ("MAX_RETRIES", "an integer >= 0", lambda v: type(v) is int and v >= 0),
    ("RETRY_BACKOFF", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    ("RETRY_BACKOFF_MAX", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    (
        "SIGNED_NAME_MAX_AGE",
        "None or a number of seconds > 0",
        lambda v: v is None or (_number(v) and v > 0),
    ),
    ("PUBLISH_MODE", "'direct' or 'outbox'", lambda v: v in ("direct", "outbox")),
    ("OUTBOX_RELAY_AGE", "a number of seconds >= 0", lambda v: _number(v) and v >= 0),
    ("OUTBOX_RELAY_INTERVAL", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    ("OUTBOX_CLAIM_SECONDS", "a number of seconds > 0", lambda v: _number(v) and v > 0),
    (
        "OUTBOX_DATABASES",
        "None or a list of database aliases",
        lambda v: v is None or (isinstance(v, list) and all(a in settings.DATABASES for a in v)),
    ),
    ("PUBLISH_RETRY_POLICY", "a dict of kombu retry_policy options", lambda v: isinstance(v, dict)),
    ("METRICS", "True or False", lambda v: isinstance(v, bool)),
    ("TRACING", "True or False", lambda v: isinstance(v, bool)),
    (
        "WORKER_METRICS_PORT",
        "None or a TCP port (1-65535)",
        lambda v: v is None or (type(v) is int and 0 < v < 65536),
    ),
    (
        "METRICS_TOKEN",
        "None or a non-empty string",
        lambda v: v is None or (isinstance(v, str) and v != ""),
    ),
]


def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    try:
        unknown = conf.unknown_keys()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="turbo_tasks.E001")]
    errors: list[checks.CheckMessage] = []
    if unknown:
        errors.append(
            checks.Error(
                f"Unknown TURBO_TASKS key(s): {', '.join(unknown)}.",
                hint=f"Allowed keys: {', '.join(conf.DEFAULTS)}.",
                id="turbo_tasks.E005",
            )
        )
    for key, rule, valid in _VALUE_RULES:
        value = conf.get(key)
        if not valid(value):
            errors.append(
                checks.Error(
                    f"TURBO_TASKS[{key!r}] must be {rule}, not {value!r}.", id="turbo_tasks.E006"
                )
            )
    return errors


def _settings_unreadable() -> bool:
    """``TURBO_TASKS`` is not a dict: turbo_tasks.E001 says so, the other checks stay quiet."""
    try:
        conf.unknown_keys()
    except ImproperlyConfigured:
        return True
    return False


def check_channel_layer(**kwargs: Any) -> list[checks.CheckMessage]:
    if _settings_unreadable():
        return []
    alias = conf.get("CHANNEL_LAYER")
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    if alias not in layers:
        return [
            checks.Error(
                f"CHANNEL_LAYERS has no {alias!r} layer, so workers have nowhere to send frames "
                f"and browsers never receive them.",
                hint="Add a channels_redis layer, e.g. CHANNEL_LAYERS = {'default': {'BACKEND': "
                "'channels_redis.core.RedisChannelLayer', 'CONFIG': {'hosts': [REDIS_URL]}}}, "
                "or point TURBO_TASKS['CHANNEL_LAYER'] at an existing alias.",
                id="turbo_tasks.E002",
            )
        ]
    backend = layers[alias].get("BACKEND", "")
    eager = getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False)
    if backend == IN_MEMORY_LAYER and not eager:
        return [
            checks.Error(
                f"Channel layer {alias!r} is the in-memory layer, but broadcasts are sent by "
                f"Celery workers in other processes: their frames never reach this process's "
                f"websockets.",
                hint="Use channels_redis (RedisChannelLayer or RedisPubSubChannelLayer), shared "
                "by the web and worker processes.",
                id="turbo_tasks.E003",
            )
        ]
    hosts = _hosts(layers[alias].get("CONFIG", {}))
    if backend == REDIS_CORE_LAYER and any(_times_out_while_blocking(h) for h in hosts):
        return [
            checks.Warning(
                f"Channel layer {alias!r}: its Redis socket timeout (redis-py's default is "
                f"{_compat.redis_default_socket_timeout()}s) is not longer than channels_redis "
                f"blocks waiting for a message ({_compat.blocking_receive_seconds()}s), so "
                f"reads on idle websockets time out. turbo_tasks' consumer copes (it lengthens "
                f"a timeout you did not set and reads again after one), but other consumers "
                f"close with 1011, and a message whose reply meets the timeout is lost.",
                hint="Give each host a longer socket timeout: 'hosts': [{'address': "
                "REDIS_URL, 'socket_timeout': 15}].",
                id="turbo_tasks.W005",
            )
        ]
    return []


def check_catch_up(**kwargs: Any) -> list[checks.CheckMessage]:
    """Catch-up off is a warning, never silence: pages then miss what is committed while
    their socket is down or not yet subscribed (ARCHITECTURE.md, "Catch-up")."""
    if _settings_unreadable():
        return []
    length = conf.get("HISTORY_LENGTH")
    if length == 0 and type(length) is int:
        return [
            checks.Warning(
                "TURBO_TASKS['HISTORY_LENGTH'] is 0, so catch-up is off: frames carry no "
                "offsets and streams keep no history. A page misses every change committed "
                "while its socket reconnects (a deploy, a network blip, a Redis restart) or "
                "before it subscribes, and keeps looking live.",
                hint="Remove HISTORY_LENGTH (default 200) or set it above 0; lower "
                "HISTORY_SECONDS instead if the memory it takes is the concern.",
                id="turbo_tasks.W007",
            )
        ]
    alias = conf.get("CHANNEL_LAYER")
    config = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(alias)
    backend = config.get("BACKEND", "") if isinstance(config, dict) else ""
    if not backend or (backend == IN_MEMORY_LAYER and not _eager()):
        return []  # turbo_tasks.E002, E003
    try:
        layer_class = import_string(backend)
    except ImportError:
        return []  # channels reports it at the first use of the layer
    if isinstance(layer_class, type) and issubclass(layer_class, _compat.REDIS_LAYERS):
        return []
    return [
        checks.Warning(
            f"Channel layer {alias!r} ({backend}) is not one of channels_redis' layers, so "
            f"catch-up cannot work on it: turbo_tasks keeps each stream's history beside its "
            f"group in the layer's Redis, and does not know where this layer keeps groups. "
            f"Frames carry no offsets; a page misses every change committed while its socket "
            f"reconnects or before it subscribes.",
            hint="Use channels_redis.core.RedisChannelLayer or "
            "channels_redis.pubsub.RedisPubSubChannelLayer.",
            id="turbo_tasks.W008",
        )
    ]


def _eager() -> bool:
    return bool(getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False))


def _times_out_while_blocking(host: dict[str, Any]) -> bool:
    timeout = host.get("socket_timeout", _compat.redis_default_socket_timeout())
    return timeout is not None and timeout <= _compat.blocking_receive_seconds()


def _hosts(config: dict[str, Any]) -> list[dict[str, Any]]:
    hosts = config.get("hosts") or [("localhost", 6379)]
    return [host if isinstance(host, dict) else {} for host in hosts]


def check_celery_app(**kwargs: Any) -> list[checks.CheckMessage]:
    from celery import current_app

    # With no app of the project's, Celery makes a fallback app named "default".
    if current_app.main == "default" and not current_app.conf.broker_url:
        return [
            checks.Warning(
                "No Celery app is loaded in this process, so broadcasts would be published with "
                "Celery's defaults (an AMQP broker on localhost).",
                hint="Load your Celery app at startup, as Celery's Django guide does: "
                "`from .celery import app as celery_app` in your project's __init__.py.",
                id="turbo_tasks.W004",
            )
        ]
    return []
