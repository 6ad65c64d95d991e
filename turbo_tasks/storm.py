"""Keeping a reconnect storm within bounds. After a server restart every page reconnects
and subscribes at once: the subscribe path's Redis calls (group changes, history reads)
share one bound per event loop, sockets catching up on one stream from one offset share
one history read, and the group changes of sockets (un)subscribing together share a round
trip."""

from __future__ import annotations

import asyncio
import weakref
from itertools import groupby
from typing import Any

from turbo_tasks import _compat, history
from turbo_tasks.gaps import Mark

# Group changes and history reads in flight per process. redis-py's async pool
# (channels_redis) holds 100 connections and raises MaxConnectionsError beyond that, which
# would kill the socket: a server restart makes every page reconnect and subscribe at once.
MAX_CONCURRENT_GROUP_CHANGES = 50
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def slot() -> asyncio.Semaphore:
    """The bound on this event loop's group changes and history reads: hold it around
    each (``async with storm.slot():``)."""
    loop = asyncio.get_running_loop()
    bound = _slots.get(loop)
    if bound is None:
        bound = _slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_GROUP_CHANGES)
    return bound


async def join(layer: Any, group: str, channel: str) -> None:
    """``layer.group_add(group, channel)``, within ``slot()``. On channels_redis' core
    layer, sent together with the group changes the other sockets of this event loop ask
    for while it waits (after a server restart every page subscribes at once): one round
    trip per shard for all of them, rather than two per socket. It returns, as group_add
    does, once Redis has answered, so what the caller sends next (the history read) runs
    after it."""
    if not _compat.changes_groups_directly(layer):
        async with slot():
            await layer.group_add(group, channel)
        return
    await _change(layer, _JOIN, group, channel)


async def leave(layer: Any, group: str, channel: str, keep_watched: bool = False) -> None:
    """``layer.group_discard(group, channel)``, then with ``keep_watched``
    ``history.left(layer, group)``, within ``slot()``; on the core layer together with
    other sockets' group changes, as ``join`` (every page closes at once on a restart)."""
    if not _compat.changes_groups_directly(layer):
        async with slot():
            await layer.group_discard(group, channel)
            if keep_watched:
                await history.left(layer, group)
        return
    await _change(layer, _LEAVE_WATCHED if keep_watched else _LEAVE, group, channel)


_JOIN, _LEAVE, _LEAVE_WATCHED = "join", "leave", "leave watched"
# A group change waiting: (layer, kind, group, channel, the caller's future).
_Change = tuple[Any, str, str, str, "asyncio.Future[None]"]


async def _change(layer: Any, kind: str, group: str, channel: str) -> None:
    _compat.check_group_change(layer, group, channel)  # raised here, not for the batch
    loop = asyncio.get_running_loop()
    changes = _changes.get(loop)
    if changes is None:
        changes = _changes[loop] = _Changes()
    answer: asyncio.Future[None] = loop.create_future()
    changes.waiting.append((layer, kind, group, channel, answer))
    if changes.runner is None:
        # Starts on the next turn of the loop: the changes asked for by then go with this.
        changes.runner = loop.create_task(changes.run())
    await answer


class _Changes:
    """The core layer's group changes waiting on one event loop: those asked for while a
    batch is in Redis go together in the next one, in the order they were asked for."""

    def __init__(self) -> None:
        self.waiting: list[_Change] = []
        self.runner: asyncio.Task[None] | None = None

    async def run(self) -> None:
        batch: list[_Change] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                shards: dict[tuple[int, int], list[_Change]] = {}
                for change in batch:
                    # A socket closed before its change was sent: nothing to do.
                    if not change[4].done():
                        key = (id(change[0]), _compat.shard_index(change[0], change[2]))
                        shards.setdefault(key, []).append(change)
                await asyncio.gather(*(self._send(key[1], c) for key, c in shards.items()))
        finally:
            self.runner = None
            for *_, answer in batch + self.waiting:  # unanswered only when cancelled
                answer.cancel()
            self.waiting = []

    @staticmethod
    async def _send(index: int, changes: list[_Change]) -> None:
        layer = changes[0][0]
        try:
            async with slot():
                pipe = _compat.shard_connection(layer, index).pipeline(transaction=False)
                # Consecutive changes of one kind to one group in one command each.
                for (kind, group), run in groupby(changes, key=lambda c: (c[1], c[2])):
                    channels = [change[3] for change in run]
                    if kind == _JOIN:
                        _compat.queue_group_add(layer, pipe, group, channels)
                        continue
                    _compat.queue_group_discard(layer, pipe, group, channels)
                    if kind == _LEAVE_WATCHED:
                        history.queue_left(layer, pipe, group)
                await pipe.execute()
        except Exception as exc:  # each caller raises it, as from its own group change
            for *_, answer in changes:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for *_, answer in changes:
            if not answer.done():  # its socket closed meanwhile
                answer.set_result(None)


_changes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Changes] = (
    weakref.WeakKeyDictionary()
)


# A catch-up's history read: (status, current offset, entries), as history.read returns it.
_Read = tuple[str, str, list[tuple[str, str]]]
# Catch-up reads waiting for a slot(), per loop: (layer, group, since) -> the answer.
_queued_reads: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str, Mark | None], asyncio.Future[_Read]]
] = weakref.WeakKeyDictionary()


class _ReadAgain(Exception):
    """The socket whose read a caller was waiting for gave it up: read for yourself."""


async def read_history(layer: Any, group: str, since: Mark | None) -> _Read:
    """``history.read(layer, group, since)`` for a socket that has joined ``group``, shared
    with the sockets of this process that ask for the same read while it waits for a
    ``slot()`` (after a server restart, every page of a stream catches up at once:
    one read and one reply to parse instead of one per socket).

    Why sharing cannot lose a frame: a socket joins the group before it asks, and it only
    ever shares a read that has not started yet. A read is taken out of ``_queued_reads``
    the moment its slot is acquired, with no ``await`` between that and sending the read
    to Redis, so whoever finds it queued asked (and so had joined: its group_add had been
    answered) before it was sent, and Redis runs it after that group_add. Then, as for a
    read of its own, a frame appended before the join is in what the read returns, and one
    appended after it is pushed to this socket too (the worker reads the members after the
    append, in one script), where the mark from ``current`` drops it if the read had it as
    well. A read already sent may not have seen a frame appended between its run and this
    socket's join, which only the history has: that read is never shared, and a socket
    arriving then waits for the next one. Sockets share a read only with the same ``since``,
    so its entries and status are theirs; its side effects (the stream marked watched) are
    the same for all.
    """
    loop = asyncio.get_running_loop()
    queued = _queued_reads.get(loop)
    if queued is None:
        queued = _queued_reads[loop] = {}
    key = (id(layer), group, since)
    while (waiting := queued.get(key)) is not None:
        try:
            return await asyncio.shield(waiting)
        except _ReadAgain:
            continue  # its socket went away before it started: a read of our own
    answer: asyncio.Future[_Read] = loop.create_future()
    queued[key] = answer
    try:
        async with slot():
            del queued[key]  # started: a socket asking from now on must not share it
            result = await history.read(layer, group, since)
    except BaseException:
        if queued.get(key) is answer:  # cancelled (socket closed) while waiting for a slot
            del queued[key]
        # Those sharing it read again (on a Redis error too: each sees its own outcome).
        answer.set_exception(_ReadAgain())
        answer.exception()  # retrieved: no "never retrieved" warning when nobody shared it
        raise
    answer.set_result(result)
    return result
