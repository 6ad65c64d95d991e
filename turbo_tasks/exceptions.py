"""Every exception turbo_tasks raises that users may want to catch."""

from __future__ import annotations

import asyncio

import redis.exceptions
from django.db import InterfaceError, OperationalError

# Failures of Redis (the channel layer, the history) or the database that a later attempt
# may not meet: the worker retries them, wherever they are raised (a reload, a hook, a
# template's lazy foreign-key load, the push).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,  # the channel layer did not answer in time (Python 3.10)
    OperationalError,
    InterfaceError,
)


class StreamRejected(Exception):
    """A signed name that does not resolve to a stream the socket may join.

    ``reason`` is what the client is told in ``{"type": "rejected", "reason": …}``:
    ``invalid_signature``, ``expired``, ``unknown_stream`` or ``forbidden``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidJob(ValueError):
    """A task payload that can never succeed (edited by hand, or from an incompatible
    version); the message names the job and the field. Never retried."""


class HookError(Exception):
    """One or more ``on_save``/``on_delete`` hooks (or their templates) raised; the frames of
    the other jobs in the same task were still delivered."""


class DeliveryFailed(Exception):
    """Retries ran out; the task ends in FAILURE and can be re-run with the same args."""
