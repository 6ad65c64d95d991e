"""Every exception turbo_tasks raises that users may want to catch."""

from __future__ import annotations


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
