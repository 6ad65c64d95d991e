"""The worker-side guard of ``turbo_tasks.deliver``: a message whose body is not Celery's
``[args, kwargs, embed]`` is rejected instead of killing the worker.

Celery (5.7) builds a task's request in the consumer, outside the handlers it has for bad
messages: those catch an undecodable body or a disallowed content type, not a body of the
wrong shape. ``{}``, ``[1]``, ``"x"``, ``null``, two or four items raise a ``ValueError`` or
``TypeError`` in ``celery.worker.strategy`` / ``celery.worker.request.Request.__init__``,
an embed that is not an object in ``celery.app.trace.fast_trace_task`` (solo pool), a
``timelimit`` header that is not a pair in ``Request.execute_using_pool``. The worker logs
"Unrecoverable error" and stops, and the message it had not acknowledged goes back to the
queue for the next worker, which dies the same way. A missing ``id`` header raises a
``KeyError`` that the consumer takes for a lost connection: it reconnects, gets the message
back and fails again, forever.

:func:`strategy` wraps Celery's default strategy and checks the body first. Celery decodes
the body there anyway (``message.payload`` is cached), so a valid message costs a few
``isinstance`` calls and goes on unchanged. A bad one is rejected without requeue, with
one ERROR line naming the task id and what was wrong.

Not covered: a ``body`` that is not base64, or ``headers`` that are not an object. kombu
fails on those while turning the Redis entry into a message, before any task code runs;
the worker stops once, but the entry is already off the queue and is not redelivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import InvalidTaskError

logger = logging.getLogger(__name__)

#: ``task_message_handler(message, body, ack, reject, callbacks)``, as Celery's
#: strategies return it.
MessageHandler = Callable[..., Any]


def strategy(task: Task[Any, Any], app: Celery, consumer: Any, **kwargs: Any) -> MessageHandler:
    """Celery's default strategy for ``task``, behind a check of each message's shape.

    Wired in as ``@shared_task(Strategy="turbo_tasks._guard:strategy")``, so the task keeps
    the app's own task class."""
    from celery.worker.strategy import default  # worker-only: not imported by publishers

    handle: MessageHandler = default(task, app, consumer, **kwargs)
    connection_errors: tuple[type[BaseException], ...] = tuple(consumer.connection_errors)

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        # ``body`` is None for protocol 2, whose body Celery has not decoded yet; protocol 1
        # bodies were decoded and checked by Celery's consumer.
        if body is None:
            problem = problem_with(message.payload, message.headers)
            if problem is not None:
                # Celery's publishers and ours set correlation_id to the task id as well.
                task_id = message.headers.get("id") or message.properties.get("correlation_id")
                logger.error(
                    "%s: rejected message %s (not requeued): %s", task.name, task_id, problem
                )
                reject(logger, connection_errors, False)
                signals.task_rejected.send(
                    sender=consumer, message=message, exc=InvalidTaskError(problem)
                )
                return None
        return handle(message, body, ack, reject, callbacks, **kw)

    return guarded


def problem_with(payload: Any, headers: dict[str, Any]) -> str | None:
    """What makes a protocol 2 message unfit for Celery's request, or None if nothing."""
    if isinstance(payload, (list, tuple)) and len(payload) == 3:
        args, kwargs, embed = payload
        if not isinstance(args, (list, tuple)):
            return f"args must be a list, not {_kind(args)}"
        if not isinstance(kwargs, dict):
            return f"kwargs must be an object, not {_kind(kwargs)}"
        if not isinstance(embed, dict):
            return f"embed must be an object, not {_kind(embed)}"
    elif isinstance(payload, dict) and "args" in payload:
        return None  # a protocol 1 body with protocol 2 headers: Celery converts and checks it
    else:
        return f"body must be a list [args, kwargs, embed], not {_kind(payload)}"
    if headers.get("id") is None:
        return "the 'id' header is missing"
    timelimit = headers.get("timelimit")
    if timelimit and not (isinstance(timelimit, (list, tuple)) and len(timelimit) == 2):
        return f"the 'timelimit' header must be [soft, hard], not {_kind(timelimit)}"
    return None


_KINDS = {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    return "null" if value is None else _KINDS.get(type(value), f"a {type(value).__name__}")
