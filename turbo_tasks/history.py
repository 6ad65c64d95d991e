"""Catch-up: each stream's recent frames, their offsets, and replay after a gap.

A page must not miss a change committed after it was rendered, even when its socket was
down meanwhile. So the worker appends every frame to its stream's *history* before pushing
it to the group, the consumer joins the group before reading the history, and a subscribe
carries ``since``, the offset of the last frame the page applied (or, first, the offset
``{% turbo_subscribe %}`` rendered into the page).

Per stream, in the channel layer's Redis, on the shard that holds the stream's group, found
the way the layer finds it (``_compat.shard_index``): on channels_redis' ``RedisChannelLayer``
the shard of the group's sorted set (``consistent_hash(group)``); on its
``RedisPubSubChannelLayer`` the shard the group's channel (``<prefix>__group__<group>``) is
published and subscribed on. ``<prefix>`` is the layer's (``"asgi"`` by default):

- ``<prefix>:turbo_tasks:meta:<group>``, a hash: ``inc`` (a random token made when the hash
  is created), ``seq`` (frames pushed so far) and ``watched`` (until when, in ms, a page
  rendered with this stream counts as watching it). It lives ``META_SECONDS`` after its
  last use, so a quiet stream keeps its offsets across socket drops.
- ``<prefix>:turbo_tasks:history:<group>``, a list of ``"<seq> <ms> <html>"`` entries: at
  most ``HISTORY_LENGTH`` of them, none older than ``HISTORY_SECONDS``.

An offset is ``"<inc>.<seq>"``. ``inc`` plays the role of an epoch: when Redis loses the
hash (a flush, a restart without persistence) the next use makes a new token, and every
offset of the old one is recognised as unusable, never mistaken for a recent one.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import redis.exceptions

from turbo_tasks import _compat, conf

logger = logging.getLogger(__name__)

# A stream's offsets survive this long after its last frame, render or subscribe.
META_SECONDS = 86_400
_OFFSET = re.compile(r"^([0-9a-f]{16})\.(\d{1,18})$")

# Lua shared by the scripts below: the server's time in ms, and a stream's epoch token,
# made (from the caller's fresh one) when its hash does not exist.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def _inc_of(key: str, new: str) -> str:
    return f"""
local inc = redis.call('HGET', {key}, 'inc')
if not inc then
  inc = {new}
  redis.call('HSET', {key}, 'inc', inc, 'seq', 0)
end
"""


# KEYS: meta, history. ARGV: html, length, seconds, new inc, meta seconds.
_PUSH = (
    _NOW
    + _inc_of("KEYS[1]", "ARGV[4]")
    + """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('RPUSH', KEYS[2], seq .. ' ' .. now .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
local cutoff = now - tonumber(ARGV[3]) * 1000
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if not head then break end
  local _, _, stamp = string.find(head, '^%d+ (%d+) ')
  if tonumber(stamp) >= cutoff then break end
  redis.call('LPOP', KEYS[2])
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 1000)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {inc, seq}
"""
)

# _PUSH, then the group's live members (core layer): KEYS: meta, history, group.
# ARGV: as _PUSH, then alive since (s). Returns {inc, seq, member...}. The members are read
# after the append, as channels_redis' group_send would read them after a separate append:
# a socket that joins later reads the history after joining, and finds the frame there.
_PUSH_MEMBERS = _PUSH.replace(
    "return {inc, seq}",
    """redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, ARGV[6])
local out = redis.call('ZRANGE', KEYS[3], 0, -1)
table.insert(out, 1, seq)
table.insert(out, 1, inc)
return out""",
)
# Core layer, catch-up off: the group's live members. KEYS: group. ARGV: alive since (s).
_MEMBERS = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: meta, history. ARGV: since inc ('' for none), since seq, new inc, meta seconds,
# watch seconds. Returns {inc, seq, status, entries...}: status 'live' (no since), 'ok'
# (the entries after since follow) or 'reset' (the history cannot serve since).
_READ = (
    _NOW
    + _inc_of("KEYS[1]", "ARGV[3]")
    + """
redis.call('HSET', KEYS[1], 'watched', now + tonumber(ARGV[5]) * 1000)
redis.call('EXPIRE', KEYS[1], ARGV[4])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
if ARGV[1] == '' then return {inc, seq, 'live'} end
local since = tonumber(ARGV[2])
if ARGV[1] ~= inc or since > seq then return {inc, seq, 'reset'} end
if since == seq then return {inc, seq, 'ok'} end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return {inc, seq, 'reset'} end
local _, _, first = string.find(head, '^(%d+) ')
first = tonumber(first)
if first > since + 1 then return {inc, seq, 'reset'} end
local out = {inc, seq, 'ok'}
for _, entry in ipairs(redis.call('LRANGE', KEYS[2], since + 1 - first, -1)) do
  table.insert(out, entry)
end
return out
"""
)

# KEYS: metas. ARGV: one new inc per key, then watch seconds, meta seconds.
_WATCH = (
    _NOW
    + """
local n = #KEYS
local until_ms = now + tonumber(ARGV[n + 1]) * 1000
local out = {}
for i, key in ipairs(KEYS) do"""
    + _inc_of("key", "ARGV[i]")
    + """
  redis.call('HSET', key, 'watched', until_ms)
  redis.call('EXPIRE', key, ARGV[n + 2])
  out[i] = inc .. '.' .. redis.call('HGET', key, 'seq')
end
return out
"""
)


def _watched(members: str) -> str:
    """1 when the group has a live member (the ``members`` test), or a page rendered or
    subscribed with the stream within the watch window. Otherwise the frame is not
    rendered, and the stream's seq moves on anyway: a page that comes back with an older
    since then finds a hole and gets reset, instead of silently missing the change."""
    return (
        members
        + _NOW
        + """
local watched = tonumber(redis.call('HGET', KEYS[1], 'watched') or '0')
if watched > now then return 1 end
if watched > 0 then redis.call('HINCRBY', KEYS[1], 'seq', 1) end
return 0
"""
    )


# Core layer. KEYS: meta, group. ARGV: alive since (s): members joined before are dead.
_WATCHED = _watched("if redis.call('ZCOUNT', KEYS[2], ARGV[1], '+inf') > 0 then return 1 end")
# Pub/sub layer. KEYS: meta. ARGV: the group's channel: a member is a process subscribed
# to it (on this shard, where the layer subscribes and publishes it).
_WATCHED_PUBSUB = _watched("if redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2] > 0 then return 1 end")

# KEYS: metas. Each stream's offset, '' for a stream without one (one flat reply: for
# thousands of streams, far cheaper to parse than a pipeline's replies).
_OFFSETS = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'inc', 'seq')
  out[i] = v[1] and v[2] and (v[1] .. '.' .. v[2]) or ''
end
return out
"""

# KEYS: metas. ARGV: watch seconds. A socket that leaves keeps its streams watched for
# the window, so what it misses while reconnecting is rendered into the history.
_TOUCH = (
    _NOW
    + """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'watched', now + tonumber(ARGV[1]) * 1000)
  end
end
return 0
"""
)


def enabled(layer: Any) -> bool:
    """Catch-up needs ``HISTORY_LENGTH`` > 0 and one of channels_redis' layers (we know
    where their groups live, so where a stream's history goes; checks.py warns about any
    other layer)."""
    return bool(conf.get("HISTORY_LENGTH")) and _compat.is_redis_layer(layer)


def offset(inc: str, seq: int) -> str:
    return f"{inc}.{seq}"


def parse(value: Any) -> tuple[str, int] | None:
    """``(inc, seq)`` of a well-formed offset, else None."""
    match = _OFFSET.match(value) if isinstance(value, str) else None
    return (match[1], int(match[2])) if match else None


def _keys(layer: Any, group: str) -> tuple[str, str]:
    return (
        f"{_compat.prefix(layer)}:turbo_tasks:meta:{group}",
        f"{_compat.prefix(layer)}:turbo_tasks:history:{group}",
    )


def _new_inc() -> str:
    return secrets.token_hex(8)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- worker ------------------------------------------------------------------------------


async def append(layer: Any, group: str, html: str) -> str:
    """Append one frame to ``group``'s history; return its offset. Call before pushing."""
    connection = _compat.group_connection(layer, group)
    inc, seq = await connection.eval(
        _PUSH,
        2,
        *_keys(layer, group),
        html,
        conf.get("HISTORY_LENGTH"),
        conf.get("HISTORY_SECONDS"),
        _new_inc(),
        META_SECONDS,
    )
    return offset(_text(inc), int(seq))


async def send(layer: Any, group: str, event: dict[str, Any], keep: bool) -> None:
    """``group_send`` of ``event`` to ``group``, after appending its html to the history
    when ``keep`` (setting its ``offset``). On channels_redis' core layer, two round trips
    (the append and the member read in one script, then one script per shard writing the
    channels) instead of five; elsewhere ``append`` then the layer's ``group_send``."""
    if not _compat.sends_directly(layer):
        if keep:
            event["offset"] = await append(layer, group, event["html"])
        await layer.group_send(group, event)
        return
    connection = _compat.group_connection(layer, group)
    key = _compat.group_key(layer, group)
    if keep:
        inc, seq, *members = await connection.eval(
            _PUSH_MEMBERS,
            3,
            *_keys(layer, group),
            key,
            event["html"],
            conf.get("HISTORY_LENGTH"),
            conf.get("HISTORY_SECONDS"),
            _new_inc(),
            META_SECONDS,
            _compat.alive_since(layer),
        )
        event["offset"] = offset(_text(inc), int(seq))
    else:
        members = await connection.eval(_MEMBERS, 1, key, _compat.alive_since(layer))
    await _compat.send_to_members(layer, group, members, event)


async def wanted(layer: Any, group: str) -> bool:
    """Whether a frame for ``group`` is to be rendered: it has a live member, or a page
    rendered or subscribed with its stream within the history window (its socket may not
    have subscribed yet, or be reconnecting). When not, the stream's seq moves on, so an
    older ``since`` gets ``reset`` rather than silently missing the skipped frame."""
    meta, _ = _keys(layer, group)
    connection = _compat.group_connection(layer, group)
    if _compat.is_redis_pubsub_layer(layer):
        channel = _compat.group_channel(layer, group)
        return bool(await connection.eval(_WATCHED_PUBSUB, 1, meta, channel))
    alive_since = int(time.time()) - layer.group_expiry
    key = _compat.group_key(layer, group)
    return bool(await connection.eval(_WATCHED, 2, meta, key, alive_since))


# -- consumer ----------------------------------------------------------------------------


async def read(
    layer: Any, group: str, since: tuple[str, int] | None
) -> tuple[str, str, list[tuple[str, str]]]:
    """After joining ``group``: ``(status, current offset, entries)`` where status is
    ``live`` (no since), ``ok`` (entries are ``(offset, html)`` after since, in order) or
    ``reset`` (the history cannot serve since)."""
    connection = _compat.group_connection(layer, group)
    inc_since, seq_since = since if since is not None else ("", 0)
    result = await connection.eval(
        _READ,
        2,
        *_keys(layer, group),
        inc_since,
        seq_since,
        _new_inc(),
        META_SECONDS,
        conf.get("HISTORY_SECONDS"),
    )
    inc, seq, status = _text(result[0]), int(result[1]), _text(result[2])
    entries = []
    for raw in result[3:]:
        number, _, rest = _text(raw).partition(" ")
        entries.append((offset(inc, int(number)), rest.partition(" ")[2]))
    return status, offset(inc, seq), entries


async def left(layer: Any, group: str) -> None:
    """A socket left ``group`` (it may be reconnecting): keep the stream watched."""
    meta, _ = _keys(layer, group)
    connection = _compat.group_connection(layer, group)
    await connection.eval(_TOUCH, 1, meta, conf.get("HISTORY_SECONDS"))


def queue_left(layer: Any, pipe: Any, group: str) -> None:
    """``left(layer, group)``, queued on ``pipe`` (a pipeline to the group's shard)."""
    pipe.eval(_TOUCH, 1, _keys(layer, group)[0], conf.get("HISTORY_SECONDS"))


async def current(layer: Any, groups: Iterable[str]) -> dict[str, tuple[str, int]]:
    """``(inc, seq)`` of each group's stream as Redis has it now (streams without offsets
    are left out), for the consumer's gap check: one round trip per shard involved, with
    no side effects."""
    offsets: dict[str, tuple[str, int]] = {}
    for index, shard_groups in _by_shard(layer, groups).items():
        metas = [_keys(layer, group)[0] for group in shard_groups]
        connection = _compat.shard_connection(layer, index)
        result = await connection.eval(_OFFSETS, len(metas), *metas)
        for group, value in zip(shard_groups, result, strict=True):
            if parsed := parse(_text(value)):
                offsets[group] = parsed
    return offsets


def _by_shard(layer: Any, groups: Iterable[str]) -> dict[int, list[str]]:
    by_shard: dict[int, list[str]] = defaultdict(list)
    for group in dict.fromkeys(groups):
        by_shard[_compat.shard_index(layer, group)].append(group)
    return by_shard


# -- page render -------------------------------------------------------------------------


def current_offsets(layer: Any, groups: Iterable[str]) -> dict[str, str]:
    """The current offset of each group's stream, and mark each as watched for the
    history window: one Redis round trip per shard involved (one, unsharded).

    A shard that does not answer (within ``_compat.SYNC_TIMEOUT_SECONDS``) is logged and its
    streams left out: the page still renders, and subscribes without ``since`` (it may miss
    what is committed before its socket subscribes) rather than fail."""
    offsets: dict[str, str] = {}
    for index, shard_groups in _by_shard(layer, groups).items():
        client = _compat.sync_client(layer, index)
        metas = [_keys(layer, group)[0] for group in shard_groups]
        try:
            result = client.eval(
                _WATCH,
                len(metas),
                *metas,
                *(_new_inc() for _ in metas),
                conf.get("HISTORY_SECONDS"),
                META_SECONDS,
            )
        except (redis.exceptions.RedisError, OSError):
            logger.warning(
                "turbo_tasks: the channel layer's Redis (shard %d) did not answer; rendering "
                "%d stream(s) without since",
                index,
                len(shard_groups),
                exc_info=True,
            )
            continue
        offsets.update(zip(shard_groups, (_text(v) for v in result), strict=True))
    return offsets
