"""RabbitMQ as the Celery broker, end to end: a private node (tests/rabbitmq.py), a worker
subprocess and Flower on it, the channel layer still on the test Redis.

The web side here is the test process: its Celery app is configured from Django settings
with ``CELERY_BROKER_URL=amqp://…``, as a project's would be. turbo_tasks' fast publisher
writes to Redis lists only, so for this broker every commit goes through Celery's
``send_task``; the tests check that the message really is in RabbitMQ. The broadcast queue
has a name of its own, so no Redis-broker worker of the session could deliver a frame
published to the wrong broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, current_app
from django.db import transaction
from django.test import override_settings

from tests import helpers
from tests.helpers import Process, free_port, start_worker, test_env, wait_for
from tests.rabbitmq import Node, require
from tests.testapp.models import Gated, Message, Room
from turbo_tasks.publish import TASK_NAME

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "turbo_tasks_rabbitmq"
TIMEOUT = 60


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[Node]:
    require()
    node = Node()
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def web_app(rabbitmq: Node) -> Iterator[Celery]:
    """The test process's Celery app, made from Django settings as worker/celery.py makes
    its own, with the broker (and the queue) the worker and Flower below use."""
    with override_settings(
        CELERY_BROKER_URL=rabbitmq.url,
        CELERY_BROKER_TRANSPORT_OPTIONS={},  # tests/settings.py without the Redis options
        TURBO_TASKS={"QUEUE": QUEUE},
    ):
        app = Celery("rabbitmq-web", set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        assert app.conf.broker_url == rabbitmq.url
        previous = current_app._get_current_object()
        app.set_current()  # what turbo_tasks.publish sends with
        try:
            yield app
        finally:
            previous.set_current()
            app.close()


@pytest.fixture(scope="module")
def worker_env(rabbitmq: Node) -> dict[str, str]:
    env = test_env()
    env["TURBO_TEST_BROKER_URL"] = rabbitmq.url
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"QUEUE": QUEUE})
    return env


def start_rabbitmq_worker(app: Celery, name: str, env: dict[str, str]) -> Process:
    # Pinged through RabbitMQ: this worker hears nothing else.
    return start_worker(name, QUEUE, env, app=app)


@pytest.fixture(scope="module")
def workers(
    web_app: Celery, worker_env: dict[str, str], redis_server: str, django_db_setup: None
) -> Iterator[dict[str, Any]]:
    """The worker on RabbitMQ, as ``{"worker": Process, "name": node name}``; a test that
    kills it puts its successor here."""
    name = f"rabbitmq-worker-{os.getpid()}"
    current = {"worker": start_rabbitmq_worker(web_app, name, worker_env), "name": name}
    yield current
    current["worker"].stop()


def queue_counts(node: Node, queue: str) -> tuple[int, ...] | None:
    """``(ready, unacknowledged, consumers)`` of ``queue``, as rabbitmqctl lists them."""
    listing = node.ctl(
        "list_queues", "--quiet", "--no-table-headers",
        "name", "messages_ready", "messages_unacknowledged", "consumers",
    )  # fmt: skip
    for line in listing.splitlines():
        name, *counts = line.split("\t")
        if name == queue:
            return tuple(int(count) for count in counts)
    return None


def subscribed(ws_client: Any, room: Room) -> helpers.WsClient:
    client = ws_client()
    assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
    return client


def appended(message: Message) -> str:
    return (
        '<turbo-stream action="append" target="messages"><template>'
        f'<p id="message-{message.pk}">{message.text}</p></template></turbo-stream>'
    )


def test_commit_publishes_its_message_to_rabbitmq(web_app, rabbitmq, redis_client):
    held = f"{QUEUE}_held"  # no worker consumes it
    room = Room.objects.create(name="held")
    with override_settings(TURBO_TASKS={"QUEUE": held}), transaction.atomic():
        first = Message.objects.create(room=room, text="in RabbitMQ")
        second = Message.objects.create(room=room, text="in the same message")

    with contextlib.closing(rabbitmq.connect()) as connection:
        channel = connection.channel()
        wait_for(
            lambda: channel.queue_declare(held, passive=True).message_count == 1,
            TIMEOUT,
            "the commit's message in the RabbitMQ queue",
        )
        raw = channel.basic_get(held, no_ack=True)
        channel.queue_delete(held)

    assert raw.headers["task"] == TASK_NAME
    (jobs,), kwargs, _ = json.loads(raw.body)
    # One message for the transaction, as with Redis.
    assert [(job["action"], job["model"], job["pk"]) for job in jobs] == [
        ("save", "testapp.message", first.pk),
        ("save", "testapp.message", second.pk),
    ]
    assert kwargs == {}
    assert json.loads(raw.headers["argsrepr"]) == [jobs]  # readable in Flower, whole
    assert not redis_client.exists(held)  # nothing took the Redis-only fast path


def test_committed_rows_reach_a_subscribed_websocket(workers, ws_client, redis_client):
    room = Room.objects.create(name="over rabbitmq")
    client = subscribed(ws_client, room)
    message = Message.objects.create(room=room, text="through RabbitMQ")
    assert client.messages(timeout=TIMEOUT) == appended(message)
    assert not redis_client.exists(QUEUE)


def test_worker_killed_mid_task_is_redelivered(
    web_app, workers, worker_env, rabbitmq, ws_client, tmp_path: Path
):
    room = Room.objects.create(name="kill")
    client = subscribed(ws_client, room)
    started, gate = tmp_path / "started", tmp_path / "gate"
    Gated.objects.create(
        room=room, name="after the kill", started_path=str(started), gate_path=str(gate)
    )
    wait_for(started.exists, TIMEOUT, "the hook to start in the first worker")
    # acks_late: the message stays unacknowledged while the task runs.
    assert queue_counts(rabbitmq, QUEUE) == (0, 1, 1)

    killed = workers["worker"]
    task_id = re.findall(rf"{re.escape(TASK_NAME)}\[([0-9a-f-]+)\] received", killed.log())[-1]
    killed.kill()
    # Its connection closed, RabbitMQ puts the message back at once (no visibility
    # timeout to wait for, unlike Redis).
    wait_for(
        lambda: queue_counts(rabbitmq, QUEUE) == (1, 0, 0),
        TIMEOUT,
        "RabbitMQ to requeue the unacknowledged message",
    )
    started.unlink()
    gate.touch()
    name = f"rabbitmq-worker-restarted-{os.getpid()}"
    successor = start_rabbitmq_worker(web_app, name, worker_env)
    workers.update(worker=successor, name=name)

    assert client.messages(timeout=TIMEOUT) == (
        '<turbo-stream action="append" target="gated"><template>after the kill</template>'
        "</turbo-stream>"
    )
    assert started.exists()  # the new worker ran the hook again
    # ... for the very message the killed worker held.
    wait_for(
        lambda: f"{TASK_NAME}[{task_id}] succeeded" in successor.log(),
        TIMEOUT,
        "the new worker to log the redelivered task",
    )


@pytest.fixture(scope="module")
def flower(workers, worker_env) -> Iterator[str]:
    port = free_port()
    process = Process(
        "rabbitmq-flower",
        [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
         "--address=127.0.0.1"],
        dict(worker_env, FLOWER_UNAUTHENTICATED_API="true"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    worker = f"{workers['name']}@{socket.gethostname()}"
    try:
        # Flower sees tasks through events: wait until it has heard the worker's.
        wait_for(
            lambda: _get(f"{url}/api/workers?status=1").get(worker) is True,
            TIMEOUT,
            "Flower to see the worker's events",
        )
    except AssertionError:
        process.stop()
        raise AssertionError("Flower did not start:\n" + process.log()) from None
    yield url
    process.stop()


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return {}


def test_flower_re_runs_a_delivery(flower, ws_client):
    room = Room.objects.create(name="re-run")
    client = subscribed(ws_client, room)
    message = Message.objects.create(room=room, text="again from Flower")
    assert client.messages(timeout=TIMEOUT) == appended(message)

    def delivered() -> dict[str, Any] | None:
        tasks = _get(f"{flower}/api/tasks?taskname={TASK_NAME}&state=SUCCESS")
        for task in tasks.values():
            if any(job["pk"] == message.pk for job in json.loads(task["args"])[0]):
                return dict(task)
        return None

    task = wait_for(delivered, TIMEOUT, "Flower to show the delivery")
    request = urllib.request.Request(
        f"{flower}/api/task/send-task/{TASK_NAME}",
        data=json.dumps({"args": json.loads(task["args"])}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["task-id"] != task["uuid"]
    # The re-run renders the row again: the same frame, which Turbo de-duplicates by id.
    assert client.messages(timeout=TIMEOUT) == appended(message)
