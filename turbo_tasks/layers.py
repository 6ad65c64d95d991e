"""The channel layer, from synchronous worker code.

``async_to_sync`` per push would start a thread, an event loop and new Redis connections
every time (milliseconds per task). Instead each worker thread keeps one event loop and
runs the channel-layer calls on it directly (no hand-off to another thread), so
channels_redis keeps its connection pool between tasks.

Under gevent and eventlet the process keeps one loop in a real OS thread instead
(turbo_tasks._green explains why).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from turbo_tasks import _compat, _green, conf, history

T = TypeVar("T")
# (group, html, the socket id it must not reach or None)
Frame = tuple[str, str, str | None]

logger = logging.getLogger(__name__)

# Frames for one group in one message; Turbo applies every <turbo-stream> in a message.
MAX_FRAMES_PER_MESSAGE = 100
# redis-py's async pool holds 100 connections; stay well below it.
MAX_CONCURRENT_SENDS = _green.MAX_CONCURRENT_SENDS
# A channel layer that does not answer within this is treated as down (and retried).
TIMEOUT_SECONDS = _green.TIMEOUT_SECONDS
# A group seen with members is taken to still have them for this long (no ZCOUNT): at
# worst a frame is rendered for a group that has just emptied, and group_send drops it.
MEMBERS_SEEN_SECONDS = 1.0
MAX_SEEN_GROUPS = 10_000


class _Local(threading.local):
    pid = 0
    loop: asyncio.AbstractEventLoop
    # group -> monotonic time it was last seen with members
    seen: dict[str, float]


_local = _Local()
# Every loop made here, until close_loops(): a loop (and the channel-layer connections made
# on it) must be closed, not garbage-collected with its thread (a thread pool's worker, or
# pytest-celery's in-process worker thread), which leaks sockets.
_loops: list[asyncio.AbstractEventLoop] = []
_loops_lock = threading.Lock()


def _state() -> _Local | _green.LoopThread:
    library = _green.library()
    if library is not None:
        return _green.state(library)
    if _local.pid != os.getpid() or _local.loop.is_closed():
        # A forked child (Celery's prefork pool) must not share the parent's sockets.
        _local.pid, _local.loop, _local.seen = os.getpid(), asyncio.new_event_loop(), {}
        with _loops_lock:
            _loops.append(_local.loop)
    return _local


def close_loops() -> None:
    """Close this process's channel-layer loops that are not running (channels_redis closes
    its connections on each as it closes). At exit, and when a Celery worker stops."""
    _green.close()
    with _loops_lock:
        loops = [loop for loop in _loops if loop.is_closed() or not loop.is_running()]
        for loop in loops:
            _loops.remove(loop)
    for loop in loops:
        if not loop.is_closed():
            try:
                loop.close()
            except Exception:  # a Redis already gone: the sockets still close
                logger.debug("turbo_tasks: closing a channel-layer loop failed", exc_info=True)


atexit.register(close_loops)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on this thread's channel-layer loop (under gevent or eventlet, the
    process's loop thread) and wait for it (at most TIMEOUT_SECONDS). For synchronous code,
    like the rest of the worker's Django code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        state = _state()
        if isinstance(state, _green.LoopThread):
            return state.call(coro)
        return state.loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT_SECONDS))
    coro.close()
    raise RuntimeError("turbo_tasks delivers from synchronous code; use sync_to_async")


def get_layer() -> Any:
    alias = conf.get("CHANNEL_LAYER")
    layer = get_channel_layer(alias)
    if layer is None:
        raise ImproperlyConfigured(
            f"No channel layer {alias!r} in CHANNEL_LAYERS; turbo_tasks cannot deliver frames. "
            f"Configure channels_redis, or set TURBO_TASKS['CHANNEL_LAYER']."
        )
    return layer


def groups_with_subscribers(layer: Any, groups: set[str]) -> set[str]:
    """The groups that have at least one live member (on the pub/sub layer: a process
    subscribed to the group's channel), or (with catch-up on) whose stream a page rendered
    within the history window; all of them, for layers that cannot tell. So frames nobody
    would receive are never rendered."""
    if not groups or not _compat.is_redis_layer(layer):
        return groups
    now, seen = time.monotonic(), _state().seen
    recent = {g for g in groups if now - seen.get(g, -MEMBERS_SEEN_SECONDS) < MEMBERS_SEEN_SECONDS}
    if len(recent) == len(groups):
        return groups
    found = run(_with_members(layer, groups - recent))
    if len(seen) > MAX_SEEN_GROUPS:  # keep a long-lived worker's memory bounded
        for group in [g for g, t in seen.items() if now - t >= MEMBERS_SEEN_SECONDS]:
            del seen[group]
    seen.update(dict.fromkeys(found, now))
    return recent | found


def forget_subscribers() -> None:
    """Drop what this thread remembers about groups having members (for tests)."""
    _state().seen.clear()


async def _with_members(layer: Any, groups: set[str]) -> set[str]:
    watched = history.enabled(layer)

    async def wanted(group: str) -> bool:
        if watched:
            return await history.wanted(layer, group)
        return await _compat.has_members(layer, group)

    ordered = sorted(groups)
    found = await gather_bounded(wanted(group) for group in ordered)
    return {group for group, yes in zip(ordered, found, strict=True) if yes}


def push(layer: Any, frames: list[Frame]) -> None:
    """Send ``(group, html, exclude)`` frames: one channel-layer message per group (in
    chunks of MAX_FRAMES_PER_MESSAGE, and split where ``exclude`` changes), each group's
    frames in order, groups concurrently. A message with ``exclude`` skips that socket."""
    by_group: dict[str, list[tuple[str | None, list[str]]]] = {}
    for group, html, exclude in frames:
        messages = by_group.setdefault(group, [])
        last = messages[-1] if messages else None
        if last is not None and last[0] == exclude and len(last[1]) < MAX_FRAMES_PER_MESSAGE:
            last[1].append(html)
        else:
            messages.append((exclude, [html]))
    if by_group:
        run(_send_all(layer, by_group))


async def _send_all(layer: Any, by_group: dict[str, list[tuple[str | None, list[str]]]]) -> None:
    keep = history.enabled(layer)

    async def send_group(group: str, messages: list[tuple[str | None, list[str]]]) -> None:
        for exclude, frames in messages:
            html = "".join(frames)
            # "pushed": for the push → socket lag metric (turbo_tasks.metrics).
            event: dict[str, Any] = {
                "type": "turbo.message",
                "group": group,
                "html": html,
                "pushed": time.time(),
            }
            if exclude is not None:
                event["exclude"] = exclude
            # In the history first: a page that joins between the two replays it.
            await history.send(layer, group, event, keep)

    await gather_bounded(send_group(group, msgs) for group, msgs in by_group.items())


def can_debounce(layer: Any) -> bool:
    """Whether refreshes can be debounced across workers (a channels_redis layer)."""
    return _compat.is_redis_layer(layer)


def recheck(layer: Any, groups: list[str]) -> None:
    """Ask every socket subscribed to ``groups`` to run ``user_passes_test`` again."""
    if groups:
        run(
            gather_bounded(
                layer.group_send(group, {"type": "turbo.recheck", "group": group})
                for group in sorted(set(groups))
            )
        )


# In a gather_bounded call on the shared (gevent/eventlet) bound: nested ones do not wait.
_holds_slot = contextvars.ContextVar("turbo_tasks_holds_slot", default=False)


async def gather_bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``calls`` concurrently, at most MAX_CONCURRENT_SENDS at a time (redis-py's
    async pool holds 100 connections); their results in order. On the gevent/eventlet loop
    thread the bound is shared by all the calls it runs at once, every greenlet's."""
    shared = _green.shared_limit()
    limit = shared or asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    async def bounded(call: Awaitable[T]) -> T:
        if shared and _holds_slot.get():  # nested in a bounded call: waiting would deadlock
            return await call
        async with limit:
            _holds_slot.set(True)  # in this call's task only: gather gives each a context
            return await call

    return list(await asyncio.gather(*(bounded(call) for call in calls)))
