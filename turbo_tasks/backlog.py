"""What waits for the workers: the broadcast queue on the broker, and outbox rows no worker
has confirmed. Looked at by ``manage.py turbo_tasks_status`` and the metrics view
(turbo_tasks.views), never on the hot path."""

from __future__ import annotations

import time
from typing import Any

from django.db.models import Count, Min
from django.utils import timezone

from turbo_tasks import _compat, conf, outbox

# The broker's unacknowledged messages (all queues) looked at, oldest first.
UNACKED_SCAN = 1000


def broker_queue(queue: str) -> dict[str, Any]:
    """How many broadcasts wait in ``queue``; on a Redis broker also how many a worker took
    and has not acknowledged yet, and the age of the oldest (kombu keeps them in its
    ``unacked`` hash and the ``unacked_index`` sorted set, scored by delivery time)."""
    from celery import current_app

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    result: dict[str, Any] = {"name": queue}
    if not app.conf.broker_url:
        result["note"] = (
            "no Celery app is configured in this process: import yours in your project's "
            "__init__.py, as Celery's Django guide does"
        )
        return result
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.default_channel
            result["transport"] = connection.transport.driver_type
            if result["transport"] == "redis":
                result["waiting"] = _compat.redis_queue_size(channel, queue)
                result.update(_unacked(channel, queue))
            else:
                try:
                    declared = channel.queue_declare(queue=queue, passive=True)
                except connection.channel_errors:
                    result["note"] = "the queue does not exist yet (no worker declared it)"
                else:
                    result["waiting"] = int(declared.message_count)
                    result["consumers"] = int(declared.consumer_count)
                result.setdefault("note", "unacknowledged messages: only on a Redis broker")
    except Exception as exc:
        result["error"] = repr(exc)
    return result


def _unacked(channel: Any, queue: str) -> dict[str, Any]:
    delivered, capped = _compat.redis_unacked(channel, queue, UNACKED_SCAN)
    oldest = round(time.time() - min(delivered), 1) if delivered else None
    return {
        "unacked": len(delivered),
        "unacked_capped": capped,
        "oldest_unacked_seconds": oldest,
        "visibility_timeout": channel.visibility_timeout,
    }


def outbox_backlog() -> dict[str, Any] | None:
    """Outbox rows not yet confirmed by a worker, per database the relay sweeps: in outbox
    mode, or when rows are there anyway; None otherwise."""
    from turbo_tasks.models import OutboxJob

    mode = conf.get("PUBLISH_MODE")
    databases = []
    try:
        for alias in outbox.relay_databases():
            rows = OutboxJob._base_manager.using(alias)
            found = rows.aggregate(rows=Count("pk"), oldest=Min("created_at"))
            oldest = found["oldest"]
            age = round((timezone.now() - oldest).total_seconds(), 1) if oldest else None
            databases.append({"database": alias, "rows": found["rows"], "oldest_seconds": age})
    except Exception as exc:
        return {"mode": mode, "error": repr(exc)}
    if mode != "outbox" and not any(db["rows"] for db in databases):
        return None
    return {"mode": mode, "databases": databases}
