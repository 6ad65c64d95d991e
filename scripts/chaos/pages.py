"""Flapping subscribers of the chaos run: N pages of one room, in one process.

    python scripts/chaos/pages.py --url ws://.../ws/turbo/ --room ID --n 20 \\
        --state FILE --events FILE --settle-file FILE [--mean-up 3] [--max-down 2]

Each subscriber is a page model of the room, kept like a browser with the
``<turbo-channels-stream-source>`` element and Turbo would keep it:

* **render**: ``{% turbo_subscribe room %}`` (the signed name and ``since``, the stream's
  current offset), *then* the room's messages from the database, each rendered with
  ``chat/message.html``, as the page's HTML would be (the tag comes first in the page);
* **subscribe** with ``since`` = the offset of the last message applied (the rendered one at
  first, the freshly rendered one after a reset);
* **apply** every ``<turbo-stream>`` of every message, as Turbo does: ``append``/``prepend``
  to the container (an existing child with the same id is removed first), ``replace`` /
  ``update`` of the target id, ``remove``; a missing target is a no-op;
* on ``reset``: **reload** (render again, from the database), as the element's refresh does;
* **flap**: close the socket at random moments (exponential, mean ``--mean-up`` s), stay
  down up to ``--max-down`` s, re-subscribe with ``since``; a socket the server drops (ASGI
  or Redis restart) reconnects with the element's backoff.

Once ``--settle-file`` exists the subscribers stop flapping and stay subscribed, and every
second the process writes ``--state`` (JSON, atomically): each page (ordered ``[id, html]``
pairs), whether it is subscribed, and counters. Events (subscribes, resets, reloads, errors)
go to ``--events`` as JSON lines. Django comes from the environment (tests.settings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STREAM = re.compile(
    r'<turbo-stream action="([a-z]+)" target="([^"]*)"[^>]*>(?:<template>(.*?)</template>)?'
    r"</turbo-stream>",
    re.S,
)
ELEMENT = re.compile(r'<([a-z][a-z0-9-]*)\b[^>]*\bid="([^"]+)"[^>]*>.*?</\1>', re.S)
OPEN_TAG = re.compile(r"^(<[^>]*>)(.*)(</[a-z][a-z0-9-]*>)$", re.S)
SIGNED = re.compile(r'signed-stream-name="([^"]+)"(?: since="([^"]+)")?')
CONTAINER = "messages"


def later(a: str | None, b: str | None) -> str | None:
    """The later of two offsets ("<inc>.<seq>"); another epoch's offset wins (newer)."""
    if not a or not b:
        return b or a
    ia, _, sa = a.partition(".")
    ib, _, sb = b.partition(".")
    if ia != ib:
        return b
    return a if int(sa) >= int(sb) else b


def render_page(room_id: int) -> tuple[str, str | None, dict[str, str]]:
    """What a GET of the room page gives: signed name, since, the messages' elements."""
    from django.db import close_old_connections
    from django.template import Context, Template
    from django.template.loader import render_to_string

    from tests.testapp.models import Message, Room

    close_old_connections()
    room = Room.objects.get(pk=room_id)
    tag = Template("{% load turbo_tasks %}{% turbo_subscribe room %}").render(
        Context({"room": room})
    )
    found = SIGNED.search(tag)
    assert found, tag
    elements = {
        f"message-{m.pk}": render_to_string("chat/message.html", {"message": m}).strip()
        for m in Message.objects.filter(room_id=room_id).order_by("pk")
    }
    return found.group(1), found.group(2), elements


class Page:
    def __init__(self, index: int) -> None:
        self.index = index
        self.children: dict[str, str] = {}  # the container's children, id -> outer HTML
        self.signed = ""
        self.offset: str | None = None
        self.subscribed = False
        self.connected = False
        self.stats: Counter[str] = Counter()
        # --since contiguous: the epoch and the sequence numbers received above `offset`.
        self.inc = ""
        self.above: set[int] = set()

    def received(self, offset: str | None, policy: str) -> None:
        """Move ``since`` on after a message. "last": the latest offset applied (the
        element before it learnt otherwise). "contiguous" (the element, turbo-tasks.js'
        Progress): the highest offset up to which
        every message was received, so a frame pushed out of offset order is not skipped."""
        if not offset:
            return
        if policy == "last" or not self.offset:
            self.offset = later(self.offset, offset)
            return
        inc, _, seq = offset.partition(".")
        base_inc, _, base = self.offset.partition(".")
        if inc != base_inc:  # a new epoch (should not happen without a reset)
            self.offset, self.above = offset, set()
            return
        self.above.add(int(seq))
        n = int(base)
        while n + 1 in self.above:
            n += 1
            self.above.discard(n)
        self.above = {x for x in self.above if x > n}
        self.offset = f"{inc}.{n}"

    def apply(self, html: str) -> None:
        for action, target, content in STREAM.findall(html):
            self.stats[f"action_{action}"] += 1
            new = [(m.group(2), m.group(0)) for m in ELEMENT.finditer(content or "")]
            if action in ("append", "prepend"):
                if target != CONTAINER:
                    continue
                for element_id, _ in new:
                    self.children.pop(element_id, None)
                if action == "append":
                    self.children.update(new)
                else:
                    self.children = {**dict(new), **self.children}
            elif action == "replace":
                if target not in self.children:
                    continue
                rebuilt: dict[str, str] = {}
                for key, value in self.children.items():
                    if key == target:
                        rebuilt.update(new)
                    else:
                        rebuilt[key] = value
                self.children = rebuilt
            elif action == "update":
                if target not in self.children:
                    continue
                parts = OPEN_TAG.match(self.children[target])
                if parts:
                    self.children[target] = parts.group(1) + (content or "") + parts.group(3)
            elif action == "remove":
                self.children.pop(target, None)

    async def reload(self, room_id: int, log: Any) -> None:
        while True:
            try:
                signed, since, elements = await asyncio.to_thread(render_page, room_id)
            except Exception as exc:  # Redis restarting, SQLite busy: the user retries
                log("reload-error", page=self.index, error=repr(exc)[:200])
                await asyncio.sleep(0.5)
                continue
            self.signed, self.offset, self.children = signed, since, elements
            self.above = set()
            self.stats["reloads"] += 1
            return


async def run_page(
    page: Page, args: argparse.Namespace, settle: asyncio.Event, log: Any, rng: random.Random
) -> None:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    await page.reload(args.room, log)
    attempts = 0
    while True:
        flap = False
        try:
            async with connect(args.url, origin="http://127.0.0.1", open_timeout=5) as ws:  # type: ignore[arg-type]
                attempts = 0
                page.connected = True
                frame: dict[str, Any] = {"type": "subscribe", "stream": page.signed}
                if page.offset:
                    frame["since"] = page.offset
                await ws.send(json.dumps(frame))
                page.stats["subscribes"] += 1
                page.subscribed = False
                up = rng.expovariate(1.0 / args.mean_up)
                close_at = loop.time() + up
                while True:
                    if not settle.is_set() and loop.time() >= close_at:
                        flap = True
                        log("flap", page=page.index, offset=page.offset, live=page.subscribed)
                        break
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.5)
                    except asyncio.TimeoutError:
                        continue
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "message":
                        page.apply(message.get("html", ""))
                        offset = message.get("offset")
                        if page.offset and offset and later(page.offset, offset) == page.offset:
                            # Not after the last applied one: delivered out of order.
                            page.stats["out_of_order"] += 1
                            log(
                                "out-of-order",
                                page=page.index,
                                offset=offset,
                                after=page.offset,
                                live=page.subscribed,
                            )
                        if args.trace:
                            ids = re.findall(r'target="([^"]+)"', message.get("html", ""))
                            elements = ELEMENT.findall(message.get("html", ""))
                            log(
                                "msg",
                                page=page.index,
                                offset=offset,
                                live=page.subscribed,
                                targets=ids,
                                ids=[e[1] for e in elements],
                            )
                        page.received(offset, args.since)
                        page.stats["messages"] += 1
                    elif kind == "subscribed":
                        page.subscribed = True
                    elif kind == "reset":
                        page.stats["resets"] += 1
                        log("reset", page=page.index, since=frame.get("since"))
                        # The refresh: a new render, a new since (frames meanwhile are
                        # either in it or come after it).
                        await page.reload(args.room, log)
                    else:
                        page.stats[f"other_{kind}"] += 1
                        log("unexpected", page=page.index, frame=message)
        except Exception as exc:
            page.stats["dropped"] += 1
            log("dropped", page=page.index, error=repr(exc)[:200])
        page.connected = page.subscribed = False
        if flap:
            page.stats["flaps"] += 1
            await asyncio.sleep(rng.uniform(0, args.max_down))
        else:
            # The element's backoff: 0.5 s doubling per failed connect, capped, jittered.
            await asyncio.sleep(min(30.0, 0.5 * 2**attempts) * (0.5 + rng.random()))
            attempts = min(attempts + 1, 6)


async def main(args: argparse.Namespace) -> None:
    import django

    django.setup()
    events = open(args.events, "a", buffering=1)  # noqa: SIM115 - lives as long as we do

    def log(ev: str, **fields: Any) -> None:
        events.write(json.dumps({"t": round(time.time(), 4), "ev": ev, **fields}) + "\n")

    settle = asyncio.Event()
    pages = [Page(i) for i in range(args.n)]
    rng = random.Random(args.seed)
    tasks = [
        asyncio.create_task(run_page(p, args, settle, log, random.Random(rng.random())))
        for p in pages
    ]
    log("ready", n=args.n)
    state = Path(args.state)
    while True:
        await asyncio.sleep(1.0)
        if not settle.is_set() and os.path.exists(args.settle_file):
            settle.set()
            log("settling")
        for task in tasks:
            if task.done() and task.exception() is not None:
                log("crashed", error=repr(task.exception())[:300])
                raise SystemExit(2)
        if settle.is_set():
            doc = {
                "t": time.time(),
                "pages": [
                    {
                        "index": p.index,
                        "subscribed": p.subscribed,
                        "offset": p.offset,
                        "children": list(p.children.items()),
                        "stats": dict(p.stats),
                    }
                    for p in pages
                ],
            }
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(state)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", type=int, required=True)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--state", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--settle-file", required=True)
    parser.add_argument("--mean-up", type=float, default=3.0)
    parser.add_argument("--max-down", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="log every message received")
    parser.add_argument("--since", choices=("last", "contiguous"), default="contiguous")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
    asyncio.run(main(parser.parse_args()))
