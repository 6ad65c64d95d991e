#!/usr/bin/env python
"""Websocket client of the fan-out benchmarks, run as a subprocess of bench/run.py so its
CPU work does not share a GIL with the producer.

Opens ``--sockets`` websockets to the ASGI server (``--url`` once per ASGI process: the
sockets go to them in turn), subscribes each to ``--stream`` (the
turbo_tasks protocol), prints ``READY {…}`` once all are subscribed, then records when each
socket first sees each ``<p id="m-<pk>">text</p>`` item (a frame may carry many), until every
socket has ``--expect`` distinct items, a ``STOP`` line arrives on stdin, or ``--timeout``.
Prints ``DONE <time>``, closes the sockets, prints ``RESULT {…}`` and exits. Times are
``time.time()`` (same machine clock as the producer, which writes its own ``time.time()``
into the row text for latency).

With ``--catch-up`` (F4) it subscribes the sockets and prints ``READY``, then lets the server
close them (the ASGI server restarts) and waits for a ``GO`` line on stdin; then every socket
reconnects at once and subscribes with ``since`` = the offset it was subscribed at, and the
client times until every socket has received ``--expect`` items *and* ``subscribed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import statistics
import sys
import threading
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# F2's template also stamps the worker's task start and render times.
ITEM = re.compile(
    r'<p id="m-(\d+)"(?: data-started="([\d.]+)" data-rendered="([\d.]+)")?>([^<]*)</p>'
)


def _ready(open_seconds: float, errors: list[str], **extra: object) -> None:
    """Tell the bench the sockets are open (one JSON line on stdout)."""
    report = {"open_seconds": open_seconds, "open_errors": errors[:20]}
    print("READY " + json.dumps({**report, "open_error_count": len(errors), **extra}), flush=True)


def url_of(args: argparse.Namespace, index: int) -> str:
    """The ASGI process of socket ``index``: round-robin over the ``--url``s."""
    urls: list[str] = args.url
    return urls[index % len(urls)]


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def open_socket(url: str, stream: str, limit: asyncio.Semaphore, errors: list[str]):
    """Connect and subscribe; like the browser element, retry (3 times) a socket that fails."""
    for attempt in range(4):
        async with limit:
            try:
                ws = await connect(
                    url,
                    origin="http://127.0.0.1",
                    open_timeout=60,
                    ping_interval=None,  # no keepalive traffic during the measurement
                    close_timeout=1,
                    max_size=None,
                    compression=None if os.environ.get("BENCH_WS_NO_COMPRESSION") else "deflate",
                )
                await ws.send(json.dumps({"type": "subscribe", "stream": stream}))
                while True:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if reply.get("type") == "subscribed":
                        return ws
                    if reply.get("type") in ("rejected", "error"):
                        raise RuntimeError(f"subscribe failed: {reply}")
            except (OSError, ConnectionClosed, asyncio.TimeoutError, RuntimeError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                if attempt == 3:
                    raise
        await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def catch_up(args: argparse.Namespace) -> dict:
    """F4: subscribe, lose the sockets to a server restart, reconnect all at once with
    ``since``; time until each socket has caught up."""
    raise_fd_limit(args.sockets * 2 + 256)
    limit = asyncio.Semaphore(args.concurrency)
    errors: list[str] = []
    started = time.time()
    offsets: list[str] = []

    async def first(index: int) -> None:
        ws = None
        for attempt in range(4):
            async with limit:
                try:
                    ws = await connect(
                        url_of(args, index),
                        origin="http://127.0.0.1",
                        open_timeout=60,
                        ping_interval=None,
                    )
                    await ws.send(json.dumps({"type": "subscribe", "stream": args.stream}))
                    while True:
                        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                        if reply.get("type") == "subscribed":
                            offsets[index] = reply["offset"]
                            break
                    break
                except (OSError, ConnectionClosed, asyncio.TimeoutError, KeyError) as exc:
                    errors.append(f"open {type(exc).__name__}: {exc}")
                    ws = None
            await asyncio.sleep(0.2 * (attempt + 1))
        if ws is None:
            raise RuntimeError(f"socket {index} could not subscribe")
        ready.release()
        # Held open until the server closes it (its restart).
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    offsets = [""] * args.sockets
    ready = asyncio.Semaphore(0)
    holders = [asyncio.create_task(first(i)) for i in range(args.sockets)]
    for _ in range(args.sockets):
        await ready.acquire()
    open_seconds = time.time() - started
    loop = asyncio.get_running_loop()
    go = asyncio.Event()

    def wait_go() -> None:
        for line in sys.stdin:
            if line.strip() == "GO":
                loop.call_soon_threadsafe(go.set)
                return

    threading.Thread(target=wait_go, daemon=True).start()
    _ready(open_seconds, errors, offsets=sorted(set(offsets)))
    await go.wait()
    closed = sum(1 for t in holders if t.done())
    await asyncio.wait(holders, timeout=10)
    again = asyncio.Semaphore(args.reconnect_concurrency)
    t0 = time.time()
    done_at: list[float | None] = [None] * args.sockets
    received = [0] * args.sockets
    messages = [0] * args.sockets
    resets = [0]

    async def reconnect(index: int) -> None:
        since = offsets[index]
        items: set[str] = set()
        for attempt in range(4):
            async with again:
                try:
                    async with connect(
                        url_of(args, index),
                        origin="http://127.0.0.1",
                        open_timeout=60,
                        ping_interval=None,
                        close_timeout=1,
                    ) as ws:
                        await ws.send(
                            json.dumps({"type": "subscribe", "stream": args.stream, "since": since})
                        )
                        subscribed = False
                        while not (subscribed and len(items) >= args.expect):
                            reply = json.loads(await asyncio.wait_for(ws.recv(), args.timeout))
                            kind = reply.get("type")
                            if kind == "message":
                                messages[index] += 1
                                items.update(m[0] for m in ITEM.findall(reply.get("html", "")))
                                since = reply.get("offset") or since
                            elif kind == "subscribed":
                                subscribed = True
                            elif kind == "reset":
                                resets[0] += 1
                        done_at[index] = time.time()
                        received[index] = len(items)
                        return
                except (OSError, ConnectionClosed, asyncio.TimeoutError) as exc:
                    errors.append(f"reconnect {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.2 * (attempt + 1))
        received[index] = len(items)

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(reconnect(i) for i in range(args.sockets))), args.timeout
        )
    times = sorted(t - t0 for t in done_at if t is not None)
    return {
        "sockets": args.sockets,
        "open_seconds": open_seconds,
        "closed_by_server_before_go": closed,
        "caught_up": len(times),
        "complete": len(times) == args.sockets,
        "all_seconds": times[-1] if len(times) == args.sockets else None,
        "p50_seconds": statistics.median(times) if times else None,
        "first_seconds": times[0] if times else None,
        "items_min": min(received),
        "messages_per_socket_max": max(messages),
        "resets": resets[0],
        "errors": errors[:20],
        "error_count": len(errors),
    }


async def main(args: argparse.Namespace) -> dict:
    raise_fd_limit(args.sockets * 2 + 256)
    limit = asyncio.Semaphore(args.concurrency)
    started = time.time()
    errors: list[str] = []
    sockets = await asyncio.gather(
        *(open_socket(url_of(args, i), args.stream, limit, errors) for i in range(args.sockets))
    )
    open_seconds = time.time() - started

    seen: list[dict[str, float]] = [{} for _ in sockets]
    texts: dict[str, str] = {}
    stamps: dict[str, tuple[str, str]] = {}  # pk -> (task started, rendered), F2 only
    state = {"frames": 0, "complete_sockets": 0}
    done = asyncio.Event()

    async def reader(index: int, ws) -> None:
        mine = seen[index]
        finished = False
        try:
            async for raw in ws:
                now = time.time()
                state["frames"] += 1
                if '"message"' not in raw:
                    continue
                html = json.loads(raw).get("html", "")
                for pk, started_at, rendered_at, text in ITEM.findall(html):
                    if pk not in mine:
                        mine[pk] = now
                        if pk not in texts:
                            texts[pk] = text
                            stamps[pk] = (started_at, rendered_at)
                if not finished and len(mine) >= args.expect:
                    finished = True
                    state["complete_sockets"] += 1
                    if state["complete_sockets"] == len(sockets):
                        done.set()
        except ConnectionClosed:
            pass

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]

    loop = asyncio.get_running_loop()

    def stop_on_stdin() -> None:  # a daemon thread: never holds up the exit
        for line in sys.stdin:
            if line.strip() == "STOP":
                break
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=stop_on_stdin, daemon=True).start()
    _ready(open_seconds, errors)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(done.wait(), args.timeout)
    finished_at = time.time()
    # Before the sockets close (bench/fanout.py Client.wait_done).
    print(f"DONE {finished_at}", flush=True)
    for task in readers:
        task.cancel()

    items = {}
    for pk, text in texts.items():
        times = sorted(s[pk] for s in seen if pk in s)
        items[pk] = {
            "text": text,
            **(
                {"started": float(stamps[pk][0]), "rendered": float(stamps[pk][1])}
                if stamps[pk][0]
                else {}
            ),
            "n": len(times),
            "first": times[0],
            "last": times[-1],
            "median": statistics.median(times),
        }
    await asyncio.wait([asyncio.create_task(ws.close()) for ws in sockets], timeout=5)
    return {
        "sockets": len(sockets),
        "open_seconds": open_seconds,
        "frames": state["frames"],
        "complete": state["complete_sockets"] == len(sockets),
        "complete_sockets": state["complete_sockets"],
        "finished_at": finished_at,
        "items": items,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url",
        required=True,
        action="append",
        help="websocket URL; repeat it for several ASGI processes (socket i uses URL i mod n)",
    )
    parser.add_argument("--stream", required=True, help="signed stream name")
    parser.add_argument("--sockets", type=int, default=1)
    parser.add_argument("--expect", type=int, required=True, help="distinct items per socket")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes at once")
    parser.add_argument("--catch-up", action="store_true", help="F4 (see above)")
    parser.add_argument(
        "--reconnect-concurrency", type=int, default=10_000, help="F4: reconnects at once"
    )
    args = parser.parse_args()
    result = asyncio.run(catch_up(args) if args.catch_up else main(args))
    print("RESULT " + json.dumps(result), flush=True)
