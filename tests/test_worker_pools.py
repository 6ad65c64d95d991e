"""Every Celery pool delivers every frame: a real worker process per pool (prefork, threads,
gevent, eventlet), several tasks in flight at once, a real websocket on the real ASGI server.

Under gevent and eventlet many greenlets share one OS thread, and asyncio's running loop is
per OS thread: a channel-layer call that ran its event loop in the task's own greenlet made
every other greenlet's ORM call raise SynchronousOnlyOperation. turbo_tasks/layers.py runs
the loop in a real thread there; the last tests check that thread in a process patched as
those pools patch it."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from django.db import connections, transaction
from django.test import override_settings

import turbo_tasks as turbo
from tests.helpers import Process, WsClient, start_worker, test_env, wait_for
from tests.testapp.models import Message, Room

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 60
GREEN_POOLS = ["gevent", "eventlet"]
FRAME_ID = re.compile(r'<p id="message-(\d+)">')
# Greenlets and threads per worker: enough for tasks to really interleave.
CONCURRENCY = {"prefork": 2, "threads": 4, "gevent": 8, "eventlet": 8}
FAILURES = ("SynchronousOnlyOperation", "raised unexpected", "Traceback", "ERROR/")


def start_pool_worker(pool: str, queue: str) -> Process:
    """``celery -A worker worker -P <pool>`` on ``queue``, once it answers a ping."""
    env = test_env()
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"QUEUE": queue})
    name = f"pool-{pool}-{uuid.uuid4().hex[:6]}"
    return start_worker(name, queue, env, pool=pool, concurrency=CONCURRENCY[pool])


@pytest.fixture
def queue(redis_client: redis.Redis) -> Iterator[str]:
    """A queue of the test's own: the session worker must not take its tasks."""
    name = f"pool-{uuid.uuid4().hex[:8]}"
    with override_settings(TURBO_TASKS={"QUEUE": name}):
        yield name
    redis_client.delete(name)


def commit_messages(room: Room) -> set[int]:
    """20 rows: 14 in transactions of their own, committed from 4 threads at once, and two
    bulk transactions of 3 rows; 16 task messages. Returns the rows' pks."""

    def one(i: int) -> list[int]:
        try:
            with transaction.atomic():
                return [Message.objects.create(room=room, text=f"single {i}").pk]
        finally:
            connections.close_all()

    def bulk(i: int) -> list[int]:
        try:
            with transaction.atomic():
                rows = Message.objects.bulk_create(
                    [Message(room=room, text=f"bulk {i}.{j}") for j in range(3)]
                )
                turbo.saved(rows, created=True)
                return [row.pk for row in rows]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(14)]
        futures += [pool.submit(bulk, i) for i in range(2)]
        return {pk for future in futures for pk in future.result(timeout=TIMEOUT)}


def delivered_ids(frames: list[dict]) -> set[int]:
    return {
        int(pk)
        for frame in frames
        if frame["type"] == "message"
        for pk in FRAME_ID.findall(frame["html"])
    }


def finished(worker: Process, client: WsClient, expected: set[int]) -> str:
    """The worker's log once every frame arrived and all 16 tasks are done (Celery's Django
    fixup closes connections after each task), or at the first failure; else ''."""
    log = worker.log_path.read_text()
    if any(failure in log for failure in FAILURES):
        return log
    with contextlib.suppress(TimeoutError):  # what has arrived, until a 0.2 s pause
        while not delivered_ids(client.frames) >= expected:
            client.next(timeout=0.2)
    done = delivered_ids(client.frames) >= expected and log.count("succeeded in") >= 16
    return log if done else ""


@pytest.mark.parametrize("pool", ["prefork", "threads", *GREEN_POOLS])
def test_every_pool_delivers_every_frame_of_concurrent_tasks(pool, ws_client, queue):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
    # Published before the worker starts: it finds 16 tasks waiting and runs them at once.
    expected = commit_messages(room)
    assert len(expected) == 20
    worker = start_pool_worker(pool, queue)
    try:
        log = wait_for(lambda: finished(worker, client, expected), TIMEOUT, "every frame")
    finally:
        worker.stop()
    # And a clean shutdown: the worker's shutdown deadline starts without an error.
    stopped = worker.log(200_000)
    for failure in (*FAILURES, "BlockingSwitchOutError", "Cannot switch"):
        assert failure not in log, log
        assert failure not in stopped, stopped[-4000:]
    assert log.count("succeeded in") == 16, log
    assert delivered_ids(client.frames) >= expected


# -- the loop thread, in a process patched as Celery's -P gevent / -P eventlet patch it ------

GREEN_SCRIPT = textwrap.dedent("""
    import sys
    library, check = sys.argv[1], sys.argv[2]
    if library == "gevent":
        from gevent import monkey

        monkey.patch_all()
        import gevent

        spawn, result = gevent.spawn, lambda g: g.get(timeout=60)
    else:
        import eventlet

        eventlet.monkey_patch()
        spawn, result = eventlet.spawn, lambda g: g.wait()
    import asyncio
    import json

    import django

    django.setup()
    from tests.testapp.models import Room
    from turbo_tasks import _green, layers

    layer = layers.get_layer()
    in_flight = False

    async def slow_call():
        channel = await layer.new_channel()
        await layer.group_add("pools-unit", channel)
        await asyncio.sleep(0.5)  # keeps the call in flight while the other greenlet runs
        await layer.group_discard("pools-unit", channel)

    def channel_layer_call():
        global in_flight
        in_flight = True
        try:
            layers.run(slow_call())
        finally:
            in_flight = False

    def orm_meanwhile():
        assert in_flight  # spawned second: runs once the first waits for the loop thread
        try:
            asyncio.get_running_loop()
            seen = True
        except RuntimeError:
            seen = False
        return {"rooms": Room.objects.count(), "loop_seen": seen, "overlapped": in_flight}

    def push(i):
        layers.push(layer, [(f"pools-unit-{i}", f"<p>{i}.{j}</p>", None) for j in range(3)])

    if check == "orm":
        first, second = spawn(channel_layer_call), spawn(orm_meanwhile)
        result(first)
        out = result(second)
    else:  # more greenlets pushing at once than redis-py's pool has connections (100)
        greenlets = [spawn(push, i) for i in range(150)]
        out = {"pushed": sum(1 for g in greenlets if result(g) is None)}
    out["loop_threads"] = 1 if _green._loop_thread else 0
    out["thread_loops"] = len(layers._loops)
    layers.close_loops()
    print("RESULT " + json.dumps(out))
""")


def run_green(library: str, check: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", GREEN_SCRIPT, library, check],
        env=test_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines, done.stdout + done.stderr
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.parametrize("library", GREEN_POOLS)
def test_orm_in_another_greenlet_works_while_a_channel_layer_call_is_in_flight(
    redis_server, library
):
    Room.objects.create(name="lobby")
    out = run_green(library, "orm")
    assert out == {
        "rooms": 1,
        "loop_seen": False,
        "overlapped": True,
        "loop_threads": 1,
        "thread_loops": 0,
    }


@pytest.mark.parametrize("library", GREEN_POOLS)
def test_greenlets_pushing_at_once_share_one_bounded_loop(redis_server, library):
    out = run_green(library, "bound")
    assert out == {"pushed": 150, "loop_threads": 1, "thread_loops": 0}
