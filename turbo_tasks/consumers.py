"""The websocket consumer: the subscribe path. See docs/ref/protocol.md."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from turbo_tasks import (
    _compat,
    conf,
    gaps,
    history,
    metrics,
    permissions,
    presence,
    signing,
    storm,
)
from turbo_tasks.exceptions import StreamRejected
from turbo_tasks.gaps import Mark

logger = logging.getLogger(__name__)

# Messages whose handlers (this module's) query only through database_sync_to_async:
# dispatched without Channels' close_old_connections hop first (see dispatch).
_NO_DB_CLEANUP = frozenset(
    {"turbo.message", "websocket.connect", "websocket.receive", "websocket.disconnect"}
)

# Gap repairs in a row with no live frame in between before a socket counts as deaf.
DEAF_REPAIRS = 3


# Lost connections one receive may read past while Redis still answers a PING.
MAX_RECONNECTS = 10


def _patient(consumer: Any, receive: Any) -> Any:
    """The channel layer's receive for a consumer's channel, made patient: keep waiting past
    a read that timed out, rather than die with 1011 (an idle read times out whenever the
    socket timeout is not longer than channels_redis' blocking receive), and past a lost
    connection (killed, or a failover: redis-py opens a new one) while the layer's Redis
    still answers a PING. Nothing is lost: messages stay queued in Redis, and the gap check
    replays what a pub/sub subscriber missed while it reconnected. A Redis that does not
    answer is down: the socket closes, and the page knows it."""

    async def patient_receive() -> Any:
        lost = 0
        while True:
            try:
                return await receive()
            except _compat.RECEIVE_TIMEOUTS:
                logger.debug("turbo_tasks: a channel-layer read timed out; reading again")
            except _compat.RECEIVE_DISCONNECTS:
                lost += 1
                layer = consumer.channel_layer
                if lost > MAX_RECONNECTS or not await asyncio.to_thread(_compat.answers, layer):
                    raise
                logger.warning(
                    "turbo_tasks: lost the channel layer's Redis connection; reconnecting",
                    exc_info=True,
                )

    return patient_receive


class TurboStreamsConsumer(AsyncWebsocketConsumer):
    """One socket, any number of stream subscriptions (docs/ref/protocol.md).

    Client → server: ``{"type": "subscribe", "stream": "<signed name>", "since": "<offset>"}``
    (``since`` optional) and ``{"type": "unsubscribe", "stream": …}``.
    Server → client: first ``hello`` (this connection's ``socket_id``); ``message`` (the
    ``<turbo-stream>`` ``html`` and its ``offset``), first the frames after ``since`` from
    the stream's history, then ``subscribed`` (with the current ``offset``) and live frames,
    each once and in offset order (frames missing below one that arrives, or found missing
    by the gap check, are sent from the history first: turbo_tasks.gaps);
    ``reset`` when the history cannot serve ``since`` or a gap; ``rejected`` (with a ``reason``);
    ``revoked`` when the user no longer passes ``user_passes_test``; ``error`` for malformed
    frames, the socket stays open.
    """

    @property
    def channel_layer_alias(self) -> str:
        # Read per connection (AsyncConsumer looks it up in __call__), not at import.
        return str(conf.get("CHANNEL_LAYER"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        _compat.fit_layer_for_consumers(self.channel_layer_alias)
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A consumer that crashed (e.g. Redis down in a group_add) never runs
            # disconnect(); its refresher would re-add the dead channel forever.
            refresher = getattr(self, "_refresher", None)
            if refresher is not None:
                refresher.cancel()
            self._uncount()

    channel_receive = _compat.wrapped_channel_receive(_patient)

    async def connect(self) -> None:
        # group -> {signed name: its mark, the (inc, seq) up to which the page has every
        # frame (None with catch-up off, or while it subscribes)}.
        self.subscriptions: dict[str, dict[str, tuple[str, int] | None]] = {}
        # Held while a group change and the membership check before it must not be
        # interleaved with the refresher (which runs beside the receive loop).
        self._membership = asyncio.Lock()
        # Held while frames are forwarded to, or replayed for, subscriptions: the gap
        # check runs beside the receive loop, and a mark must only move forward.
        self._streams = asyncio.Lock()
        # Gap check: group -> the offset its subscriptions must reach by the next check.
        self._targets: dict[str, Mark] = {}
        self._repairs_since_live = 0
        self._refresher = asyncio.create_task(self._refresh_groups())
        # Unguessable, and bound to this socket's user: only that user's requests carrying
        # it (X-Turbo-Tasks-Socket) keep frames sent with exclude_sender from this socket.
        user = self.scope.get("user")
        user_pk = user.pk if getattr(user, "is_authenticated", False) else None
        self.socket_id = signing.new_socket_id(user_pk)
        await super().connect()
        self._counted = True
        metrics.socket_opened()
        presence.start("web")  # once per process: for turbo_tasks_status
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
        allowed = await permissions.authorize_all(names, self.scope)
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
            gaps.unwatch(self, self.channel_layer)
            # The page may be reconnecting: keep what it misses meanwhile in the history.
            watched = history.enabled(self.channel_layer)
            for group in self.subscriptions:
                await self._leave(group, keep_watched=watched)
        self._uncount()
        self.subscriptions = {}

    def _uncount(self) -> None:
        """Take this socket and its subscriptions out of the metrics' gauges, once."""
        if getattr(self, "_counted", False):
            self._counted = False
            metrics.socket_opened(-1)
            metrics.subscriptions_changed(-sum(map(len, self.subscriptions.values())))

    def _add(self, group: str, name: str) -> None:
        """Hold the subscription ``name`` (in ``group``), its mark unknown so far."""
        names = self.subscriptions.setdefault(group, {})
        if name not in names:
            metrics.subscriptions_changed(1)
        names[name] = None

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
            resolved, allowed = await permissions.authorize(ref, self.scope)
        except StreamRejected as exc:
            await self._leave_unused(joined)
            return await self._reply("rejected", stream=name, reason=exc.reason)
        if resolved != group:  # a stream whose arguments normalise differently
            await self._leave_unused(joined)
            joined, group = await self._join_new(resolved), resolved
        if not allowed:
            await self._leave_unused(joined)
            return await self._reply("rejected", stream=name, reason="forbidden")
        if not history.enabled(self.channel_layer):
            async with self._membership:
                self._add(group, name)
            return await self._reply("subscribed", stream=name)
        async with self._streams:  # no gap repair of this name while it catches up
            await self._catch_up(group, name, since)

    async def _catch_up(self, group: str, name: str, since: str | None) -> None:
        async with self._membership:
            self._add(group, name)
        # Live frames for this group wait while we read: a consumer handles one event at
        # a time, so none can slip past the mark.
        wanted = history.parse(since)
        # Within the group changes' bound on the Redis pool, shared with the sockets
        # subscribing to this stream with the same since at the same time (turbo_tasks.storm).
        status, current, entries = await storm.read_history(self.channel_layer, group, wanted)
        if since is not None and (wanted is None or status == "reset"):
            await self._reply("reset", stream=name)
        if entries:
            # One message for the whole replay (Turbo applies every <turbo-stream> in it),
            # not one per frame: after a restart every page catches up at once.
            if name not in self.subscriptions.get(group, {}):
                return  # revoked (by the refresher) while the history was read
            html = "".join(html for _, html in entries)
            await self._reply("message", stream=name, html=html, offset=entries[-1][0])
            metrics.replayed(len(entries))
        if name not in self.subscriptions.get(group, {}):
            return
        # From here on the page has every frame up to current: live frames at or below it
        # are dropped, and one above current + 1 shows a gap (see _forward).
        self.subscriptions[group][name] = history.parse(current)
        gaps.watch(self, self.channel_layer)
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
            metrics.subscriptions_changed(-1)
            if not names:
                del self.subscriptions[group]
                await self._leave(group)
            return True

    async def _join(self, group: str) -> None:
        await storm.join(self.channel_layer, group, self.channel_name)

    async def _leave(self, group: str, keep_watched: bool = False) -> None:
        await storm.leave(self.channel_layer, group, self.channel_name, keep_watched)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections in its one thread-sensitive executor before
        # every handler: for a frame sent to 1,000 sockets, 1,000 hops through one thread
        # (most of the fan-out time in the benchmark), and after a server restart three
        # per reconnecting page (connect, subscribe, disconnect). A frame touches no
        # database, and every query here goes through database_sync_to_async, which cleans
        # up around itself (permissions.authorize, authorize_all).
        if message.get("type") in _NO_DB_CLEANUP:
            await _compat.dispatch_without_db_cleanup(self, message)
        else:
            await super().dispatch(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # Channels' own handler awaits close_old_connections after disconnect(): one more
        # hop per closing page (see dispatch); disconnect() queries nothing.
        await _compat.websocket_disconnect_without_db_cleanup(self, message)

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
                metrics.frame_sent(event.get("pushed"))
            return
        at = history.parse(offset)
        if at is None:
            return
        async with self._streams:
            self._repairs_since_live = 0
            for name in sorted(names):
                if await self._forward(event["group"], name, html, at):
                    metrics.frame_sent(event.get("pushed"))

    async def _forward(self, group: str, name: str, html: str, at: Mark) -> bool:
        """Send the frame at offset ``at`` unless the page has it; first the frames missing
        below it (lost, or still on their way from another worker) from the history. True
        when the frame went as it came."""
        mark = self.subscriptions.get(group, {}).get(name)
        if mark is not None and not gaps.behind(mark, at):
            return False  # replayed already, or a repeat
        if mark is not None and (mark[0] != at[0] or at[1] > mark[1] + 1):
            logger.debug("turbo_tasks: %s skipped from %s to %s; filling", group, mark, at)
            await self._fill(group, name, mark, "skip")  # the history has `at` too
            return False
        await self._reply("message", stream=name, html=html, offset=history.offset(*at))
        if name in self.subscriptions.get(group, {}):
            self.subscriptions[group][name] = at
        return True

    async def _fill(self, group: str, name: str, mark: Mark, cause: str) -> None:
        """Send ``name`` every frame of its stream after ``mark``, one message each (so the
        element's resume point moves over them), or ``reset`` if the history cannot.
        ``cause`` (for the metrics): ``skip``, a frame came ahead; ``check``, the gap check."""
        async with storm.slot():
            status, current, entries = await history.read(self.channel_layer, group, mark)
        if name not in self.subscriptions.get(group, {}):
            return  # unsubscribed or revoked meanwhile
        metrics.repaired(cause, len(entries))
        if status == "reset":
            await self._reply("reset", stream=name)
        for offset, html in entries:
            await self._reply("message", stream=name, html=html, offset=offset)
        self.subscriptions[group][name] = history.parse(current)

    async def check_progress(self, current: dict[str, Mark]) -> None:
        """The gap check (turbo_tasks.gaps): repair subscriptions still below the offset
        the previous check saw, and remember where the others must be by the next one."""
        overdue = []
        for group, names in list(self.subscriptions.items()):
            target, now = self._targets.pop(group, None), current.get(group)
            lagging = [m for m in names.values() if m is not None and now and gaps.behind(m, now)]
            if target is not None and any(gaps.behind(m, target) for m in lagging):
                overdue.append(group)
            elif lagging and now is not None:
                self._targets[group] = now
        if not overdue:
            return
        self._repairs_since_live += 1
        if self._repairs_since_live > DEAF_REPAIRS:
            # Frames reach this socket only through repairs: its channel-layer receive is
            # broken. The element reconnects (and catches up) on a fresh one.
            logger.warning("turbo_tasks: a socket receives no frames; closing it to reconnect")
            await self.close(code=1011)
            return
        async with self._streams:
            for group in overdue:
                logger.info("turbo_tasks: frames for %s never arrived; replaying them", group)
                for name, mark in list(self.subscriptions.get(group, {}).items()):
                    if mark is not None:
                        await self._fill(group, name, mark, "check")
                async with self._membership:  # the membership may be what was lost
                    if group in self.subscriptions:
                        await self._join(group)

    async def _reply(self, kind: str, **fields: Any) -> None:
        await self.send(text_data=json.dumps({"type": kind, **fields}))
        metrics.replied(kind, fields)

    async def _error(self, reason: str) -> None:
        await self._reply("error", reason=reason)
