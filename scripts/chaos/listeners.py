"""The two listeners of the chaos run, each a process of its own (so the producer's work in
the orchestrator cannot slow them down and make *them* the bottleneck).

    python scripts/chaos/listeners.py tap  --redis URL --group GROUP --out FILE
    python scripts/chaos/listeners.py ws   --url ws://.../ws/turbo/ --stream SIGNED --out FILE

``tap`` is a channels_redis consumer that stays in the room's group: what the library
delivers *to the channel layer*. It keeps one channel name for its whole life (messages
that wait in Redis while it is disconnected are still read), re-``group_add``s every
couple of seconds and right after every error (a Redis that lost its data also lost the
group), and never gives up.

``ws`` is a page: one websocket to the ASGI server, subscribed to the room stream, that
reconnects with backoff and re-subscribes whenever the socket drops, like the
``<turbo-channels-stream-source>`` element. What it misses while disconnected is gone.

Both write JSON lines, flushed one by one: ``{"t": time, "ev": "frame", "ids": [...],
"n": turbo-stream elements}`` for every message, plus events (``ready``, ``subscribed``,
``disconnected``, ``error``...). Message ids come from the frames' markup
(``<p id="message-N">`` in an append, ``target="message-N"`` in a replace/remove).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import sys
import time
from typing import Any, TextIO

STREAM_RE = re.compile(r'<turbo-stream action="([a-z]+)"[^>]*>(.*?)</turbo-stream>', re.S)
MESSAGE_ID_RE = re.compile(r'\bmessage-(\d+)"')


def parse(html: str) -> tuple[list[int], int]:
    """The message ids a ``<turbo-stream>`` payload *adds* (append/prepend: one per created
    row; replace/remove frames of edits and deletes are not counted), and how many
    ``<turbo-stream>`` elements it holds."""
    ids, count = [], 0
    for match in STREAM_RE.finditer(html):
        count += 1
        if match.group(1) not in ("append", "prepend"):
            continue
        found = MESSAGE_ID_RE.search(match.group(0))
        if found:
            ids.append(int(found.group(1)))
    return ids, count


class Out:
    def __init__(self, path: str) -> None:
        self.file: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as we do

    def __call__(self, ev: str, **fields: Any) -> None:
        self.file.write(json.dumps({"t": round(time.time(), 4), "ev": ev, **fields}) + "\n")


# -- the channel-layer tap -------------------------------------------------------------------


async def tap(redis_url: str, group: str, out: Out, readd_every: float, kind: str) -> None:
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    # The same layer settings as the project's (tests/settings.py): redis-py 8's default
    # 5 s socket timeout would cut channels_redis' 5 s blocking pop.
    hosts = [{"address": redis_url, "socket_timeout": 15}]
    layer = (
        RedisPubSubChannelLayer(hosts=hosts) if kind == "pubsub" else RedisChannelLayer(hosts=hosts)
    )
    channel = await layer.new_channel()
    failed = asyncio.Event()

    async def member() -> None:
        """Stay in the group: re-add periodically, and at once after an error."""
        announced = False
        while True:
            try:
                failed.clear()
                await layer.group_add(group, channel)
            except Exception as exc:
                out("error", where="group_add", error=repr(exc)[:300])
                await asyncio.sleep(0.25)
                continue
            if not announced:
                out("ready", channel=channel, group=group)
                announced = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(failed.wait(), readd_every)

    keeper = asyncio.create_task(member())
    try:
        while True:
            try:
                message = await layer.receive(channel)
            except Exception as exc:
                out("error", where="receive", error=repr(exc)[:300])
                failed.set()
                await asyncio.sleep(0.25)
                continue
            ids, count = parse(str(message.get("html", "")))
            out("frame", ids=ids, n=count)
    finally:
        keeper.cancel()


# -- the websocket page ----------------------------------------------------------------------


async def page(url: str, stream: str, out: Out, ack_timeout: float) -> None:
    """A page. Like the ``<turbo-channels-stream-source>`` element, it reconnects (with the
    element's backoff) only when the socket closes. A subscribe left unanswered for 5 s is
    reported once (``unanswered``: the socket is open but its consumer is gone); with
    ``ack_timeout`` > 0 the page instead gives up on such a socket and reconnects."""
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    attempts = 0
    while True:
        try:
            async with connect(url, origin="http://127.0.0.1", open_timeout=5) as ws:  # type: ignore[arg-type]
                attempts = 0  # as the element: an open socket resets the backoff
                out("connected")
                await ws.send(json.dumps({"type": "subscribe", "stream": stream}))
                deadline: float | None = loop.time() + (ack_timeout or 5.0)
                while True:
                    wait = None if deadline is None else max(0.0, deadline - loop.time())
                    try:
                        raw = await asyncio.wait_for(ws.recv(), wait)
                    except asyncio.TimeoutError:
                        if ack_timeout:
                            out("ack-timeout", after_s=ack_timeout)
                            break
                        out("unanswered", after_s=5.0)
                        deadline = None
                        continue
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "message":
                        ids, count = parse(frame.get("html", ""))
                        out("frame", ids=ids, n=count)
                    elif kind == "subscribed":
                        out("subscribed")
                        deadline = None
                    else:
                        out(str(kind), frame=frame)
            out("disconnected", error="closed by the page" if ack_timeout else "closed")
        except Exception as exc:
            out("disconnected", error=repr(exc)[:300])
        # The element's reconnect (turbo-tasks.js): 0.5 s doubling per failed connect,
        # capped at 30 s, with +-50% jitter.
        await asyncio.sleep(min(30.0, min(30.0, 0.5 * 2**attempts) * (0.5 + random.random())))
        attempts += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    t = sub.add_parser("tap")
    t.add_argument("--redis", required=True)
    t.add_argument("--group", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--readd-every", type=float, default=2.0)
    t.add_argument("--layer", choices=("core", "pubsub"), default="core")
    w = sub.add_parser("ws")
    w.add_argument("--url", required=True)
    w.add_argument("--stream", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--ack-timeout", type=float, default=0.0)
    args = parser.parse_args()
    out = Out(args.out)
    # Ctrl-C reaches the whole foreground process group: leave quietly, the orchestrator
    # stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.role == "tap":
        asyncio.run(tap(args.redis, args.group, out, args.readd_every, args.layer))
    else:
        asyncio.run(page(args.url, args.stream, out, args.ack_timeout))


if __name__ == "__main__":
    sys.exit(main())
