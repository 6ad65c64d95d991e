#!/usr/bin/env python
"""Chaos run: commit many changes while Redis restarts and workers are SIGKILLed, then count
what reached the channel layer and what reached a websocket page. Not part of the tests.

    make chaos                                   # both modes, 10,000 changes each
    make chaos CHAOS_ARGS="--changes 500 --rate 100 --seed 7"
    .venv/bin/python scripts/chaos.py --help

For each ``PUBLISH_MODE`` ("direct", then "outbox"), with fresh state, it runs real
processes on loopback ports: one redis-server (broker *and* channel layer, append-only file
on, in a temp dir), a prefork Celery worker (``celery -A worker worker -Q turbo_tasks -c 2``),
uvicorn serving ``tests.asgi:application``, two listeners (scripts/chaos/listeners.py) and
``--subscribers`` flapping pages (scripts/chaos/pages.py):

* the **tap**, a channels_redis consumer that stays in the room's group (re-adding itself
  after every Redis error): every frame the library delivered *to the channel layer*;
* the **page**, a websocket client subscribed to the room stream that reconnects and
  re-subscribes (without ``since``) whenever its socket drops: the frames it saw live;
* the **subscribers** (20 by default), each a model of the room page: rendered from the
  database with ``{% turbo_subscribe %}``'s ``since``, it applies every frame as Turbo would
  (append/prepend de-duplicated by id, replace/update, remove), disconnects at random
  moments and re-subscribes with ``since`` = the offset of the last message it applied
  (``--since contiguous``: the highest offset up to which it got every message), and
  reloads from the database on ``reset``. At the end each page is compared with the
  database.

This process is the producer: it makes ``--changes`` changes in one room, each in its own
transaction (``--batch`` for more), paced at ``--rate``: mostly new ``Message`` rows,
``--edit-pct`` edits and ``--delete-pct`` deletes of recent rows, and records the ids of the
commits that succeeded. Meanwhile a chaos thread restarts Redis (SIGTERM, down for a moment,
start again on the same port), SIGKILLs the worker's process group (then starts a new
worker) or restarts the ASGI server (SIGTERM, as a deploy does), every
``--chaos-min``..``--chaos-max`` seconds (``--seed`` makes the schedule reproducible;
outcomes still depend on timing). Like a process supervisor, it also restarts a worker that
exits on its own, and reports it. Then it waits, bounded, for deliveries to settle and
reports, per mode: committed rows (deleted ones left out), rows delivered (distinct ids) at
the channel layer and at the page, missing, duplicate frames and delivery %; then it lets
the subscribers settle (they stop flapping; polled until every page is subscribed and equal
to the database, at most ``--pages-timeout``) and reports how many pages equal the
database and whether each difference is a row whose publish failed and was logged; as a
table and in scripts/chaos-results.json. For rows missing at the channel layer it reads Redis's
append-only file to say whether each one ever reached the queue and a worker (and keeps the
temp dir of an outbox run that missed any).

Exit status: 1 if "outbox" mode delivered less than 100% of the committed rows *to the
channel layer*, or if any subscriber's page differs from the database at the end; 2 if the
run itself failed. Every wait is bounded: the run stops by itself.
Logs of every process: artifacts/chaos/<mode>/. See docs/topics/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.procs import Process, accepts, free_port  # noqa: E402

LISTENERS = ROOT / "scripts" / "chaos" / "listeners.py"
PAGES = ROOT / "scripts" / "chaos" / "pages.py"
RESULTS = ROOT / "scripts" / "chaos-results.json"
LOG_ROOT = ROOT / "artifacts" / "chaos"
QUEUE = "turbo_tasks"
MODES = ("direct", "outbox")


class Aborted(Exception):
    """The run cannot go on (a process did not come up, Ctrl-C...)."""


def say(mode: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}Z {mode}] {text}", flush=True)


def wait_until(condition: Any, timeout: float, what: str, closing: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if closing is not None and closing():
            raise Aborted(f"stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise Aborted(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


# -- processes ---------------------------------------------------------------------------------


class Stack:
    """Redis, worker, ASGI server and listeners of one mode. Start/stop are serialized
    with the chaos thread, and nothing starts once ``close()`` began."""

    def __init__(self, mode: str, args: argparse.Namespace, tmp: Path, logs: Path) -> None:
        self.mode = mode
        self.args = args
        self.tmp = tmp
        self.logs = logs
        self.lock = threading.RLock()
        self.closing = False
        self.procs: list[Process] = []
        self.redis: Process | None = None
        self.worker: Process | None = None
        self.asgi: Process | None = None
        self.asgi_starts = 0
        self.workers_started = 0
        # Set while the chaos thread kills and replaces the worker on purpose.
        self.on_purpose = False
        self.worker_exits: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.redis_port = free_port()
        self.asgi_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        (tmp / "redis").mkdir()
        self.env = dict(os.environ)
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "TURBO_TEST_REDIS_PORT": str(self.redis_port),
                "TURBO_TEST_DB": str(tmp / "chaos.sqlite3"),
                "TURBO_TEST_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
                "TURBO_TEST_TURBO_TASKS": json.dumps(turbo_tasks_settings(mode, args)),
                "TURBO_TEST_CHANNEL_LAYER": args.layer,
            }
        )
        self.env.pop("TURBO_TEST_CHANNEL_REDIS_URL", None)  # one Redis for both

    def _spawn(self, name: str, argv: list[str], log: str) -> Process:
        with self.lock:
            if self.closing:
                raise Aborted("stack is closing")
            proc = Process(name, argv, self.env, self.logs, log)
            self.procs.append(proc)
            return proc

    # Redis ----------------------------------------------------------------------------

    def redis_argv(self) -> list[str]:
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.redis_port),
            "--bind", "127.0.0.1",
            "--dir", str(self.tmp / "redis"),
            "--save", "",
        ]  # fmt: skip
        if self.args.no_appendonly:
            argv += ["--appendonly", "no"]
        else:
            # A broker that keeps what it acknowledged across a restart: every write goes to
            # the AOF before the reply (fsync once a second; a SIGTERM/SIGKILL of the
            # process loses nothing, a power cut up to ~1 s).
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        return argv

    def start_redis(self) -> None:
        self.redis = self._spawn("redis", self.redis_argv(), "redis.log")
        wait_until(self.redis_ping, 30, "redis-server to answer PING", self.is_closing)

    def redis_ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.redis_port, socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            # ResponseError: LOADING (reading the AOF back)
            return False

    def stop_redis(self) -> None:
        assert self.redis is not None
        if self.args.redis_signal == "kill":
            self.redis.kill()
        else:
            self.redis.stop(timeout=30)
        wait_until(lambda: not accepts(self.redis_port), 20, "redis-server to stop")

    # Worker ---------------------------------------------------------------------------

    def start_worker(self) -> None:
        self.workers_started += 1
        n = self.workers_started
        name = f"chaos-{self.mode}-{n}"
        argv = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "-Q", QUEUE,
            "--pool", "prefork", "-c", str(self.args.concurrency),
            "--without-mingle", "--without-gossip",
            "-l", "info",
            "-n", f"{name}@%h",
        ]  # fmt: skip
        self.worker = proc = self._spawn(name, argv, f"worker-{n}.log")

        def ready() -> bool:
            if not proc.alive():
                raise Aborted(f"worker {name} exited:\n{proc.log()}")
            return " ready." in proc.log(20000)

        wait_until(ready, 90, f"worker {name} to be ready", self.is_closing)

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.kill()

    def supervise(self) -> None:
        """Restart a worker that exited on its own, as systemd or Kubernetes would, and
        record why it exited."""
        worker = self.worker
        if self.closing or self.on_purpose or worker is None or worker.alive():
            return
        tail = worker.log(20000).splitlines()
        reason = next(
            (line for line in reversed(tail) if "CRITICAL" in line or "Unrecoverable" in line),
            tail[-1] if tail else "",
        )
        self.worker_exits.append(
            {
                "at_s": round(time.monotonic() - self.t0, 2),
                "worker": worker.name,
                "returncode": worker.proc.returncode,
                "reason": reason[:300],
                "log": worker.log_path.name,
            }
        )
        say(self.mode, f"worker {worker.name} exited by itself ({reason[:120]}); restarting it")
        if len(self.worker_exits) > 20:
            raise Aborted("the worker keeps exiting; giving up")
        self.on_purpose = True
        try:
            self.start_worker()
        finally:
            self.on_purpose = False

    # ASGI and listeners -----------------------------------------------------------------

    def start_asgi(self) -> None:
        argv = [
            sys.executable, "-m", "uvicorn", "tests.asgi:application",
            "--host", "127.0.0.1", "--port", str(self.asgi_port),
            "--log-level", "warning",
            # As the Procfile: uvicorn's default websocket implementation, and a bounded
            # graceful shutdown (docs/howto/operations.md).
            "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
        self.asgi_starts += 1
        self.asgi = proc = self._spawn("asgi", argv, "asgi.log")
        wait_until(lambda: accepts(self.asgi_port), 60, "uvicorn to listen", self.is_closing)
        if not proc.alive():
            raise Aborted(f"uvicorn exited:\n{proc.log()}")

    def stop_asgi(self) -> None:
        """SIGTERM, as a deploy does: uvicorn closes the websockets (the consumers'
        disconnect runs) and exits; SIGKILL after 10 s."""
        assert self.asgi is not None
        self.asgi.stop(timeout=10)
        wait_until(lambda: not accepts(self.asgi_port), 20, "uvicorn to stop")

    def start_listener(self, role: str, *extra: str) -> Feed:
        out = self.logs / f"{role}.jsonl"
        argv = [sys.executable, str(LISTENERS), role, "--out", str(out), *extra]
        proc = self._spawn(role, argv, f"{role}.log")
        feed = Feed(out, proc)
        return feed

    # all ----------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self.closing

    def pending(self, outbox_count: Any) -> dict[str, int]:
        """Work the system still holds: queued and unacknowledged broker messages (ETA
        retries included) and, in outbox mode, unpublished outbox rows."""
        import redis

        client = redis.Redis(port=self.redis_port, socket_timeout=2)
        try:
            queued = sum(
                int(client.llen(key))
                for key in client.scan_iter(match=f"{QUEUE}*")
                if client.type(key) == b"list"
            )
            unacked = int(client.hlen("unacked"))
        except redis.RedisError:
            queued = unacked = -1
        finally:
            client.close()
        return {"queued": queued, "unacked": unacked, "outbox_rows": outbox_count()}

    def close(self) -> None:
        with self.lock:
            self.closing = True
        for proc in reversed(self.procs):
            proc.stop()


def turbo_tasks_settings(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "PUBLISH_MODE": mode,
        # Keep the longest retry countdown below the visibility timeout: an ETA retry held
        # by a worker longer than that is handed out again by the broker.
        "RETRY_BACKOFF_MAX": args.retry_backoff_max,
    }


class Feed:
    """What a listener saw, read incrementally from its JSON-lines file."""

    def __init__(self, path: Path, proc: Process) -> None:
        self.path = path
        self.proc = proc
        self.pos = 0
        self.ids: dict[int, int] = {}  # message id -> frames carrying it
        self.first_seen: dict[int, float] = {}
        self.messages = 0  # channel-layer / websocket messages
        self.elements = 0  # <turbo-stream> elements in them
        self.events: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.last_frame = 0.0

    def read(self) -> Feed:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return self
        end = data.rfind(b"\n") + 1
        self.pos += end
        for line in data[:end].splitlines():
            record = json.loads(line)
            ev = record["ev"]
            self.events[ev] += 1
            if ev == "frame":
                self.messages += 1
                self.elements += record["n"]
                self.last_frame = record["t"]
                for pk in record["ids"]:
                    self.ids[pk] = self.ids.get(pk, 0) + 1
                    self.first_seen.setdefault(pk, record["t"])
            elif ev in ("error", "disconnected") and len(self.errors) < 50:
                self.errors.append(record)
        return self

    def has(self, ev: str) -> bool:
        return self.read().events[ev] > 0


# -- the producer's side of Django ------------------------------------------------------------


class PublishErrors(logging.Handler):
    """Counts the write path's "could not publish" errors and the pks in their payloads."""

    PK = re.compile(r'"pk": (\d+)')

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.pks: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "could not publish" in message:
            self.count += 1
            self.pks.update(int(pk) for pk in self.PK.findall(message))


def setup_django(stack: Stack, logs: Path) -> PublishErrors:
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith(("TURBO_", "DJANGO_"))})
    import django

    django.setup()
    import worker  # noqa: F401 - the project's Celery app: publishes go to our Redis

    # The write path logs to stderr at DEBUG in tests.settings; keep our terminal for the
    # table and put the producer's logs in a file.
    handler = logging.FileHandler(logs / "producer.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    counter = PublishErrors()
    for name in ("turbo_tasks", ""):
        log = logging.getLogger(name)
        log.handlers = [handler, counter] if name else [handler]
        log.propagate = False
    logging.getLogger("turbo_tasks").setLevel(logging.INFO)
    logging.getLogger().setLevel(logging.WARNING)
    return counter


# -- one mode ---------------------------------------------------------------------------------


class Chaos(threading.Thread):
    def __init__(self, stack: Stack, args: argparse.Namespace, t0: float) -> None:
        super().__init__(name="chaos", daemon=True)
        self.stack = stack
        self.args = args
        self.t0 = t0
        self.rng = random.Random(f"{args.seed}-{stack.mode}")
        self.stop = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            kinds = ["redis", "worker", "asgi"]
            self.rng.shuffle(kinds)  # the first three events: one of each
            while True:
                # Between events, supervise the worker (it may exit on its own).
                deadline = time.monotonic() + self.rng.uniform(
                    self.args.chaos_min, self.args.chaos_max
                )
                while (left := deadline - time.monotonic()) > 0:
                    if self.stop.wait(min(0.5, left)):
                        return
                    self.stack.supervise()
                if len(self.events) >= self.args.max_events:
                    continue  # no more chaos; keep supervising until stopped
                kind = kinds.pop(0) if kinds else self.rng.choice(["redis", "worker", "asgi"])
                self.event(kind)
        except BaseException as exc:
            if not self.stack.closing:
                self.error = exc

    def event(self, kind: str) -> None:
        stack = self.stack
        start = time.monotonic()
        record: dict[str, Any] = {"at_s": round(start - self.t0, 2), "kind": kind}
        if kind == "redis":
            down = self.rng.uniform(self.args.redis_down_min, self.args.redis_down_max)
            stack.stop_redis()
            record["stopped_after_s"] = round(time.monotonic() - start, 2)
            time.sleep(down)
            stack.start_redis()
        elif kind == "asgi":
            down = self.rng.uniform(0.2, 2.0)  # a deploy's restart
            stack.stop_asgi()
            time.sleep(down)
            stack.start_asgi()
        else:
            down = self.rng.uniform(0.2, 1.0)  # a supervisor's restart delay
            stack.on_purpose = True
            try:
                stack.kill_worker()
                time.sleep(down)
                stack.start_worker()
            finally:
                stack.on_purpose = False
        record["down_s"] = round(down, 2)
        record["back_after_s"] = round(time.monotonic() - start, 2)
        self.events.append(record)
        what = {
            "redis": "Redis restarted",
            "asgi": "ASGI server restarted",
            "worker": "worker SIGKILLed and replaced",
        }[kind]
        say(stack.mode, f"chaos: {what}, back after {record['back_after_s']}s")


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    logs = LOG_ROOT / mode
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"turbo-chaos-{mode}-"))
    stack = Stack(mode, args, tmp, logs)
    chaos: Chaos | None = None
    keep = False
    try:
        aof = "no" if args.no_appendonly else "yes"
        say(
            mode,
            f"redis :{stack.redis_port} (appendonly {aof}), db {tmp / 'chaos.sqlite3'}, "
            f"logs {logs.relative_to(ROOT)}/",
        )
        stack.start_redis()
        counter = setup_django(stack, logs)

        from django.conf import settings
        from django.core.management import call_command
        from django.db import transaction

        from tests.testapp.models import Message, Room
        from turbo_tasks.models import OutboxJob

        for alias in settings.DATABASES:  # the relay sweeps every database
            # run_syncdb: the test apps have no migrations.
            call_command("migrate", database=alias, run_syncdb=True, interactive=False, verbosity=0)
        room = Room.objects.create(name=f"chaos {mode}")
        group, signed = room.stream.group_name, room.stream.signed_name

        stack.start_asgi()
        tap = stack.start_listener(
            "tap", "--redis", stack.redis_url, "--group", group, "--layer", args.layer
        )
        page = stack.start_listener(
            "ws",
            "--url",
            f"ws://127.0.0.1:{stack.asgi_port}/ws/turbo/",
            "--stream",
            signed,
            "--ack-timeout",
            str(args.page_ack_timeout),
        )
        wait_until(lambda: tap.has("ready"), 30, "the tap to join the group")
        wait_until(lambda: page.has("subscribed"), 30, "the page to subscribe")
        pages_state = logs / "pages-state.json"
        settle_file = logs / "pages.settle"
        if args.subscribers:
            stack._spawn(
                "pages",
                [
                    sys.executable, str(PAGES),
                    "--url", f"ws://127.0.0.1:{stack.asgi_port}/ws/turbo/",
                    "--room", str(room.pk),
                    "--n", str(args.subscribers),
                    "--state", str(pages_state),
                    "--events", str(logs / "pages.jsonl"),
                    "--settle-file", str(settle_file),
                    "--mean-up", str(args.flap_mean_up),
                    "--max-down", str(args.flap_max_down),
                    "--seed", str(args.seed),
                    "--since", args.since,
                    *(["--trace"] if args.trace_pages else []),
                ],
                "pages.log",
            )  # fmt: skip
        stack.start_worker()

        # One change end to end before the chaos: the whole path works.
        warmup = Message.objects.create(room=room, text="warm-up").pk
        wait_until(
            lambda: warmup in tap.read().ids and warmup in page.read().ids,
            60,
            "the warm-up frame at the tap and the page",
        )
        say(mode, "warm-up frame seen at the layer and the page; producing")

        def outbox_rows() -> int:
            return OutboxJob.objects.count()

        committed: dict[int, float] = {}
        # Edits and deletes of earlier rows, so the pages also apply replace and remove.
        ops = random.Random(f"{args.seed}-ops-{mode}")
        live: list[int] = []  # committed rows not deleted
        deleted: set[int] = set()
        edits = 0
        commit_errors: list[str] = []
        latencies: list[float] = []
        t0 = stack.t0 = time.monotonic()
        chaos = Chaos(stack, args, t0)
        chaos.start()
        transactions = (args.changes + args.batch - 1) // args.batch
        rate = args.rate / args.batch  # transactions per second
        next_report = t0 + 5
        made = 0
        for i in range(transactions):
            if chaos.error is not None:
                raise Aborted(f"chaos failed: {chaos.error!r}")
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            size = min(args.batch, args.changes - made)
            made += size
            started = time.monotonic()
            pks: list[int] = []
            gone: list[int] = []
            edited = 0
            try:
                with transaction.atomic():
                    for k in range(size):
                        roll = ops.random() * 100
                        candidates = [pk for pk in live[-500:] if pk not in gone]
                        if candidates and roll < args.delete_pct:
                            pk = ops.choice(candidates)
                            Message.objects.get(pk=pk).delete()
                            gone.append(pk)
                        elif candidates and roll < args.delete_pct + args.edit_pct:
                            row = Message.objects.get(pk=ops.choice(candidates))
                            row.text = f"edited {made - size + k}"
                            row.save()
                            edited += 1
                        else:
                            text = f"chaos {made - size + k}"
                            pks.append(Message.objects.create(room_id=room.pk, text=text).pk)
            except Exception as exc:  # not committed: not counted
                commit_errors.append(repr(exc)[:200])
                continue
            done = time.monotonic()
            latencies.append(done - started)
            edits += edited
            for pk in gone:
                live.remove(pk)
                deleted.add(pk)
            live.extend(pks)
            for pk in pks:
                committed[pk] = time.time()
            if done >= next_report:
                next_report = done + 5
                say(
                    mode,
                    f"{len(committed)}/{args.changes} committed, "
                    f"layer {len(tap.read().ids) - 1}, page {len(page.read().ids) - 1}, "
                    f"chaos events {len(chaos.events)}",
                )
        produce_s = time.monotonic() - t0
        say(
            mode,
            f"produced {len(committed)} rows ({edits} edits, {len(deleted)} deleted) in "
            f"{produce_s:.1f}s; stopping the chaos",
        )
        # A deleted row's append may rightly never be sent (the worker skips a row that is
        # gone): the delivery counts are about the rows that still exist.
        for pk in deleted:
            committed.pop(pk, None)
        chaos.stop.set()
        chaos.join(180)
        if chaos.is_alive() or chaos.error is not None:
            raise Aborted(f"chaos did not finish cleanly: {chaos.error!r}")

        # Settle: until every committed row was seen at both listeners, or nothing arrived
        # for --quiet seconds while the system holds no more work, or --settle-timeout.
        settle_start = time.monotonic()
        wanted = set(committed)
        tap.read()
        # The rows not yet at the channel layer when the chaos stopped: the backlog the
        # settle drains (its rate compares the modes).
        backlog = len(wanted.difference(tap.ids))
        next_report = settle_start + 5
        while True:
            stack.supervise()
            tap.read()
            page.read()
            missing_tap = wanted.difference(tap.ids)
            missing_page = wanted.difference(page.ids)
            now = time.monotonic()
            quiet = time.time() - max(tap.last_frame, page.last_frame)
            pending = stack.pending(outbox_rows)
            if not missing_tap and not missing_page:
                reason = "every committed row seen at the layer and the page"
                break
            if quiet >= args.quiet and not any(pending.values()):
                reason = f"no frame for {args.quiet:.0f}s and no queued/unacked/outbox work"
                break
            if now - settle_start > args.settle_timeout:
                reason = f"settle timeout ({args.settle_timeout:.0f}s)"
                break
            if now >= next_report:
                next_report = now + 5
                say(
                    mode,
                    f"settling: missing at layer {len(missing_tap)}, at page "
                    f"{len(missing_page)}; pending {pending}",
                )
            time.sleep(1)
        settle_s = time.monotonic() - settle_start
        say(mode, f"settled after {settle_s:.1f}s: {reason}")

        pages_result: dict[str, Any] | None = None
        if args.subscribers:
            settle_file.touch()
            pages_result = settle_pages(stack, pages_state, room.pk, args, counter)
        in_db = set(Message.objects.filter(room=room).values_list("pk", flat=True))
        result = report(
            mode=mode,
            args=args,
            committed=committed,
            warmup=warmup,
            in_db=in_db,
            commit_errors=commit_errors,
            latencies=latencies,
            produce_s=produce_s,
            settle_s=settle_s,
            settle_reason=reason,
            backlog=backlog,
            tap=tap,
            page=page,
            chaos=chaos,
            publish_errors=counter,
            pending=stack.pending(outbox_rows),
            logs=logs,
            stack=stack,
        )
        result["edits"] = edits
        result["deleted"] = len(deleted)
        result["pages"] = pages_result
        # Where did the missing rows go? The broker's append-only file says whether each
        # one was ever pushed to the queue and ever recorded as unacknowledged.
        lost = result["layer"]["missing_ids_sample"]
        if lost and not args.no_appendonly:
            assert stack.redis is not None
            stack.redis.stop()  # flushes the AOF
            result["broker_evidence"] = aof_evidence(tmp / "redis", lost)
            if mode == "outbox":
                keep = True
        return result
    finally:
        if chaos is not None:
            chaos.stop.set()
        stack.close()
        if chaos is not None:
            chaos.join(5)
        if args.keep_tmp or keep:
            say(mode, f"kept {tmp} (Redis AOF and SQLite database) for inspection")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def db_page(room_id: int) -> dict[str, str]:
    """The room's messages as a fresh render of the page shows them (scripts/chaos/pages.py
    renders the same way)."""
    from django.template.loader import render_to_string

    from tests.testapp.models import Message

    return {
        f"message-{m.pk}": render_to_string("chat/message.html", {"message": m}).strip()
        for m in Message.objects.filter(room_id=room_id).order_by("pk")
    }


def settle_pages(
    stack: Stack, state: Path, room_id: int, args: argparse.Namespace, errors: PublishErrors
) -> dict[str, Any]:
    """Let the flapping subscribers settle (they stopped flapping), then compare each page
    with the database: poll until every page is subscribed and equal, or --pages-timeout."""
    start = time.time()
    deadline = time.monotonic() + args.pages_timeout
    doc: dict[str, Any] = {}
    db: dict[str, str] = {}
    reason = f"timeout ({args.pages_timeout:.0f}s)"
    while time.monotonic() < deadline:
        stack.supervise()
        time.sleep(1)
        try:
            doc = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if doc["t"] < start + 1:
            continue
        db = db_page(room_id)
        if all(p["subscribed"] and dict(p["children"]) == db for p in doc["pages"]):
            reason = "every page subscribed and equal to the database"
            break
    settle_s = time.time() - start
    db = db_page(room_id)
    logged = {f"message-{pk}" for pk in errors.pks}
    per_page = []
    for p in doc.get("pages", []):
        page = dict(p["children"])
        missing = sorted(set(db) - set(page))
        extra = sorted(set(page) - set(db))
        stale = sorted(k for k in set(db) & set(page) if db[k] != page[k])
        differing = set(missing) | set(extra) | set(stale)
        per_page.append(
            {
                "index": p["index"],
                "subscribed": p["subscribed"],
                "equal": page == db,
                "order_equal": list(page) == list(db),
                "missing": len(missing),
                "extra": len(extra),
                "stale": len(stale),
                "differences_sample": {
                    "missing": missing[:5],
                    "extra": extra[:5],
                    "stale": stale[:5],
                },
                "differences_unexplained": sorted(differing - logged)[:20],
                "stats": p["stats"],
            }
        )
    total = Counter[str]()
    for p in per_page:
        total.update(p["stats"])
    return {
        "subscribers": args.subscribers,
        "equal_to_db": sum(p["equal"] for p in per_page),
        "in_db_order": sum(p["order_equal"] for p in per_page),
        "subscribed_at_end": sum(p["subscribed"] for p in per_page),
        "differing": sum(not p["equal"] for p in per_page),
        "differing_explained_by_logged_publish_errors": sum(
            1 for p in per_page if not p["equal"] and not p["differences_unexplained"]
        ),
        "differing_unexplained": sum(
            1 for p in per_page if not p["equal"] and p["differences_unexplained"]
        ),
        "rows_in_db": len(db),
        "settle_s": round(settle_s, 1),
        "settle_reason": reason,
        "totals": dict(total),
        "per_page": per_page,
    }


def aof_commands(redis_dir: Path) -> Any:
    """The commands of Redis 7's incremental append-only files, oldest first."""

    def number(path: Path) -> int:
        found = re.search(r"\.(\d+)\.incr\.aof$", path.name)
        return int(found.group(1)) if found else 0

    for path in sorted((redis_dir / "appendonlydir").glob("*.incr.aof"), key=number):
        data = path.read_bytes()
        i = 0
        try:
            while i < len(data) and data[i : i + 1] == b"*":
                end = data.index(b"\r\n", i)
                count, i = int(data[i + 1 : end]), end + 2
                parts = []
                for _ in range(count):
                    end = data.index(b"\r\n", i)
                    size, i = int(data[i + 1 : end]), end + 2
                    parts.append(data[i : i + size])
                    i += size + 2
                yield parts
        except ValueError:  # a truncated tail
            continue


def aof_evidence(redis_dir: Path, pks: list[int]) -> dict[str, Any]:
    """For each missing row: how often a message carrying its job was pushed onto the
    broadcast queue (publish, relay or restore) and recorded in kombu's ``unacked`` hash
    (taken by a worker). Pushed but never recorded means the message left the queue (BRPOP)
    and was lost before kombu wrote it to ``unacked``."""
    # argsrepr is JSON inside the message's JSON: "pk" appears as \"pk\":911 (and once
    # more escaped inside the unacked hash).
    wanted = {pk: re.compile(rb'pk\\*":%d[,}]' % pk) for pk in pks[:20]}
    pushed = dict.fromkeys(wanted, 0)
    unacked = dict.fromkeys(wanted, 0)
    for parts in aof_commands(redis_dir):
        command = parts[0].upper() if parts else b""
        if command in (b"LPUSH", b"RPUSH") and parts[1].startswith(QUEUE.encode()):
            values, into = parts[2:], pushed
        elif command == b"HSET" and parts[1] == b"unacked":
            values, into = parts[3::2], unacked
        else:
            continue
        for value in values:
            for pk, pattern in wanted.items():
                if pattern.search(value):
                    into[pk] += 1
    verdicts = {}
    for pk in wanted:
        if not pushed[pk]:
            verdict = "never reached the broker queue"
        elif not unacked[pk]:
            verdict = (
                "pushed to the queue, taken off it, never recorded as unacknowledged: lost "
                "between kombu's BRPOP and its write to the 'unacked' hash"
            )
        else:
            verdict = "taken by a worker (recorded as unacknowledged) and lost later"
        verdicts[str(pk)] = {
            "pushed": pushed[pk],
            "recorded_unacked": unacked[pk],
            "verdict": verdict,
        }
    return verdicts


def count_in_logs(logs: Path, pattern: str, patterns: dict[str, str]) -> dict[str, int]:
    counts = dict.fromkeys(patterns, 0)
    for path in sorted(logs.glob(pattern)):
        text = path.read_text(errors="replace")
        for key, needle in patterns.items():
            counts[key] += len(re.findall(needle, text))
    return counts


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def side(feed: Feed, committed: dict[int, float], warmup: int) -> dict[str, Any]:
    """Delivery numbers of one listener, counting only the rows this run committed."""
    feed.read()
    seen = {pk: n for pk, n in feed.ids.items() if pk != warmup}
    delivered = [pk for pk in committed if pk in seen]
    missing = sorted(set(committed).difference(seen))
    lat = [feed.first_seen[pk] - committed[pk] for pk in delivered]
    return {
        "delivered": len(delivered),
        "missing": len(missing),
        "missing_ids_sample": missing[:30],
        "delivery_pct": round(100.0 * len(delivered) / len(committed), 3) if committed else 0.0,
        "frames": sum(n for pk, n in seen.items() if pk in committed),
        "duplicate_frames": sum(n - 1 for pk, n in seen.items() if pk in committed),
        "rows_duplicated": sum(1 for pk, n in seen.items() if pk in committed and n > 1),
        "uncommitted_ids_seen": sorted(set(seen).difference(committed))[:30],
        "messages": feed.messages,
        "latency_s": {
            "p50": round(percentile(lat, 0.5), 3),
            "p99": round(percentile(lat, 0.99), 3),
            "max": round(max(lat), 3) if lat else 0.0,
        },
        "events": dict(feed.events),
        "errors_sample": feed.errors[:10],
    }


def report(**kw: Any) -> dict[str, Any]:
    args, committed, warmup = kw["args"], kw["committed"], kw["warmup"]
    tap = side(kw["tap"], committed, warmup)
    page = side(kw["page"], committed, warmup)
    publish_errors: PublishErrors = kw["publish_errors"]
    in_db = kw["in_db"] - {warmup}
    lat = kw["latencies"]
    missing_tap = set(committed).difference(kw["tap"].ids)
    workers = count_in_logs(
        kw["logs"],
        "worker-*.log",
        {
            "retries_scheduled": r"Retry in",
            "delivery_failed": r"DeliveryFailed",
            "channels_over_capacity": r"over capacity",
            "broker_connection_lost": r"Connection to broker lost",
            "errors": r": ERROR/",
        },
    )
    relay_jobs = 0
    for path in kw["logs"].glob("worker-*.log"):
        relay_jobs += sum(
            int(n)
            # Celery's own log line only (tests.settings also prints the record bare).
            for n in re.findall(
                r"/MainProcess\] turbo_tasks relay published (\d+) outbox",
                path.read_text(errors="replace"),
            )
        )
    workers["relay_published_jobs"] = relay_jobs
    asgi = count_in_logs(kw["logs"], "asgi.log", {"tracebacks": r"Traceback"})
    return {
        "mode": kw["mode"],
        "committed": len(committed),
        "commit_errors": len(kw["commit_errors"]),
        "commit_errors_sample": kw["commit_errors"][:5],
        "rows_in_db": len(in_db),
        "rows_in_db_not_recorded_committed": sorted(in_db.difference(committed))[:30],
        "publish_errors_logged": publish_errors.count,
        "rows_in_publish_errors": len(publish_errors.pks),
        "missing_at_layer_with_publish_error_logged": len(missing_tap & publish_errors.pks),
        "missing_at_layer_unexplained": sorted(missing_tap - publish_errors.pks)[:30],
        "layer": tap,
        "page": page,
        "page_reconnects": max(0, kw["page"].events["connected"] - 1),
        # A subscribe unanswered for 5 s on an open socket: its consumer hung.
        "page_unanswered_subscribes": kw["page"].events["unanswered"],
        "page_ack_timeouts": kw["page"].events["ack-timeout"],
        "page_last_frame_behind_layer_s": round(
            max(0.0, kw["tap"].last_frame - kw["page"].last_frame), 1
        ),
        "produce_s": round(kw["produce_s"], 1),
        "achieved_rate": round(len(committed) / kw["produce_s"], 1) if kw["produce_s"] else 0,
        "commit_latency_s": {
            "p50": round(percentile(lat, 0.5), 4),
            "p99": round(percentile(lat, 0.99), 4),
            "max": round(max(lat), 3) if lat else 0.0,
        },
        "settle_s": round(kw["settle_s"], 1),
        "settle_reason": kw["settle_reason"],
        "backlog_rows": kw["backlog"],
        "drain_rows_per_s": round(kw["backlog"] / kw["settle_s"], 1) if kw["settle_s"] else 0,
        "pending_at_end": kw["pending"],
        "chaos_events": kw["chaos"].events,
        "workers_started": kw["stack"].workers_started,
        "worker_exits_on_their_own": kw["stack"].worker_exits,
        "worker_logs": workers,
        "asgi_logs": asgi,
        "settings": {
            "TURBO_TASKS": turbo_tasks_settings(kw["mode"], args),
            "visibility_timeout_s": args.visibility_timeout,
            "unacked_restore_interval_s": 1,
            "redis_appendonly": not args.no_appendonly,
            "redis_stop_signal": args.redis_signal,
            "worker": f"prefork -c {args.concurrency}, prefetch multiplier 1, acks_late",
            "page_ack_timeout_s": args.page_ack_timeout,
        },
    }


# -- the two-mode driver --------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    head = (
        f"{'mode':<7} {'committed':>9} | {'at channel layer (tap)':^40} | "
        f"{'at websocket page':^40} | {'publish':>7}"
    )
    sub = (
        f"{'':<7} {'':>9} | {'delivered':>9} {'missing':>7} {'dup fr.':>7} {'%':>8}     | "
        f"{'delivered':>9} {'missing':>7} {'dup fr.':>7} {'%':>8}     | {'errors':>7}"
    )
    lines = [head, sub, "-" * len(head)]
    for mode, r in results.items():
        if "error" in r:
            lines.append(f"{mode:<7} FAILED: {r['error'][:120]}")
            continue
        a, p = r["layer"], r["page"]
        lines.append(
            f"{mode:<7} {r['committed']:>9} | {a['delivered']:>9} {a['missing']:>7} "
            f"{a['duplicate_frames']:>7} {a['delivery_pct']:>7.3f}%     | {p['delivered']:>9} "
            f"{p['missing']:>7} {p['duplicate_frames']:>7} {p['delivery_pct']:>7.3f}%     | "
            f"{r['publish_errors_logged']:>7}"
        )
    lines.append("")
    for mode, r in results.items():
        if "error" in r:
            continue
        kinds = Counter(e["kind"] for e in r["chaos_events"])
        lines.append(
            f"{mode}: {r['produce_s']}s at {r['achieved_rate']}/s, chaos {dict(kinds)}, "
            f"page reconnects {r['page_reconnects']} (unanswered subscribes "
            f"{r['page_unanswered_subscribes']}), worker exits on their own "
            f"{len(r['worker_exits_on_their_own'])}, settle {r['settle_s']}s "
            f"({r['settle_reason']}; backlog {r['backlog_rows']} rows, drained at "
            f"{r['drain_rows_per_s']}/s), commit p99 {r['commit_latency_s']['p99']}s "
            f"max {r['commit_latency_s']['max']}s, layer latency p50 "
            f"{r['layer']['latency_s']['p50']}s max {r['layer']['latency_s']['max']}s; "
            f"{r.get('edits', 0)} edits, {r.get('deleted', 0)} deletes"
        )
        pg = r.get("pages")
        if pg:
            t = pg["totals"]
            lines.append(
                f"{mode}: flapping subscribers: {pg['equal_to_db']}/{pg['subscribers']} pages "
                f"equal to the database ({pg['in_db_order']} also in its order); differing "
                f"{pg['differing']}, of which explained by logged publish errors "
                f"{pg['differing_explained_by_logged_publish_errors']}, unexplained "
                f"{pg['differing_unexplained']}; {t.get('subscribes', 0)} subscribes, "
                f"{t.get('flaps', 0)} flaps, {t.get('dropped', 0)} drops, "
                f"{t.get('resets', 0)} resets, {t.get('reloads', 0)} renders; settled in "
                f"{pg['settle_s']}s ({pg['settle_reason']})"
            )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    try:
        redis_version = subprocess.run(
            [shutil.which("redis-server") or "redis-server", "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()[2]
    except Exception:
        redis_version = "?"
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "redis": redis_version,
    }


def child_main(args: argparse.Namespace) -> int:
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        result = run_mode(args.child, args)
    except KeyboardInterrupt:
        say(args.child, "interrupted; everything stopped")
        return 130
    except Exception as exc:
        say(args.child, f"FAILED: {exc!r}")
        result = {"mode": args.child, "error": f"{type(exc).__name__}: {exc}"}
    Path(args.child_out).write_text(json.dumps(result, indent=2))
    return 0 if "error" not in result else 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--changes", type=int, default=10_000, help="rows to commit per mode")
    p.add_argument("--rate", type=float, default=200.0, help="rows per second (paced)")
    p.add_argument("--batch", type=int, default=1, help="rows per transaction")
    p.add_argument("--seed", type=int, default=1, help="seed of the chaos schedule")
    p.add_argument("--modes", default="direct,outbox", help="comma-separated PUBLISH_MODEs")
    p.add_argument("--chaos-min", type=float, default=3.0, help="min seconds between events")
    p.add_argument("--chaos-max", type=float, default=10.0, help="max seconds between events")
    p.add_argument("--max-events", type=int, default=20, help="chaos events per mode, at most")
    p.add_argument("--redis-down-min", type=float, default=0.5, help="Redis downtime, min s")
    p.add_argument("--redis-down-max", type=float, default=3.0, help="Redis downtime, max s")
    p.add_argument(
        "--redis-signal",
        choices=("term", "kill"),
        default="term",
        help="how Redis is stopped: SIGTERM (clean shutdown) or SIGKILL (crash)",
    )
    p.add_argument(
        "--no-appendonly",
        action="store_true",
        help="run Redis without persistence: a restart loses queues and groups",
    )
    p.add_argument(
        "--page-ack-timeout",
        type=float,
        default=0.0,
        help="the page reconnects when a subscribe is not answered within this many seconds "
        "(0: only when the socket closes, like the shipped JS element)",
    )
    p.add_argument(
        "--subscribers", type=int, default=20, help="flapping websocket subscribers (pages)"
    )
    p.add_argument(
        "--flap-mean-up", type=float, default=3.0, help="a subscriber's mean time connected, s"
    )
    p.add_argument(
        "--flap-max-down", type=float, default=2.0, help="a subscriber's max time away, s"
    )
    p.add_argument("--edit-pct", type=float, default=10.0, help="%% of changes editing a row")
    p.add_argument("--delete-pct", type=float, default=5.0, help="%% of changes deleting a row")
    p.add_argument(
        "--since",
        choices=("last", "contiguous"),
        default="contiguous",
        help="a subscriber re-subscribes with the highest offset up to which it received "
        "every message (like the element), or with the last one it applied (which skips a "
        "message two workers pushed out of order)",
    )
    p.add_argument(
        "--trace-pages", action="store_true", help="log every message a subscriber receives"
    )
    p.add_argument(
        "--pages-timeout", type=float, default=90.0, help="wait this long for pages to settle"
    )
    p.add_argument("--concurrency", type=int, default=2, help="worker prefork processes")
    p.add_argument(
        "--layer", choices=("core", "pubsub"), default="core", help="channels_redis layer"
    )
    p.add_argument("--visibility-timeout", type=int, default=10, help="broker, seconds")
    p.add_argument("--retry-backoff-max", type=float, default=5.0, help="TURBO_TASKS, s")
    p.add_argument("--quiet", type=float, default=10.0, help="settled after this long idle")
    p.add_argument("--settle-timeout", type=float, default=180.0, help="settle at most, s")
    p.add_argument("--keep-tmp", action="store_true", help="keep the Redis/SQLite temp dirs")
    p.add_argument("--results", default=str(RESULTS), help="JSON results file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.changes < 1 or args.rate <= 0 or args.batch < 1:
        p.error("--changes, --rate and --batch must be positive")
    if args.retry_backoff_max >= args.visibility_timeout:
        print(
            "warning: --retry-backoff-max >= --visibility-timeout: ETA retries will be "
            "redelivered while a worker still holds them",
            file=sys.stderr,
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            print(f"unknown mode {m!r}; choose from {', '.join(MODES)}", file=sys.stderr)
            return 2
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {}
    raw = sys.argv[1:] if argv is None else argv
    current: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: Any) -> None:
        if current is not None and current.poll() is None:
            current.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)
    t0 = time.monotonic()
    try:
        for mode in modes:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                out = Path(f.name)
            # A process per mode: Django settings (ports, database, PUBLISH_MODE) are read
            # once per process, and every mode starts from nothing.
            current = subprocess.Popen(
                [sys.executable, __file__, *raw, "--child", mode, "--child-out", str(out)]
            )
            try:
                current.wait()
            except KeyboardInterrupt:
                current.wait(120)  # it got the Ctrl-C too and is stopping its processes
                raise
            try:
                results[mode] = json.loads(out.read_text() or "{}") or {"error": "no result"}
            except (OSError, ValueError) as exc:
                results[mode] = {"mode": mode, "error": f"no result ({exc})"}
            finally:
                out.unlink(missing_ok=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    total_s = time.monotonic() - t0
    outbox = results.get("outbox")
    ok = outbox is None or ("error" not in outbox and outbox["layer"]["delivery_pct"] >= 100.0)
    pages_ok = outbox is None or "error" in outbox or not outbox.get("pages")
    if not pages_ok and outbox is not None:
        pages_ok = outbox["pages"]["equal_to_db"] == outbox["pages"]["subscribers"]
    ok = ok and pages_ok
    failed = any("error" in r for r in results.values())
    document = {
        "date": started.isoformat(timespec="seconds"),
        "runtime_s": round(total_s, 1),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "check": "outbox mode: every committed row delivered to the channel layer (tap), "
        "and every flapping subscriber's page equal to the database",
        "passed": ok and not failed,
        "modes": results,
    }
    Path(args.results).write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(table(results))
    print()
    print(f"runtime {total_s:.0f}s; results in {args.results}; logs in artifacts/chaos/")
    if outbox is not None:
        verdict = "PASS" if ok else "FAIL"
        pct = outbox.get("layer", {}).get("delivery_pct")
        pg = outbox.get("pages") or {}
        print(
            f"{verdict}: outbox mode delivered {pct}% of committed rows to the channel layer; "
            f"{pg.get('equal_to_db', '-')}/{pg.get('subscribers', '-')} flapping subscribers' "
            "pages equal the database"
        )
    if failed:
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
