"""Publishing ``turbo_tasks.deliver`` messages: the end of the write path.

``send_task`` costs about 0.8 ms per call here, several Redis round trips' worth, and it
runs in the user's commit. With a plain Redis broker we write the same Celery message
ourselves: one ``LPUSH`` of the JSON that kombu's Redis transport would write (task
protocol 2), on a persistent connection pool. Any Celery worker, and Flower, sees an
ordinary task. Everything else (other brokers, SSL, key prefixes, custom serializers, and
projects hooking ``before_task_publish``/``after_task_publish``) goes through
``send_task``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import redis
from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from django.db import DEFAULT_DB_ALIAS

from turbo_tasks import _compat, conf, metrics, tracing
from turbo_tasks.jobs import TASK_NAME, Job, redact

logger = logging.getLogger(__name__)


# turbo_tasks.testing swaps the publisher to run jobs in-process.
publisher: ContextVar[Callable[[list[Job], str], None] | None] = ContextVar(
    "turbo_tasks_publisher", default=None
)


def send_jobs(
    jobs: Sequence[Job],
    using: str = DEFAULT_DB_ALIAS,
    outbox_ids: Sequence[int] = (),
    *,
    countdown: float | None = None,
) -> int:
    """Send ``jobs`` to the broker as ``turbo_tasks.deliver`` messages of at most
    ``MAX_JOBS_PER_MESSAGE`` jobs each (with their outbox rows, in outbox mode), to run
    ``countdown`` seconds from now if given (a debounced refresh's trailing send). The one
    place that publishes ``deliver`` messages. Never raises: returns how many of ``jobs``
    (a prefix) were sent, and logs the rest with their payload when a publish fails.

    Each message carries two headers for the worker's metrics and traces:
    ``turbo_committed``, the Unix time of the publish (for the commit → push lag; not on a
    delayed send), and ``traceparent``, the W3C trace context of the span active here, when
    OpenTelemetry is installed and one is."""
    if not jobs:
        return 0
    override = publisher.get()
    if override is not None:
        override(list(jobs), using)
        return len(jobs)
    from celery import current_app

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    size = conf.get("MAX_JOBS_PER_MESSAGE")
    queue = conf.get("QUEUE")
    kwargs: dict[str, Any] = {} if using == DEFAULT_DB_ALIAS else {"using": using}
    headers: dict[str, Any] = {} if countdown is not None else {"turbo_committed": time.time()}
    if (trace := tracing.traceparent()) is not None:
        headers["traceparent"] = trace
    mode = "trailing" if countdown is not None else conf.get("PUBLISH_MODE")
    for start in range(0, len(jobs), size):
        if outbox_ids:
            kwargs = {**kwargs, "outbox": list(outbox_ids[start : start + size])}
        try:
            publish(app, list(jobs[start : start + size]), kwargs, queue, countdown, headers)
        except Exception:
            # The write has committed; breaking the caller now would not undo it.
            metrics.publish_failed(mode)
            metrics.published(mode, messages=start // size, jobs=start)
            if countdown is not None:
                fate = "the caller sends them now instead"
            elif mode == "outbox":
                fate = "they stay in the outbox for the relay"
            else:
                fate = "these broadcasts are lost (PUBLISH_MODE 'outbox' would keep them)"
            logger.exception(
                "turbo_tasks could not publish %d broadcast job(s) to queue %r; %s: %s",
                len(jobs) - start,
                queue,
                fate,
                json.dumps({"jobs": redact(list(jobs[start:])), "using": using}),
            )
            return start
    metrics.published(mode, messages=-(-len(jobs) // size), jobs=len(jobs))
    return len(jobs)


def readable_args(jobs: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Message options that show the arguments whole, as JSON, in Flower: a re-run through
    Flower's API (or ``turbo_tasks_rerun``) needs them complete, and Celery's default repr
    is cut at 1024 characters. Secret-looking snapshot fields and context keys are masked
    (``turbo_tasks.jobs.redact``)."""
    return {
        "argsrepr": json.dumps([redact(jobs)], separators=(",", ":")),
        "kwargsrepr": json.dumps(kwargs, separators=(",", ":")),
    }


def publish(
    app: Celery,
    jobs: list[Job],
    kwargs: dict[str, Any],
    queue: str,
    countdown: float | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish one ``turbo_tasks.deliver(jobs, **kwargs)`` message, with ``headers``, to
    ``queue``; raises on failure after ``PUBLISH_RETRY_POLICY``."""
    policy = conf.get("PUBLISH_RETRY_POLICY")
    # The fast path writes no ETA header: a delayed task goes through send_task.
    fast = _fast_publisher(app) if conf.get("FAST_PUBLISH") and countdown is None else None
    if fast is None:
        app.send_task(
            TASK_NAME,
            (jobs,),
            kwargs,
            countdown=countdown,
            queue=queue,
            retry=True,
            retry_policy=policy,
            ignore_result=True,
            headers=headers or None,
            **readable_args(jobs, kwargs),
        )
    else:
        fast.publish(jobs, kwargs, queue, policy, headers)


class RedisPublisher:
    """Writes Celery task messages straight to a Redis broker's queue list.

    Each thread keeps one redis-py ``Connection`` (no pool checkout, no retry wrapper per
    command: a third of what ``Redis.lpush`` costs here); the message is kombu's, laid out
    by ``_compat.TaskMessageLayout``.
    """

    def __init__(self, broker_url: str, transport_options: dict[str, Any]) -> None:
        pool = redis.ConnectionPool.from_url(
            broker_url,
            socket_timeout=transport_options.get("socket_timeout"),
            socket_connect_timeout=transport_options.get("socket_connect_timeout"),
        )
        self.connection_class = pool.connection_class
        self.connection_kwargs = pool.connection_kwargs
        self.local = threading.local()
        self.layout = _compat.TaskMessageLayout(TASK_NAME)

    def message(
        self,
        jobs: list[Job],
        kwargs: dict[str, Any],
        queue: str,
        headers: dict[str, Any] | None = None,
    ) -> bytes:
        # Runs in the user's commit, once per transaction: one dump of the jobs.
        jobs_json = json.dumps(jobs, separators=(",", ":"))
        shown = redact(jobs)
        shown_json = jobs_json if shown is jobs else json.dumps(shown, separators=(",", ":"))
        kwargs_json = json.dumps(kwargs, separators=(",", ":")) if kwargs else "{}"
        extra = ",".join(_member(key, value) for key, value in headers.items()) if headers else ""
        return self.layout.encode(queue, jobs_json, shown_json, kwargs_json, extra)

    def _connection(self) -> redis.Connection:
        local = self.local
        if getattr(local, "pid", None) != os.getpid():
            # New thread, or a forked child that must not share its parent's socket.
            local.pid = os.getpid()
            local.connection = self.connection_class(**self.connection_kwargs)
        connection: redis.Connection = local.connection
        return connection

    def publish(
        self,
        jobs: list[Job],
        kwargs: dict[str, Any],
        queue: str,
        policy: dict[str, Any],
        headers: dict[str, Any] | None = None,
    ) -> None:
        connection = self._connection()
        message = self.message(jobs, kwargs, queue, headers)
        command = connection.pack_command("LPUSH", queue, message)
        max_retries = int(policy.get("max_retries", 3))
        delay = float(policy.get("interval_start", 0))
        for attempt in range(max_retries + 1):
            try:
                connection.send_packed_command(command, check_health=False)
                connection.read_response()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                # The socket may hold half a command or an unread reply: start afresh.
                connection.disconnect()
                if attempt == max_retries:
                    raise
            time.sleep(delay)
            delay = min(
                delay + float(policy.get("interval_step", 0.2)),
                float(policy.get("interval_max", 1)),
            )


def _member(key: str, value: Any) -> str:
    """One JSON object member; a float (the commit time) without json.dumps' overhead, as
    this runs in every commit."""
    if type(value) is float:
        return f'"{key}":{value!r}'
    return f"{json.dumps(key)}:{json.dumps(value)}"


_publishers: weakref.WeakKeyDictionary[Celery, RedisPublisher | None] = weakref.WeakKeyDictionary()


def _fast_publisher(app: Celery) -> RedisPublisher | None:
    try:
        publisher = _publishers[app]
    except KeyError:
        publisher = _publishers[app] = _make_publisher(app)
    # A project may connect publish hooks (tracing, auditing) at any time: honour them.
    if before_task_publish.receivers or after_task_publish.receivers:
        return None
    return publisher


def _make_publisher(app: Celery) -> RedisPublisher | None:
    # Celery publishes to broker_write_url when one is set (broker_url is then for reading).
    url = app.conf.broker_write_url or app.conf.broker_url
    options = dict(app.conf.broker_transport_options or {})
    if (
        not _plain_redis(app, url)
        or app.conf.task_serializer != "json"
        or app.conf.task_compression
        or int(app.conf.task_protocol) != 2
        or options.get("global_keyprefix")
        or options.get("sep")
    ):
        return None
    return RedisPublisher(url, options)


def _plain_redis(app: Celery, url: Any) -> bool:
    """Whether ``url`` is a Redis broker turbo_tasks talks to itself: no failover list, no
    SSL."""
    return (
        isinstance(url, str)
        and url.startswith("redis://")
        and ";" not in url  # failover list
        and not app.conf.broker_use_ssl
    )


# -- looking into the queue ------------------------------------------------------------------

_readers: weakref.WeakKeyDictionary[Celery, redis.Redis | None] = weakref.WeakKeyDictionary()


def queue_head(count: int) -> list[tuple[Any, Any]] | None:
    """The ``count`` oldest messages waiting in ``TURBO_TASKS["QUEUE"]``, oldest first, as
    ``(args, kwargs)``; None when the broker is not one turbo_tasks can look into (a Redis
    broker without failover or SSL). The outbox relay uses it to leave alone rows whose
    message is still waiting there."""
    from celery import current_app

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        client = _readers[app]
    except KeyError:
        client = _readers[app] = _make_reader(app)
    if client is None:
        return None
    prefix = str((app.conf.broker_transport_options or {}).get("global_keyprefix") or "")
    return _compat.oldest_redis_messages(client, prefix + conf.get("QUEUE"), count)


def _make_reader(app: Celery) -> redis.Redis | None:
    # Celery consumes from broker_read_url when one is set.
    url = app.conf.broker_read_url or app.conf.broker_url
    if not _plain_redis(app, url):
        return None
    options = app.conf.broker_transport_options or {}
    return redis.Redis.from_url(
        url,
        socket_timeout=options.get("socket_timeout", 5),
        socket_connect_timeout=options.get("socket_connect_timeout", 5),
    )
