"""The channel layer, from synchronous worker code.

``async_to_sync`` per push would start a thread, an event loop and new Redis connections
every time (milliseconds per task). Instead each worker process keeps one event loop in a
daemon thread, so channels_redis keeps its connection pool between tasks.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.core.exceptions import ImproperlyConfigured

from turbo_tasks import conf

T = TypeVar("T")

# Frames for one group in one message; Turbo applies every <turbo-stream> in a message.
MAX_FRAMES_PER_MESSAGE = 100
# redis-py's async pool holds 100 connections; stay well below it.
MAX_CONCURRENT_SENDS = 50
# A channel layer that does not answer within this is treated as down (and retried).
TIMEOUT_SECONDS = 30


class _LoopThread:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="turbo_tasks-loop", daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT_SECONDS)


_runner: _LoopThread | None = None
_runner_lock = threading.Lock()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on this process's channel-layer loop and wait for it."""
    global _runner
    with _runner_lock:
        # A forked child (Celery's prefork pool) has no copy of the parent's thread.
        if _runner is None or _runner.pid != os.getpid():
            _runner = _LoopThread()
    return _runner.run(coro)


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
    """The groups that have at least one live member (all of them, for layers that cannot
    tell), so frames nobody would receive are never rendered."""
    if not groups or not isinstance(layer, RedisChannelLayer):
        return groups
    return run(_with_members(layer, groups))


async def _with_members(layer: RedisChannelLayer, groups: set[str]) -> set[str]:
    # Members older than group_expiry are dead: group_send would discard them too.
    alive_since = int(time.time()) - layer.group_expiry
    limit = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    async def count(group: str) -> int:
        async with limit:
            connection = layer.connection(layer.consistent_hash(group))
            return int(await connection.zcount(layer._group_key(group), alive_since, "+inf"))

    ordered = sorted(groups)
    counts = await asyncio.gather(*(count(group) for group in ordered))
    return {group for group, members in zip(ordered, counts, strict=True) if members}


def push(layer: Any, frames: list[tuple[str, str]]) -> None:
    """Send ``(group, html)`` frames: one channel-layer message per group (in chunks of
    MAX_FRAMES_PER_MESSAGE), each group's frames in order, groups concurrently."""
    by_group: dict[str, list[str]] = {}
    for group, html in frames:
        by_group.setdefault(group, []).append(html)
    if by_group:
        run(_send_all(layer, by_group))


async def _send_all(layer: Any, by_group: dict[str, list[str]]) -> None:
    limit = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    async def send_group(group: str, frames: list[str]) -> None:
        async with limit:
            for i in range(0, len(frames), MAX_FRAMES_PER_MESSAGE):
                html = "".join(frames[i : i + MAX_FRAMES_PER_MESSAGE])
                await layer.group_send(
                    group, {"type": "turbo.message", "group": group, "html": html}
                )

    await asyncio.gather(*(send_group(group, frames) for group, frames in by_group.items()))
