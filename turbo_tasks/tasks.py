"""The Celery task. Thin: the work is in turbo_tasks.delivery."""

from __future__ import annotations

import contextlib
import random
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections

from turbo_tasks import conf, delivery, layers, metrics, presence, tracing
from turbo_tasks import outbox as outbox_rows
from turbo_tasks.exceptions import TRANSIENT_ERRORS, DeliveryFailed, HookError, InvalidJob
from turbo_tasks.jobs import TASK_NAME, validate_outbox
from turbo_tasks.publish import readable_args


@shared_task(  # type: ignore[call-overload]  # celery-types lacks retry_on_worker_lost
    bind=True,
    name=TASK_NAME,
    ignore_result=True,
    # Acknowledge after running, so a task whose worker dies is delivered again.
    acks_late=True,
    reject_on_worker_lost=True,
    retry_on_worker_lost=True,
    max_retries=None,  # bounded by TURBO_TASKS["MAX_RETRIES"] below
    # Reject a message whose body is malformed instead of dying on it (see _guard).
    Strategy="turbo_tasks._guard:strategy",
)
def deliver(
    self: Task,
    jobs: list[dict[str, Any]],
    using: str = DEFAULT_DB_ALIAS,
    outbox: list[int] | None = None,
) -> int:
    """Run the ModelStream hooks for ``jobs`` and push the frames they send.

    ``jobs`` are the JSON jobs one committed transaction recorded, e.g.
    ``[{"action": "save", "model": "chat.message", "pk": 5, "created": true}]``.
    Re-running it with the same arguments (e.g. from Flower) delivers again. Malformed jobs
    fail at once (``InvalidJob``); Redis and database outages are retried with backoff.
    In outbox mode ``outbox`` names the rows the jobs came from: they are deleted once the
    frames are pushed (or can never be), and published again by a relay if not.
    """
    outbox = validate_outbox(outbox)
    try:
        # The publisher's headers (turbo_tasks.publish.send_jobs); none on a hand-made run.
        count = len(jobs) if isinstance(jobs, list) else 0  # not a list: InvalidJob below
        with tracing.delivery_span(self.request.get("traceparent"), count):
            sent = delivery.deliver(jobs, using)
    except (InvalidJob, HookError) as exc:
        metrics.task_done("invalid" if isinstance(exc, InvalidJob) else "hook_error")
        outbox_rows.confirm_soon(outbox, using)  # publishing them again cannot help
        raise
    except TRANSIENT_ERRORS as exc:
        if isinstance(exc, (OperationalError, InterfaceError)):
            # With CELERY_DB_REUSE_MAX the connection outlives the task: make the retry
            # (and the next task) open a fresh one instead of reusing a broken one.
            with contextlib.suppress(Exception):
                connections[using].close()
        retries = self.request.retries
        if retries >= conf.get("MAX_RETRIES"):
            metrics.task_done("gave_up")
            raise DeliveryFailed(
                f"turbo_tasks.deliver gave up after {retries} retries: {exc!r}"
            ) from exc
        metrics.task_done("retry")
        try:
            raise self.retry(
                exc=exc,
                countdown=backoff(retries),
                max_retries=None,
                **readable_args(jobs, self.request.kwargs or {}),  # type: ignore[arg-type]
            )
        except Reject as rejected:
            # The retry could not be published (the broker is down too). Put the message
            # back instead of dropping it; if even that fails it stays unacknowledged and
            # the broker redelivers it after its visibility timeout.
            raise Reject(exc, requeue=True) from rejected
    metrics.task_done("ok")
    metrics.pushed_after_commit(self.request.get("turbo_committed"))
    outbox_rows.confirm_soon(outbox, using)
    return sent


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter, capped by TURBO_TASKS["RETRY_BACKOFF_MAX"]."""
    ceiling = min(conf.get("RETRY_BACKOFF_MAX"), conf.get("RETRY_BACKOFF") * 2**retries)
    return float(random.uniform(ceiling / 2, ceiling))


def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    """A Celery router sending ``turbo_tasks.deliver`` to ``TURBO_TASKS["QUEUE"]``, for
    messages published without an explicit queue (e.g. re-runs from Flower's API)::

        CELERY_TASK_ROUTES = ("turbo_tasks.tasks.route",)
    """
    if name == TASK_NAME:
        return {"queue": conf.get("QUEUE")}
    return None


_relay_stop: Any = None


@worker_ready.connect
def _start_outbox_relay(**kwargs: Any) -> None:
    global _relay_stop
    if conf.get("PUBLISH_MODE") == "outbox" and conf.get("OUTBOX_RELAY_IN_WORKER"):
        _relay_stop = outbox_rows.start_relay_thread()


@worker_shutdown.connect
def _stop_outbox_relay(**kwargs: Any) -> None:
    if _relay_stop is not None:
        _relay_stop.set()
    outbox_rows.flush_confirmations()  # solo and thread pools: the tasks ran here


@worker_ready.connect
def _announce_worker(sender: Any = None, **kwargs: Any) -> None:
    # For turbo_tasks_status: the main process announces the worker (docs/howto/status.md).
    presence.start_worker(sender)


@worker_ready.connect
def _serve_metrics(sender: Any = None, **kwargs: Any) -> None:
    # WORKER_METRICS_PORT: /metrics from the main process (docs/howto/metrics.md).
    pool = type(getattr(sender, "pool", None)).__module__  # celery.concurrency.prefork, …
    metrics.serve_worker(pool.rpartition(".")[2])


@worker_shutdown.connect
def _withdraw_worker(**kwargs: Any) -> None:
    presence.stop("worker")


@worker_process_shutdown.connect
def _close_channel_layer_loops(**kwargs: Any) -> None:
    # A prefork child leaves through os._exit: atexit handlers do not run there.
    outbox_rows.flush_confirmations()
    layers.close_loops()
