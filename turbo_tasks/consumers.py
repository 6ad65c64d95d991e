"""The websocket consumer: the subscribe path. See docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from typing import TYPE_CHECKING, Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from turbo_tasks import conf
from turbo_tasks.exceptions import StreamRejected
from turbo_tasks.registry import resolve_signed_name

if TYPE_CHECKING:
    # channels has no type hints; its database_sync_to_async is a SyncToAsync subclass with
    # the same signature (it only closes old DB connections around the call), so type
    # checkers see asgiref's typed base class instead.
    from asgiref.sync import SyncToAsync as database_sync_to_async
else:
    from channels.db import database_sync_to_async

logger = logging.getLogger(__name__)

# Group changes in flight per process. redis-py's async pool (channels_redis) holds 100
# connections and raises MaxConnectionsError beyond that, which would kill the socket: a
# server restart makes every page reconnect and subscribe at once.
MAX_CONCURRENT_GROUP_CHANGES = 50
_group_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _group_slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slot = _group_slots.get(loop)
    if slot is None:
        slot = _group_slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_GROUP_CHANGES)
    return slot


class TurboStreamsConsumer(AsyncWebsocketConsumer):
    """One socket, any number of stream subscriptions.

    Client → server: ``{"type": "subscribe"|"unsubscribe", "stream": "<signed name>"}``.
    Server → client: ``subscribed``, ``rejected`` (with a ``reason``), ``message`` (with the
    ``<turbo-stream>`` ``html``) and ``error`` for malformed frames; the socket stays open.
    """

    @property
    def channel_layer_alias(self) -> str:
        # Read per connection (AsyncConsumer looks it up in __call__), not at import.
        return str(conf.get("CHANNEL_LAYER"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A consumer that crashed (e.g. Redis down in a group_add) never runs
            # disconnect(); its refresher would re-add the dead channel forever.
            refresher = getattr(self, "_refresher", None)
            if refresher is not None:
                refresher.cancel()

    async def connect(self) -> None:
        # group -> the signed names this socket subscribed to it with
        self.subscriptions: dict[str, set[str]] = {}
        # Held while a group change and the membership check before it must not be
        # interleaved with the refresher (which runs beside the receive loop).
        self._membership = asyncio.Lock()
        self._refresher = asyncio.create_task(self._refresh_groups())
        await super().connect()

    async def _refresh_groups(self) -> None:
        # channels_redis forgets group members after group_expiry (a day by default)
        # without a word; a page left open that long would silently stop updating.
        while True:
            await asyncio.sleep(conf.get("GROUP_REFRESH_SECONDS"))
            try:
                for group in list(self.subscriptions):
                    async with self._membership:
                        # Unsubscribed while an earlier group was being re-added?
                        if group in self.subscriptions:
                            await self._join(group)
            except Exception:
                logger.exception("turbo_tasks: could not refresh group memberships")

    async def disconnect(self, code: int) -> None:
        self._refresher.cancel()
        if self.channel_layer is not None:
            for group in self.subscriptions:
                await self._leave(group)
        self.subscriptions = {}

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            return await self._error("binary frames are not supported")
        if len(text_data) > conf.get("MAX_FRAME_SIZE"):
            return await self._error("frame too large")
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested too deep
            return await self._error("invalid JSON")
        if not isinstance(frame, dict):
            return await self._error("frame must be a JSON object")
        kind, name = frame.get("type"), frame.get("stream")
        if kind not in ("subscribe", "unsubscribe"):
            return await self._error("type must be 'subscribe' or 'unsubscribe'")
        if not isinstance(name, str) or not name:
            return await self._error("stream must be a signed stream name (a string)")
        if kind == "subscribe":
            await self._subscribe(name)
        else:
            await self._unsubscribe(name)

    async def _subscribe(self, name: str) -> None:
        user = self.scope.get("user") or AnonymousUser()
        try:
            group, allowed = await _authorize(name, user)
        except StreamRejected as exc:
            return await self._reply("rejected", stream=name, reason=exc.reason)
        if group in self.subscriptions:
            self.subscriptions[group].add(name)
            return await self._reply("subscribed", stream=name)
        if len(self.subscriptions) >= conf.get("MAX_SUBSCRIPTIONS_PER_SOCKET"):
            return await self._reply("rejected", stream=name, reason="too_many_subscriptions")
        if not allowed:
            return await self._reply("rejected", stream=name, reason="forbidden")
        async with self._membership:
            self.subscriptions[group] = {name}
            await self._join(group)
        await self._reply("subscribed", stream=name)

    async def _unsubscribe(self, name: str) -> None:
        for group, names in list(self.subscriptions.items()):
            if name in names:
                names.discard(name)
                if not names:
                    async with self._membership:
                        del self.subscriptions[group]
                        await self._leave(group)

    async def _join(self, group: str) -> None:
        async with _group_slot():
            await self.channel_layer.group_add(group, self.channel_name)

    async def _leave(self, group: str) -> None:
        async with _group_slot():
            await self.channel_layer.group_discard(group, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections in its one thread-sensitive executor before
        # every handler: for a frame sent to 1,000 sockets, 1,000 hops through one thread
        # (most of the fan-out time in the benchmark). A frame touches no database, and
        # every query here goes through database_sync_to_async, which cleans up itself.
        if message.get("type") == "turbo.message":
            await self.turbo_message(message)
        else:
            await super().dispatch(message)

    async def turbo_message(self, event: dict[str, Any]) -> None:
        """A frame from a worker, for one group."""
        for name in sorted(self.subscriptions.get(event.get("group", ""), ())):
            await self._reply("message", stream=name, html=event["html"])

    async def _reply(self, kind: str, **fields: Any) -> None:
        await self.send(text_data=json.dumps({"type": kind, **fields}))

    async def _error(self, reason: str) -> None:
        await self._reply("error", reason=reason)


@database_sync_to_async
def _authorize(name: str, user: Any) -> tuple[str, bool]:
    """Resolve a signed name to its group and run the stream's permission check.

    In a thread: a stream's constructor and ``user_passes_test`` are user code that may
    query the database. Any failure to resolve the name is ``unknown_stream`` for that
    stream alone; a crashing check refuses, and neither touches the socket.
    """
    try:
        stream = resolve_signed_name(name)
        group = stream.group_name
    except StreamRejected:
        raise
    except Exception:
        logger.exception("turbo_tasks: a validly signed stream name failed to resolve")
        raise StreamRejected("unknown_stream") from None
    try:
        return group, bool(stream.user_passes_test(user))
    except Exception:
        logger.exception("turbo_tasks: %r.user_passes_test raised; refusing", stream)
        return group, False
