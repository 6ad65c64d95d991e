"""Debounced refreshes: at most one ``refresh`` per stream per window, across all workers.

``stream.refresh(debounce=True)`` (and ModelStream ``Meta.broadcasts_refreshes``) reaches a
worker as a refresh to debounce. The worker sets the stream's window key in the channel
layer's Redis (on the stream's shard) if it is not set; only the worker that set it
schedules the *trailing* refresh: a ``turbo_tasks.deliver`` task with a countdown of
``REFRESH_DEBOUNCE_SECONDS``. Every later refresh of the stream in the window finds the key
and is dropped. The trailing task first deletes the key, then pushes the refresh, so a
change that comes after the delete opens a new window and one that came before it is
already committed when the page reloads: the last change is never lost.

The key's value is ``"<token>|<request id>|<sender>|<deadline ms>"``: a request id or
sender that differs between the refreshes of one window is cleared, so the trailing refresh
carries ``request-id`` (or skips a sender) only when all of them came from that one request.
A window whose trailing task has not closed it by its deadline (the window plus
``GRACE_SECONDS``: a worker lost between opening it and scheduling, or a long queue) is
taken over by the next refresh, which schedules a trailing refresh of its own. Works on
Redis 5 and later.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from turbo_tasks import _compat, conf, layers, publish
from turbo_tasks.jobs import trailing_refresh_job

if TYPE_CHECKING:
    from turbo_tasks.rendering import Broadcast

GRACE_SECONDS = 5
# The key outlives its deadline by this much, only to be collected eventually.
KEEP_SECONDS = 60

# KEYS[1]: the window key. ARGV: token, request id, sender ("" for none), window + grace in
# ms, ttl in ms. Returns 1 when this call opened the window (the caller schedules the
# trailing refresh).
_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('GET', KEYS[1])
if current then
  local token, rid, sender, deadline =
    string.match(current, '^([^|]*)|([^|]*)|([^|]*)|(%d+)$')
  if token and now <= tonumber(deadline) then
    if rid ~= ARGV[2] then rid = '' end
    if sender ~= ARGV[3] then sender = '' end
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then
      redis.call('SET', KEYS[1], token .. '|' .. rid .. '|' .. sender .. '|' .. deadline,
                 'PX', ttl)
    end
    return 0
  end
end
redis.call('SET', KEYS[1],
           ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. (now + tonumber(ARGV[4])),
           'PX', ARGV[5])
return 1
"""

# KEYS[1]: the window key. ARGV[1]: the trailing task's token. Closes the window if it is
# still that task's; returns {request id, sender} of its refreshes ({"", ""} otherwise).
_CLOSE = """
local current = redis.call('GET', KEYS[1])
if not current then return {'', ''} end
local token, rid, sender = string.match(current, '^([^|]*)|([^|]*)|([^|]*)|')
if token ~= ARGV[1] then return {'', ''} end
redis.call('DEL', KEYS[1])
return {rid, sender}
"""


def _key(layer: Any, group: str) -> str:
    return f"{_compat.prefix(layer)}:turbo_tasks:refresh:{group}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def open_window(layer: Any, group: str, request_id: str | None, sender: str | None) -> str:
    """Note a refresh of ``group``; return the token of the window it opened (the caller
    must schedule the trailing refresh with it), or "" when a window was open already."""
    token = secrets.token_hex(8)
    deadline = int((conf.get("REFRESH_DEBOUNCE_SECONDS") + GRACE_SECONDS) * 1000)
    connection = _compat.group_connection(layer, group)
    opened = await connection.eval(
        _OPEN,
        1,
        _key(layer, group),
        token,
        request_id or "",
        sender or "",
        deadline,
        deadline + KEEP_SECONDS * 1000,
    )
    return token if opened else ""


async def close_window(layer: Any, group: str, token: str) -> tuple[str | None, str | None]:
    """Close the window ``token`` opened (if it is still open); return the request id and
    sender every refresh in it shared (None where they differed or were absent)."""
    connection = _compat.group_connection(layer, group)
    rid, sender = await connection.eval(_CLOSE, 1, _key(layer, group), token)
    return _text(rid) or None, _text(sender) or None


def debounce(layer: Any, broadcasts: list[Broadcast], subscribed: set[str]) -> list[Broadcast]:
    """The broadcasts to push now, of those for ``subscribed`` groups: a debounced refresh
    opens its stream's window, and the trailing refreshes of the windows this task opened
    are scheduled in one message (a refresh finding its window open is dropped); a trailing
    refresh closes its window (subscribed or not) and takes the request id and sender its
    refreshes shared. The Redis calls run concurrently."""
    if not layers.can_debounce(layer) or not any(b.debounce or b.trailing for b in broadcasts):
        # No refresh to debounce (or, e.g. on the in-memory layer, no way to: all are sent).
        return [b for b in broadcasts if b.group in subscribed]
    trailing = [(b, token) for b in broadcasts if (token := b.trailing) is not None]
    closed = layers.run(layers.gather_bounded(close_window(layer, b.group, t) for b, t in trailing))
    for (b, _), (rid, sender) in zip(trailing, closed, strict=True):
        b.request = {k: v for k, v in (("request_id", rid), ("sender", sender)) if v}
    deferred = [b for b in broadcasts if b.debounce and b.trailing is None]
    opening = [b for b in deferred if b.group in subscribed]
    tokens = layers.run(
        layers.gather_bounded(
            open_window(layer, b.group, b.request.get("request_id"), b.exclude) for b in opening
        )
    )
    opened = [(b, token) for b, token in zip(opening, tokens, strict=True) if token]
    held = {id(b) for b in deferred}
    if opened:
        later = [trailing_refresh_job(b.stream.ref(), t, b.exclude is not None) for b, t in opened]
        sent = publish.send_jobs(later, countdown=conf.get("REFRESH_DEBOUNCE_SECONDS"))
        unsent = opened[sent:]
        if unsent:  # send them now rather than never
            layers.run(layers.gather_bounded(close_window(layer, b.group, t) for b, t in unsent))
            held -= {id(b) for b, _ in unsent}
    return [b for b in broadcasts if b.group in subscribed and id(b) not in held]
