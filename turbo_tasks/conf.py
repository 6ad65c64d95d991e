"""The ``TURBO_TASKS`` setting, read lazily so ``override_settings`` works."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    # Celery queue the broadcast task is published to and the worker consumes.
    "QUEUE": "turbo_tasks",
    # Alias in CHANNEL_LAYERS that workers push frames to and consumers listen on.
    "CHANNEL_LAYER": "default",
    # Salt for signed stream names; change it to invalidate every name handed out so far.
    "SIGNING_SALT": "turbo_tasks.stream",
    # Seconds a signed stream name stays valid (None: forever, as long as SECRET_KEY holds).
    "SIGNED_NAME_MAX_AGE": None,
    # Jobs per Celery message; a larger transaction is split into several messages.
    "MAX_JOBS_PER_MESSAGE": 1000,
    # Subscriptions one websocket may hold at once.
    "MAX_SUBSCRIPTIONS_PER_SOCKET": 100,
    # Catch-up: frames kept per stream for pages that reconnect or subscribe late, and for
    # how long (seconds). A page rendered with a stream counts as watching it that long.
    # HISTORY_LENGTH = 0 turns catch-up off.
    "HISTORY_LENGTH": 200,
    "HISTORY_SECONDS": 600,
    # A page whose socket stays open matches the database at most this many seconds after
    # a change, whatever the channel layer dropped: each ASGI process checks its sockets'
    # streams twice per period (one Redis round trip per shard) and replays what is lost.
    "GAP_CHECK_SECONDS": 5,
    # Seconds between re-adding a socket to its groups (channels_redis drops members
    # after its group_expiry, 86400 s by default); keep it well below that.
    "GROUP_REFRESH_SECONDS": 3600,
    # refresh(debounce=True) and ModelStream Meta.broadcasts_refreshes: at most one refresh
    # per stream per this many seconds, across all workers, sent at the end of the window.
    "REFRESH_DEBOUNCE_SECONDS": 0.5,
    # Largest client frame (characters) the consumer will parse.
    "MAX_FRAME_SIZE": 16384,
    # Worker: retries of a delivery that hit a Redis or database outage, and their backoff
    # (seconds, doubled per retry, jittered, capped). Keep the cap below the broker's
    # visibility timeout.
    "MAX_RETRIES": 8,
    "RETRY_BACKOFF": 0.5,
    "RETRY_BACKOFF_MAX": 30,
    # "direct": publish after commit, log and lose the broadcast if the broker is down.
    # "outbox": also write each job in the transaction; a relay publishes what is left.
    "PUBLISH_MODE": "direct",
    # Outbox: rows younger than this are left to the committing process.
    "OUTBOX_RELAY_AGE": 5,
    # Outbox: seconds between relay sweeps, and how long a publisher owns claimed rows.
    "OUTBOX_RELAY_INTERVAL": 2,
    "OUTBOX_CLAIM_SECONDS": 60,
    # Outbox: the databases the relay sweeps (None: the router's db_for_write for the
    # outbox table). List every database whose writes broadcast in outbox mode.
    "OUTBOX_DATABASES": None,
    # Outbox: run the relay in a thread of every Celery worker (or use turbo_tasks_relay).
    "OUTBOX_RELAY_IN_WORKER": True,
    # Web: publish with one LPUSH of a standard Celery message when the broker is plain
    # Redis (falls back to Celery's send_task otherwise, or when publish signals are connected).
    "FAST_PUBLISH": True,
    # Web: how long a publish at commit may retry a broker outage before giving up.
    "PUBLISH_RETRY_POLICY": {
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    },
    # Prometheus metrics (turbo_tasks.metrics): measured when prometheus_client is
    # installed (the "prometheus" extra), unless this is False.
    "METRICS": True,
    # Worker: port on which the Celery worker's main process serves /metrics (None: it
    # serves none; scrape it some other way). Prefork pools need PROMETHEUS_MULTIPROC_DIR.
    "WORKER_METRICS_PORT": None,
    # Web: a bearer token the metrics view requires (None: the view answers anyone who can
    # reach its URL; mount it where only the scraper can).
    "METRICS_TOKEN": None,
    # OpenTelemetry (turbo_tasks.tracing): when it is installed, carry the writer's trace
    # context to the worker's delivery span, unless this is False.
    "TRACING": True,
}


def get(name: str) -> Any:
    """Return one ``TURBO_TASKS`` value, falling back to its default."""
    user = getattr(settings, "TURBO_TASKS", None) or {}
    return user.get(name, DEFAULTS[name])


def unknown_keys() -> list[str]:
    user = getattr(settings, "TURBO_TASKS", None) or {}
    if not isinstance(user, dict):
        raise ImproperlyConfigured(
            f"TURBO_TASKS must be a dict, not {type(user).__name__}; "
            f"allowed keys: {', '.join(DEFAULTS)}."
        )
    return sorted(set(user) - set(DEFAULTS))
