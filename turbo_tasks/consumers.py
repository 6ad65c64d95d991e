"""The websocket consumer: the subscribe path. See docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser

from turbo_tasks import _compat, conf, history, request_context, signing
from turbo_tasks.exceptions import StreamRejected
from turbo_tasks.jobs import StreamRef
from turbo_tasks.registry import resolve_ref

if TYPE_CHECKING:
    # channels has no type hints; its database_sync_to_async is a SyncToAsync subclass with
    # the same signature (it only closes old DB connections around the call), so type
    # checkers see asgiref's typed base class instead.
    from asgiref.sync import SyncToAsync as database_sync_to_async
else:
    from channels.db import database_sync_to_async

logger = logging.getLogger(__name__)

# Group changes and history reads in flight per process. redis-py's async pool
# (channels_redis) holds 100 connections and raises MaxConnectionsError beyond that, which
# would kill the socket: a server restart makes every page reconnect and subscribe at once.
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
    """One socket, any number of stream subscriptions (docs/protocol.md).

    Client → server: ``{"type": "subscribe", "stream": "<signed name>", "since": "<offset>"}``
    (``since`` optional) and ``{"type": "unsubscribe", "stream": …}``.
    Server → client: first ``hello`` (this connection's ``socket_id``); ``message`` (the
    ``<turbo-stream>`` ``html`` and its ``offset``), first the frames after ``since`` from
    the stream's history, then ``subscribed`` (with the current ``offset``) and live frames;
    ``reset`` when the history cannot serve ``since``; ``rejected`` (with a ``reason``);
    ``revoked`` when the user no longer passes ``user_passes_test``; ``error`` for malformed
    frames, the socket stays open.
    """

    @property
    def channel_layer_alias(self) -> str:
        # Read per connection (AsyncConsumer looks it up in __call__), not at import.
        return str(conf.get("CHANNEL_LAYER"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        _fit_layer(self.channel_layer_alias)
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A consumer that crashed (e.g. Redis down in a group_add) never runs
            # disconnect(); its refresher would re-add the dead channel forever.
            refresher = getattr(self, "_refresher", None)
            if refresher is not None:
                refresher.cancel()

    # AsyncConsumer.__call__ sets this to the channel layer's receive for our channel and
    # waits on it: keep waiting past a read that timed out, rather than die with 1011 (an
    # idle read times out whenever the socket timeout is not longer than channels_redis'
    # blocking receive). Nothing is lost: the message stays queued in Redis.
    @property
    def channel_receive(self) -> Any:
        return self._channel_receive

    @channel_receive.setter
    def channel_receive(self, receive: Any) -> None:
        async def patient_receive() -> Any:
            while True:
                try:
                    return await receive()
                except _compat.RECEIVE_TIMEOUTS:
                    logger.debug("turbo_tasks: a channel-layer read timed out; reading again")

        self._channel_receive = patient_receive

    async def connect(self) -> None:
        # group -> {signed name: the (inc, seq) it was caught up to when it subscribed}:
        # live frames at or below that mark were replayed already (or were before since).
        self.subscriptions: dict[str, dict[str, tuple[str, int] | None]] = {}
        # Held while a group change and the membership check before it must not be
        # interleaved with the refresher (which runs beside the receive loop).
        self._membership = asyncio.Lock()
        self._refresher = asyncio.create_task(self._refresh_groups())
        # Unguessable, and bound to this socket's user: only that user's requests carrying
        # it (X-Turbo-Tasks-Socket) keep frames sent with exclude_sender from this socket.
        user = self.scope.get("user")
        user_pk = user.pk if getattr(user, "is_authenticated", False) else None
        self.socket_id = request_context.new_socket_id(user_pk)
        await super().connect()
        await self._reply("hello", socket_id=self.socket_id)

    async def _refresh_groups(self) -> None:
        # channels_redis forgets group members after group_expiry (a day by default)
        # without a word; a page left open that long would silently stop updating. And a
        # user may have lost access meanwhile: check every subscription again.
        while True:
            await asyncio.sleep(conf.get("GROUP_REFRESH_SECONDS"))
            try:
                for group in list(self.subscriptions):
                    async with self._membership:
                        # Unsubscribed while an earlier group was being re-added?
                        if group in self.subscriptions:
                            await self._join(group)
                await self._recheck(list(self.subscriptions))
            except Exception:
                logger.exception("turbo_tasks: could not refresh group memberships")

    async def _recheck(self, groups: list[str]) -> None:
        """Run ``user_passes_test`` again (with the user reloaded) for this socket's
        subscriptions in ``groups``; send ``revoked`` for, and drop, those that fail."""
        names = [name for group in groups for name in self.subscriptions.get(group, {})]
        if not names:
            return
        allowed = await _authorize_all(names, self.scope)
        for group in groups:
            for name in list(self.subscriptions.get(group, {})):
                # _drop is False for a name unsubscribed meanwhile: nothing to revoke.
                if not allowed.get(name, True) and await self._drop(group, name):
                    await self._reply("revoked", stream=name)

    async def turbo_recheck(self, event: dict[str, Any]) -> None:
        """``stream.recheck()``: a worker asks this group's sockets to check again."""
        await self._recheck([event.get("group", "")])

    async def disconnect(self, code: int) -> None:
        self._refresher.cancel()
        if self.channel_layer is not None:
            # The page may be reconnecting: keep what it misses meanwhile in the history.
            watched = history.enabled(self.channel_layer)
            for group in self.subscriptions:
                await self._leave(group, keep_watched=watched)
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
        if kind == "unsubscribe":
            return await self._unsubscribe(name)
        since = frame.get("since")
        if since is not None and not isinstance(since, str):
            return await self._error("since must be an offset (a string)")
        await self._subscribe(name, since)

    async def _subscribe(self, name: str, since: str | None) -> None:
        try:
            # The signature first (no thread, no database): a forged name costs nothing.
            ref = signing.unsign(name)
        except StreamRejected as exc:
            return await self._reply("rejected", stream=name, reason=exc.reason)
        group = signing.group_name(ref)
        limit = conf.get("MAX_SUBSCRIPTIONS_PER_SOCKET")
        if group not in self.subscriptions and len(self.subscriptions) >= limit:
            return await self._reply("rejected", stream=name, reason="too_many_subscriptions")
        # Join before the permission check, and before reading the history: a
        # stream.recheck() sent after the check's read reaches this socket (it is a member
        # by then), and a frame pushed before the history read is in both (the mark below
        # drops the live copy). Nothing reaches the page before the check passes: frames
        # wait while this subscribe runs and go only to names in self.subscriptions.
        joined = await self._join_new(group)
        try:
            resolved, allowed = await _authorize(ref, self.scope)
        except StreamRejected as exc:
            await self._leave_unused(joined)
            return await self._reply("rejected", stream=name, reason=exc.reason)
        if resolved != group:  # a stream whose arguments normalise differently
            await self._leave_unused(joined)
            joined, group = await self._join_new(resolved), resolved
        if not allowed:
            await self._leave_unused(joined)
            return await self._reply("rejected", stream=name, reason="forbidden")
        async with self._membership:
            self.subscriptions.setdefault(group, {})[name] = None
        if not history.enabled(self.channel_layer):
            return await self._reply("subscribed", stream=name)
        # Live frames for this group wait while we read: a consumer handles one event at
        # a time, so none can slip past the mark.
        wanted = history.parse(since)
        async with _group_slot():  # with the group changes: one bound on the Redis pool
            status, current, entries = await history.read(self.channel_layer, group, wanted)
        if since is not None and (wanted is None or status == "reset"):
            await self._reply("reset", stream=name)
        if entries:
            # One message for the whole replay (Turbo applies every <turbo-stream> in it),
            # not one per frame: after a restart every page catches up at once.
            if name not in self.subscriptions.get(group, {}):
                return  # revoked (by the refresher) while the history was read
            html = "".join(html for _, html in entries)
            await self._reply("message", stream=name, html=html, offset=entries[-1][0])
        if name not in self.subscriptions.get(group, {}):
            return
        if since is not None:
            self.subscriptions[group][name] = history.parse(current)
        await self._reply("subscribed", stream=name, offset=current)

    async def _join_new(self, group: str) -> str | None:
        """Join ``group`` unless this socket is subscribed to it; return it if joined."""
        async with self._membership:
            if group in self.subscriptions:
                return None
            await self._join(group)
            return group

    async def _leave_unused(self, group: str | None) -> None:
        """Leave a group ``_join_new`` joined, unless a subscription uses it by now."""
        if group is not None:
            async with self._membership:
                if group not in self.subscriptions:
                    await self._leave(group)

    async def _unsubscribe(self, name: str) -> None:
        for group, names in list(self.subscriptions.items()):
            if name in names:
                await self._drop(group, name)

    async def _drop(self, group: str, name: str) -> bool:
        """End the subscription ``name`` holds in ``group`` (leaving the group with its last
        one); False when there was none."""
        async with self._membership:
            names = self.subscriptions.get(group)
            if names is None or name not in names:
                return False
            del names[name]
            if not names:
                del self.subscriptions[group]
                await self._leave(group)
            return True

    async def _join(self, group: str) -> None:
        async with _group_slot():
            await self.channel_layer.group_add(group, self.channel_name)

    async def _leave(self, group: str, keep_watched: bool = False) -> None:
        async with _group_slot():
            await self.channel_layer.group_discard(group, self.channel_name)
            if keep_watched:
                await history.left(self.channel_layer, group)

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
        names = self.subscriptions.get(event.get("group", ""))
        if not names:
            return
        offset = event.get("offset")
        # exclude_sender: this socket's page made the change. With catch-up on it still
        # gets the offset (with no html), or its resume point would stall below it and a
        # reconnect would replay the frame it was spared.
        html = "" if event.get("exclude") == self.socket_id else event["html"]
        if offset is None:  # catch-up is off
            for name in sorted(names) if html else ():
                await self._reply("message", stream=name, html=html)
            return
        inc, seq = history.parse(offset) or ("", 0)
        for name, mark in sorted(names.items()):
            if mark is None or mark[0] != inc or seq > mark[1]:
                await self._reply("message", stream=name, html=html, offset=offset)

    async def _reply(self, kind: str, **fields: Any) -> None:
        await self.send(text_data=json.dumps({"type": kind, **fields}))

    async def _error(self, reason: str) -> None:
        await self._reply("error", reason=reason)


_fitted_layers: weakref.WeakSet[Any] = weakref.WeakSet()


def _fit_layer(alias: str) -> None:
    """Once per layer: lengthen socket timeouts that would kill idle consumers."""
    layer = get_channel_layer(alias)
    if layer is None or layer in _fitted_layers:
        return
    _fitted_layers.add(layer)
    for host in _compat.lengthen_receive_timeouts(layer):
        logger.warning(
            "turbo_tasks: channel layer %r host %s had no socket_timeout; redis-py's default "
            "(%ss) is no longer than channels_redis' blocking receive, which would close every "
            "idle websocket. Using socket_timeout=%s; set it in CHANNEL_LAYERS to silence this.",
            alias,
            host.get("address") or (host.get("host"), host.get("port")),
            _compat.redis_default_socket_timeout(),
            host["socket_timeout"],
        )


@database_sync_to_async
def _authorize(ref: StreamRef, scope: Any) -> tuple[str, bool]:
    """Rebuild a verified name's stream, and run its permission check, for the
    socket's user as the database has it now (a re-subscribe sees a demotion or a logout).

    In a thread: a stream's constructor and ``user_passes_test`` are user code that may
    query the database. Any failure to resolve the name is ``unknown_stream`` for that
    stream alone; a crashing check refuses, and neither touches the socket.
    """
    return _check(ref, _current_user(scope))


@database_sync_to_async
def _authorize_all(names: list[str], scope: Any) -> dict[str, bool]:
    """Whether the socket's user (looked up once) still passes each stream's check; a name
    that no longer resolves does not."""
    user = _current_user(scope)
    allowed = {}
    for name in names:
        try:
            allowed[name] = _check(signing.unsign(name), user)[1]
        except StreamRejected:  # e.g. expired since (SIGNED_NAME_MAX_AGE)
            allowed[name] = False
    return allowed


def _current_user(scope: Any) -> Any:
    """The socket's user as their next request would see it (the scope's user object was
    loaded when the socket connected).

    With a session (channels' AuthMiddlewareStack): the session as stored now, through the
    auth backend, as ``django.contrib.auth.get_user`` does: a logout elsewhere, a password
    change (the session's auth hash), a deleted or (with ModelBackend) deactivated user
    make it anonymous. Without one: the user's row reloaded; deleted or inactive is
    anonymous.
    """
    user: Any = scope.get("user") or AnonymousUser()
    if not getattr(user, "is_authenticated", False):
        return user
    session = scope.get("session")
    key = getattr(session, "session_key", None) if session is not None else None
    if key:
        stored = _StoredSession(session.__class__(key))
        return auth.get_user(SimpleNamespace(session=stored))  # type: ignore[arg-type]
    fresh = user.__class__._default_manager.filter(pk=user.pk).first()
    if fresh is None or not getattr(fresh, "is_active", True):
        return AnonymousUser()
    return fresh


class _StoredSession:
    """A session read from its store, for ``auth.get_user``: read-only (get_user flushes or
    cycles sessions that fail or need rehashing; a websocket check must not write them)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def cycle_key(self) -> None:
        pass


def _check(ref: StreamRef, user: Any) -> tuple[str, bool]:
    try:
        stream = resolve_ref(ref)
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
