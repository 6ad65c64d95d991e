"""Faults with real processes: the channel-layer Redis goes away, retries run out and Flower
re-runs the task, a worker is SIGKILLed mid-task. Each test proves the frame arrives.

This module runs its own worker (queue ``faults``) and ASGI server, both using a second
redis-server as the channel layer, which the tests stop and start. The broker stays on the
session Redis.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings

from tests.helpers import (
    Process,
    WsClient,
    accepts,
    free_port,
    open_websocket,
    start_asgi,
    start_redis,
    start_worker,
    test_env,
    wait_for,
)
from tests.testapp.models import Gated, Message, Room
from turbo_tasks import outbox
from turbo_tasks.models import OutboxJob

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "faults"
# Quick retries, few of them: the first retry comes 2.5-5 s after a failure.
FAULT_SETTINGS = {"QUEUE": QUEUE, "MAX_RETRIES": 2, "RETRY_BACKOFF": 5, "RETRY_BACKOFF_MAX": 10}


class ChannelRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: Process | None = None

    def start(self) -> None:
        self.server, _ = start_redis("channel-redis", self.port)

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()
        wait_for(lambda: not accepts(self.port), 20, "the channel-layer Redis to stop")


@pytest.fixture(scope="module")
def channel_redis(redis_server):
    server = ChannelRedis()
    server.start()
    yield server
    if server.server:
        server.server.stop()


def _fault_env(channel_redis: ChannelRedis) -> dict[str, str]:
    env = test_env()
    env["TURBO_TEST_CHANNEL_REDIS_URL"] = channel_redis.url
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps(FAULT_SETTINGS)
    env["TURBO_TEST_VISIBILITY_TIMEOUT"] = "5"
    return env


@pytest.fixture(scope="module")
def fault_stack(channel_redis):
    env = _fault_env(channel_redis)
    asgi, port = start_asgi("faults-asgi", env)
    worker = start_worker(f"faults-{os.getpid()}", QUEUE, env)
    stack = {"env": env, "worker": worker, "ws": f"ws://127.0.0.1:{port}/ws/turbo/"}
    yield stack
    stack["worker"].stop()
    asgi.stop()


@pytest.fixture(autouse=True)
def publish_to_fault_queue():
    with override_settings(TURBO_TASKS=FAULT_SETTINGS):
        yield


def subscribed_client(fault_stack, stream) -> WsClient:
    """Connect and subscribe, retrying while the channel layer is still coming back."""

    def attempt() -> WsClient | None:
        try:
            client = WsClient(open_websocket(fault_stack["ws"], timeout=5))
            if client.subscribe(stream.signed_name, timeout=5)["type"] == "subscribed":
                return client
        except Exception:  # still coming back: try again
            return None
        return None

    return wait_for(attempt, 60, "a subscribed websocket")


def log_count(process: Process, text: str) -> int:
    return process.log_path.read_text(errors="replace").count(text)


def test_channel_layer_outage_is_retried_until_the_frame_arrives(fault_stack, channel_redis):
    room = Room.objects.create(name="outage")
    worker = fault_stack["worker"]
    retries_before = log_count(worker, "retry: Retry in")
    channel_redis.stop()
    message = Message.objects.create(room=room, text="survives the outage")
    wait_for(
        lambda: log_count(worker, "retry: Retry in") > retries_before,
        60,
        "the worker to schedule a retry",
    )
    channel_redis.start()
    # The ASGI server lost its sockets with Redis; a page would reconnect, so do we.
    client = subscribed_client(fault_stack, room.stream)
    assert client.messages(timeout=60) == (
        '<turbo-stream action="append" target="messages"><template>'
        f'<p id="message-{message.pk}">survives the outage</p></template></turbo-stream>'
    )


def test_channel_layer_restart_closes_the_socket_and_the_page_is_told_to_reload(
    fault_stack, channel_redis
):
    room = Room.objects.create(name="restart")
    client = subscribed_client(fault_stack, room.stream)
    since = client.frames[-1]["offset"]
    channel_redis.stop()

    # Not deaf: the socket is closed, so the page knows to reconnect.
    def closed() -> bool:
        try:
            client.conn.recv(timeout=0.5)
        except TimeoutError:
            return False
        except Exception:
            return True
        return False

    wait_for(closed, 60, "the server to close the socket")
    channel_redis.start()
    # The restarted Redis kept no history (and no offsets): the page's since cannot be
    # served, and it is told so instead of being left to show a stale page as live.
    again = subscribed_client(fault_stack, room.stream)
    start = len(again.frames)
    again.subscribe(room.stream.signed_name, since=since)
    assert [f["type"] for f in again.frames[start:]] == ["reset", "subscribed"]


@pytest.fixture(scope="module")
def flower(fault_stack):
    port = free_port()
    env = dict(fault_stack["env"], FLOWER_UNAUTHENTICATED_API="true")
    process = Process(
        "faults-flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _http_ok(f"{url}/api/workers?refresh=1"), 60, "Flower's API")
    yield url
    process.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _flower_failures(url: str) -> dict:
    query = "taskname=turbo_tasks.deliver&state=FAILURE"
    with urllib.request.urlopen(f"{url}/api/tasks?{query}", timeout=10) as response:
        return json.loads(response.read())


def test_retries_run_out_then_flower_re_runs_the_task(fault_stack, channel_redis, flower):
    room = Room.objects.create(name="down for long")
    channel_redis.stop()
    try:
        message = Message.objects.create(room=room, text="re-run from Flower")

        job = {"action": "save", "model": "testapp.message", "pk": message.pk, "created": True}

        def failed_task():
            for task in _flower_failures(flower).values():
                if json.loads(task["args"]) == [[job]]:
                    return task
            return None

        task = wait_for(failed_task, 90, "Flower to show the task as FAILURE")
        assert "DeliveryFailed" in task["exception"]
        assert "gave up after 2 retries" in task["exception"]
    finally:
        channel_redis.start()
    client = subscribed_client(fault_stack, room.stream)

    dry = StringIO()
    call_command(
        "turbo_tasks_rerun", flower_url=flower, task_id=[task["uuid"]], dry_run=True, stdout=dry
    )
    assert f"{task['uuid']} failed: DeliveryFailed" in dry.getvalue()
    assert "re-run as" not in dry.getvalue()

    out = StringIO()
    call_command("turbo_tasks_rerun", flower_url=flower, task_id=[task["uuid"]], stdout=out)
    assert "re-run as" in out.getvalue()
    assert "re-run from Flower" in client.messages(timeout=60)


def test_worker_killed_mid_task_is_redelivered(fault_stack, tmp_path: Path):
    room = Room.objects.create(name="kill")
    client = subscribed_client(fault_stack, room.stream)
    started, gate = tmp_path / "started", tmp_path / "gate"
    Gated.objects.create(
        room=room, name="after the kill", started_path=str(started), gate_path=str(gate)
    )
    wait_for(started.exists, 60, "the hook to start in the first worker")

    worker = fault_stack["worker"]
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(30)
    started.unlink()
    gate.touch()

    # The message was never acknowledged: a new worker gets it back once the broker's
    # visibility timeout (5 s here) has passed.
    fault_stack["worker"] = start_worker(
        f"faults-restarted-{os.getpid()}", QUEUE, fault_stack["env"]
    )
    assert client.messages(timeout=90) == (
        '<turbo-stream action="append" target="gated"><template>after the kill</template>'
        "</turbo-stream>"
    )
    assert started.exists()


def test_outbox_worker_killed_and_its_message_lost_is_delivered_by_the_relay(
    fault_stack, tmp_path: Path, redis_client
):
    # Worse than test_worker_killed_mid_task_is_redelivered: the broker also loses the
    # unacknowledged message (a Redis restart in kombu's pop-then-ack window), so only the
    # outbox row, never confirmed by the killed worker, brings the change back.
    room = Room.objects.create(name="kill-outbox")
    client = subscribed_client(fault_stack, room.stream)
    started, gate = tmp_path / "started", tmp_path / "gate"
    outbox_settings = {**FAULT_SETTINGS, "PUBLISH_MODE": "outbox", "OUTBOX_CLAIM_SECONDS": 2}
    with override_settings(TURBO_TASKS=outbox_settings):
        Gated.objects.create(
            room=room, name="outbox after the kill", started_path=str(started), gate_path=str(gate)
        )
        wait_for(started.exists, 60, "the hook to start in the first worker")
        worker = fault_stack["worker"]
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(30)
        # kombu's record of the unacknowledged message: lost, so it never comes back.
        assert redis_client.delete("unacked", "unacked_index") == 2
        started.unlink()
        gate.touch()
        fault_stack["worker"] = start_worker(
            f"faults-outbox-{os.getpid()}", QUEUE, fault_stack["env"]
        )
        stop = outbox.start_relay_thread(["default"])
        try:
            assert client.messages(timeout=90) == (
                '<turbo-stream action="append" target="gated"><template>outbox after the kill'
                "</template></turbo-stream>"
            )
            wait_for(lambda: not OutboxJob.objects.exists(), 30, "the row to be confirmed")
        finally:
            stop.set()
