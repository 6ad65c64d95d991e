"""Prometheus metrics: what the write path, the workers and the ASGI processes count.

Measured only when ``prometheus_client`` is installed (``pip install
"turbo-tasks[prometheus]"``) and ``TURBO_TASKS["METRICS"]`` is not False; otherwise this
module imports nothing and every recording function returns at once. Each process counts
its own; ``registry()`` is what a scrape of this process reads: with
``PROMETHEUS_MULTIPROC_DIR`` set (Celery's prefork children, several ASGI processes on one
host), the sum over every process that wrote there. turbo_tasks.views serves it to the web,
``TURBO_TASKS["WORKER_METRICS_PORT"]`` from a worker's main process. The names, and the
alerts worth setting on them: docs/howto/metrics.md.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Container, Iterable
from typing import Any

from turbo_tasks import conf

logger = logging.getLogger(__name__)

_prom: Any
try:
    import prometheus_client as _prom
except ImportError:  # the "prometheus" extra is not installed
    _prom = None

# Seconds. Loopback deliveries take milliseconds; a worker backlog or a retry, seconds.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RENDER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Metrics:
    def __init__(self, prom: Any) -> None:
        counter, gauge, histogram = prom.Counter, prom.Gauge, prom.Histogram
        # Write path (web processes, and whatever else saves rows).
        self.jobs = counter(
            "turbo_tasks_jobs", "Jobs published to the broker, in deliver messages.", ["mode"]
        )
        self.published = counter(
            "turbo_tasks_messages_published", "deliver messages published to the broker.", ["mode"]
        )
        self.publish_failures = counter(
            "turbo_tasks_publish_failures",
            "deliver messages that could not be published (mode: direct, outbox, trailing).",
            ["mode"],
        )
        # Worker.
        self.tasks = counter("turbo_tasks_tasks", "deliver tasks run, by outcome.", ["outcome"])
        self.hook_failures = counter(
            "turbo_tasks_hook_failures", "Jobs whose hooks or template rendering raised."
        )
        self.frames_rendered = counter("turbo_tasks_frames_rendered", "Frames rendered.")
        self.frames_skipped = counter(
            "turbo_tasks_frames_skipped", "Frames not rendered: their stream had no subscriber."
        )
        self.frames_pushed = counter(
            "turbo_tasks_frames_pushed", "Frames pushed to the channel layer."
        )
        self.render_seconds = histogram(
            "turbo_tasks_render_seconds",
            "Time one task spent rendering its frames.",
            buckets=RENDER_BUCKETS,
        )
        self.commit_to_push = histogram(
            "turbo_tasks_commit_to_push_seconds",
            "From the commit that recorded a task's jobs to the end of the task's push.",
            buckets=LAG_BUCKETS,
        )
        # ASGI processes.
        self.sockets = gauge("turbo_tasks_sockets", "Open websockets.", multiprocess_mode="livesum")
        self.subscriptions = gauge(
            "turbo_tasks_subscriptions",
            "Stream subscriptions held by open websockets.",
            multiprocess_mode="livesum",
        )
        self.subscribes = counter(
            "turbo_tasks_subscribes",
            "Subscribe requests by outcome: subscribed, or the reason sent with rejected.",
            ["outcome"],
        )
        self.replays = counter(
            "turbo_tasks_replays", "Subscriptions that caught up from the history."
        )
        self.frames_replayed = counter(
            "turbo_tasks_frames_replayed",
            "Frames sent from the history: catch-up on subscribe and gap repairs.",
        )
        self.gap_repairs = counter(
            "turbo_tasks_gap_repairs",
            "History reads for frames a socket missed (cause: skip, a frame arrived ahead of "
            "one; check, the periodic gap check).",
            ["cause"],
        )
        self.resets = counter(
            "turbo_tasks_resets", "reset sent: the history could not serve a page's offset."
        )
        self.revocations = counter(
            "turbo_tasks_revocations", "Subscriptions revoked by user_passes_test."
        )
        self.frames_sent = counter(
            "turbo_tasks_frames_sent", "Live frames sent to websockets (one per subscription)."
        )
        self.push_to_socket = histogram(
            "turbo_tasks_push_to_socket_seconds",
            "From a worker's push to the frame's send on a websocket.",
            buckets=LAG_BUCKETS,
        )


def _create() -> _Metrics | None:
    if _prom is None:
        return None
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and not os.path.isdir(directory):
        # prometheus_client would raise on every value it creates, the write path's too.
        logger.error(
            "turbo_tasks: PROMETHEUS_MULTIPROC_DIR=%r is not a directory: metrics are off in "
            "this process (create it before the processes start)",
            directory,
        )
        return None
    return _Metrics(_prom)


_metrics = _create()


@functools.cache
def _child(metric: Any, label: str) -> Any:
    """``metric.labels(label)``, looked up once (prometheus_client takes a lock for it)."""
    return metric.labels(label)


def _on() -> _Metrics | None:
    if _metrics is None or conf.get("METRICS") is False:
        return None
    return _metrics


def available() -> bool:
    """Whether this process measures: prometheus_client is installed and METRICS is on."""
    return _on() is not None


# -- the write path ----------------------------------------------------------------------------


def published(mode: str, messages: int, jobs: int) -> None:
    """``messages`` deliver messages carrying ``jobs`` jobs went to the broker. Once per
    committed transaction: a few microseconds (label lookups are cached)."""
    if (m := _on()) is not None:
        _child(m.published, mode).inc(messages)
        _child(m.jobs, mode).inc(jobs)


def publish_failed(mode: str) -> None:
    if (m := _on()) is not None:
        _child(m.publish_failures, mode).inc()


# -- the worker ----------------------------------------------------------------------------


def task_done(outcome: str) -> None:
    """``outcome``: ok, retry, invalid, hook_error or gave_up."""
    if (m := _on()) is not None:
        m.tasks.labels(outcome).inc()


def rendered(
    frames: int,
    *,
    groups: Iterable[str],
    subscribed: Container[str],
    failures: int,
    seconds: float,
) -> None:
    """One task rendered ``frames`` in ``seconds`` for broadcasts to ``groups`` (one entry
    per broadcast; those not in ``subscribed`` were skipped: no subscriber), and
    ``failures`` of its jobs' hooks or templates raised."""
    if (m := _on()) is not None:
        m.frames_rendered.inc(frames)
        m.frames_skipped.inc(sum(1 for group in groups if group not in subscribed))
        m.hook_failures.inc(failures)
        m.render_seconds.observe(seconds)


def pushed(frames: int) -> None:
    if (m := _on()) is not None:
        m.frames_pushed.inc(frames)


def pushed_after_commit(committed: Any) -> None:
    """``committed``: the Unix time the publisher stamped on the message (its
    ``turbo_committed`` header), or None for a message without one."""
    if (m := _on()) is not None and isinstance(committed, (int, float)):
        m.commit_to_push.observe(max(0.0, time.time() - committed))


# -- ASGI processes ------------------------------------------------------------------------


def socket_opened(delta: int = 1) -> None:
    if (m := _on()) is not None:
        m.sockets.inc(delta)


def subscriptions_changed(delta: int) -> None:
    if (m := _on()) is not None and delta:
        m.subscriptions.inc(delta)


def replied(kind: str, fields: dict[str, Any]) -> None:
    """Count one server → client frame of the protocol (docs/ref/protocol.md)."""
    if (m := _on()) is None:
        return
    if kind == "subscribed":
        m.subscribes.labels("subscribed").inc()
    elif kind == "rejected":
        m.subscribes.labels(str(fields.get("reason"))).inc()
    elif kind == "reset":
        m.resets.inc()
    elif kind == "revoked":
        m.revocations.inc()


def replayed(frames: int) -> None:
    if (m := _on()) is not None:
        m.replays.inc()
        m.frames_replayed.inc(frames)


def repaired(cause: str, frames: int) -> None:
    if (m := _on()) is not None:
        m.gap_repairs.labels(cause).inc()
        m.frames_replayed.inc(frames)


def frame_sent(pushed_at: Any) -> None:
    """A live frame went to a websocket; ``pushed_at``: the worker's Unix time in the
    channel-layer message (``"pushed"``), if any."""
    if (m := _on()) is not None:
        m.frames_sent.inc()
        if isinstance(pushed_at, (int, float)):
            m.push_to_socket.observe(max(0.0, time.time() - pushed_at))


# -- exposition ----------------------------------------------------------------------------


def registry() -> Any:
    """The collector registry a scrape of this process reads: the multiprocess view of
    ``PROMETHEUS_MULTIPROC_DIR`` when it is set, else the process's own default one."""
    if _prom is None:
        raise RuntimeError(
            'turbo_tasks metrics need prometheus_client: pip install "turbo-tasks[prometheus]"'
        )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        collected = _prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    return _prom.REGISTRY


def serve_worker(pool: str) -> bool:
    """Serve ``/metrics`` from a Celery worker's main process on
    ``TURBO_TASKS["WORKER_METRICS_PORT"]``, if set; False when it does not."""
    port = conf.get("WORKER_METRICS_PORT")
    if port is None:
        return False
    if _on() is None:
        logger.warning(
            "turbo_tasks: WORKER_METRICS_PORT is set but metrics are off "
            "(prometheus_client missing, or TURBO_TASKS['METRICS'] is False)"
        )
        return False
    if pool == "prefork" and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        logger.warning(
            "turbo_tasks: a prefork worker counts in its child processes; without "
            "PROMETHEUS_MULTIPROC_DIR its /metrics on port %s shows none of their work",
            port,
        )
    assert _prom is not None
    _prom.start_http_server(int(port), registry=registry())
    return True


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (multiprocess mode): call from the process that
    outlives it, as prometheus_client asks (Celery's worker_process_shutdown)."""
    if _prom is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
