"""``turbo.suppress()``: record no broadcast for what runs inside.

Checked where jobs are recorded (turbo_tasks.batching, turbo_tasks.bulk) and where stream
actions send (turbo_tasks.streams): a write or action inside it records nothing, so nothing
is published for it at commit either.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar, cast

# How many suppress() blocks are open. A ContextVar, so each thread and each asyncio task has
# its own; a task starts with a copy of its creator's (and sync_to_async carries it along).
_suppress_depth: ContextVar[int] = ContextVar("turbo_tasks_suppress_depth", default=0)

_F = TypeVar("_F", bound=Callable[..., Any])


def suppressed() -> bool:
    """Whether the current thread or asyncio task is inside ``turbo.suppress()``."""
    return _suppress_depth.get() > 0


def suppress() -> _Suppress:
    """Record no broadcast for what runs inside, like turbo-rails'
    ``suppressing_turbo_broadcasts``::

        with turbo.suppress():
            message.save()                          # no save job
            room.stream.append(text="hi", id="log")  # no <turbo-stream> frame

        @turbo.suppress()                           # a decorator too, on async def as well
        def import_messages(rows): ...

    Saves and deletes record no job, ``turbo.saved()``/``turbo.deleted()`` record none, and
    stream actions send nothing, whether called in a view or in a hook run by a worker (their
    arguments are still checked). Nestable. Per thread and per asyncio task: other requests
    keep broadcasting. Jobs recorded before the block are still published at commit.
    """
    return _Suppress()


class _Suppress:
    # A depth counter rather than set/reset tokens: one instance may be entered again (by
    # recursion, or from another thread) before it is left.
    def __enter__(self) -> None:
        _suppress_depth.set(_suppress_depth.get() + 1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _suppress_depth.set(_suppress_depth.get() - 1)

    def __call__(self, func: _F) -> _F:
        if inspect.iscoroutinefunction(func):
            # Suppress while the coroutine runs, not just while it is created.
            @functools.wraps(func)
            async def run_suppressed_async(*args: Any, **kwargs: Any) -> Any:
                with _Suppress():
                    return await func(*args, **kwargs)

            return cast(_F, run_suppressed_async)

        @functools.wraps(func)
        def run_suppressed(*args: Any, **kwargs: Any) -> Any:
            with _Suppress():
                return func(*args, **kwargs)

        return cast(_F, run_suppressed)
