"""No silent gap on an open socket: the periodic check of a process's subscriptions.

Offsets within a stream are consecutive, and each subscription of a consumer keeps the
offset up to which it forwarded every frame (its *mark*). A frame that skips ahead is seen
by the consumer itself, which sends the missing frames from the history first. A frame that
never arrives at all (dropped by the channel layer, lost with a Redis connection, or the
last of a burst) leaves nothing to see: here, every ``GAP_CHECK_SECONDS / 2`` one task per
process and channel layer reads the current offset of every stream its sockets subscribe
to (one round trip per shard, whatever the number of sockets) and asks each consumer to
compare. A subscription still below an offset the *previous* check saw is missing frames
that were pushed at least half a period ago: they are not late, they are lost, and are
replayed from the history (or the page gets ``reset``). So a page whose socket stays open
matches the database at most ``GAP_CHECK_SECONDS`` after a change, whatever was dropped.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol

from turbo_tasks import conf, history

logger = logging.getLogger(__name__)

Mark = tuple[str, int]
# Consumers compared between two turns of the event loop.
YIELD_EVERY = 500


class Watched(Protocol):
    """What the check needs of a consumer."""

    subscriptions: dict[str, dict[str, Mark | None]]

    async def check_progress(self, current: dict[str, Mark]) -> None: ...


def behind(mark: Mark, target: Mark) -> bool:
    """Whether a subscription at ``mark`` lacks frames up to ``target`` (another epoch
    counts as behind: the history was lost, the page must be told)."""
    return mark[0] != target[0] or mark[1] < target[1]


class _Check:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.consumers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.consumers:
            await asyncio.sleep(conf.get("GAP_CHECK_SECONDS") / 2)
            try:
                await self.check()
            except Exception as exc:  # Redis down: the next check tries again
                logger.warning("turbo_tasks: the gap check failed: %r", exc)

    async def check(self) -> None:
        consumers: list[Watched] = list(self.consumers)
        groups = {
            group
            for consumer in consumers
            for group, names in consumer.subscriptions.items()
            if any(mark is not None for mark in names.values())
        }
        if not groups:
            return
        current = await history.current(self.layer, groups)
        for number, consumer in enumerate(consumers, 1):
            if number % YIELD_EVERY == 0:  # let frames through: 10,000 sockets take ~35 ms
                await asyncio.sleep(0)
            try:
                await consumer.check_progress(current)
            except Exception:  # e.g. the socket is closing: the others still get checked
                logger.exception("turbo_tasks: could not repair a socket's gaps")


_checks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Check]] = (
    weakref.WeakKeyDictionary()
)


def watch(consumer: Watched, layer: Any) -> None:
    """Include ``consumer`` in the gap check of its event loop and ``layer`` (started when
    the first consumer subscribes, ended when the last one is gone)."""
    loop = asyncio.get_running_loop()
    checks = _checks.setdefault(loop, {})
    check = checks.get(id(layer))
    if check is None or check.layer is not layer or check.task is None or check.task.done():
        check = checks[id(layer)] = _Check(layer)
        check.task = loop.create_task(check.run())
    check.consumers.add(consumer)


def unwatch(consumer: Watched, layer: Any) -> None:
    check = _checks.get(asyncio.get_running_loop(), {}).get(id(layer))
    if check is not None:
        check.consumers.discard(consumer)
