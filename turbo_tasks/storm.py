"""Keeping a reconnect storm within bounds. After a server restart every page reconnects
and subscribes at once: the subscribe path's Redis calls (group changes, history reads)
share one bound per event loop, and sockets catching up on one stream from one offset share
one history read."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from turbo_tasks import history
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
