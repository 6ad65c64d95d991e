"""Keeping a reconnect storm within bounds. After a server restart every page reconnects
and subscribes at once: the subscribe path's Redis calls (group changes, history reads)
share one bound per event loop, sockets catching up on one stream from one offset share
one history read, and the group changes of sockets (un)subscribing together share a round
trip. ``Batches`` is the mechanism of the last, and of turbo_tasks.permissions' shared
trips through the database thread."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable
from itertools import groupby
from typing import Any, Generic, TypeVar

from turbo_tasks import _compat, history
from turbo_tasks.gaps import Mark

T = TypeVar("T")
R = TypeVar("R")
V = TypeVar("V")

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
    return per_loop(_slots, lambda: asyncio.Semaphore(MAX_CONCURRENT_GROUP_CHANGES))


def per_loop(
    registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, V], make: Callable[[], V]
) -> V:
    """This event loop's entry of ``registry``, made by ``make()`` on first use."""
    loop = asyncio.get_running_loop()
    value = registry.get(loop)
    if value is None:
        value = registry[loop] = make()
    return value


class Batches(Generic[T, R]):
    """Calls asked for on one event loop while a batch of them runs go together in the
    next batch, in the order they were asked for (after a server restart every page asks
    at once). ``send(batch)`` runs one batch of ``(item, answer)`` pairs and answers each
    future, with a result or with that caller's exception; a future already done belongs
    to a caller that went away (its socket closed). When the loop is torn down, every
    caller still waiting is cancelled."""

    def __init__(self, send: Callable[[list[tuple[T, asyncio.Future[R]]]], Awaitable[None]]):
        self._send = send
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def ask(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, answer))
        if self._runner is None:
            # Starts on the next turn of the loop: what is asked for by then goes with this.
            self._runner = loop.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._send(batch)
        finally:
            self._runner = None
            for _, answer in batch + self._waiting:  # unanswered only when cancelled
                answer.cancel()
            self._waiting = []


def fail(batch: Iterable[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    """Every caller of ``batch`` still waiting raises ``exc``, as from a call of its own."""
    for _, answer in batch:
        if not answer.done():
            answer.set_exception(exc)


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
# A group change: (layer, kind, group, channel).
_Change = tuple[Any, str, str, str]


async def _change(layer: Any, kind: str, group: str, channel: str) -> None:
    _compat.check_group_change(layer, group, channel)  # raised here, not for the batch
    await per_loop(_changes, lambda: Batches(_send_changes)).ask((layer, kind, group, channel))


async def _send_changes(batch: list[tuple[_Change, asyncio.Future[None]]]) -> None:
    """One pipeline per shard for the changes of ``batch`` still wanted."""
    shards: dict[tuple[int, int], list[tuple[_Change, asyncio.Future[None]]]] = {}
    for change, answer in batch:
        if not answer.done():  # a socket closed before its change was sent: nothing to do
            layer, _, group, _ = change
            shard = (id(layer), _compat.shard_index(layer, group))
            shards.setdefault(shard, []).append((change, answer))
    await asyncio.gather(*(_send_shard(key[1], c) for key, c in shards.items()))


async def _send_shard(index: int, changes: list[tuple[_Change, asyncio.Future[None]]]) -> None:
    layer = changes[0][0][0]
    try:
        async with slot():
            pipe = _compat.shard_connection(layer, index).pipeline(transaction=False)
            # Consecutive changes of one kind to one group in one command each.
            for (kind, group), run in groupby(changes, key=lambda c: (c[0][1], c[0][2])):
                channels = [change[3] for change, _ in run]
                if kind == _JOIN:
                    _compat.queue_group_add(layer, pipe, group, channels)
                    continue
                _compat.queue_group_discard(layer, pipe, group, channels)
                if kind == _LEAVE_WATCHED:
                    history.queue_left(layer, pipe, group)
            await pipe.execute()
    except Exception as exc:  # each caller raises it, as from its own group change
        fail(changes, exc)
        return
    for _, answer in changes:
        if not answer.done():  # its socket closed meanwhile
            answer.set_result(None)


_changes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batches[_Change, None]] = (
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
    queued = per_loop(_queued_reads, dict)
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
