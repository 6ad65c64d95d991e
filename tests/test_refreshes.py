"""Debounced refreshes across workers: one refresh per stream per window, after the last
change (trailing edge), with two worker processes on the same channel layer."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.test import override_settings

from tests.helpers import start_worker, test_env, wait_for
from tests.testapp.models import Room
from turbo_tasks import layers, refreshes, request_context

pytestmark = pytest.mark.django_db(transaction=True)

WINDOW = 5  # seconds: long enough for a loaded machine to run every job inside it


@pytest.fixture
def two_workers(redis_server, redis_client):
    """Two worker processes, each on a queue of its own (so both surely take part)."""
    queues = [f"refresh-{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
    workers = []
    try:
        for queue in queues:
            env = test_env()
            env["TURBO_TEST_TURBO_TASKS"] = json.dumps(
                {"QUEUE": queue, "REFRESH_DEBOUNCE_SECONDS": WINDOW}
            )
            workers.append(start_worker(f"{queue}-{uuid.uuid4().hex[:4]}", queue, env))
        yield queues
    finally:
        for worker in workers:
            worker.stop()
        redis_client.delete(*queues)


def refresh_frames(client):
    return [f for f in client.frames if 'action="refresh"' in f.get("html", "")]


def drained(redis_client, queues):
    # ETA tasks wait in a worker's memory, unacknowledged: the unacked hash holds them.
    return all(redis_client.llen(q) == 0 for q in queues) and redis_client.hlen("unacked") == 0


@pytest.mark.parametrize("same_request", [True, False])
def test_refreshes_from_two_workers_become_one_after_the_last(
    ws_client, two_workers, redis_client, same_request
):
    room = Room.objects.create(name="lobby")
    client = ws_client()
    client.subscribe(room.stream.signed_name)
    started = time.monotonic()
    for i in range(10):  # ten transactions, alternately published to each worker's queue
        request_id = "req-1" if same_request else f"req-{i}"
        with (
            override_settings(TURBO_TASKS={"QUEUE": two_workers[i % 2]}),
            request_context.origin(None, request_id),
        ):
            room.stream.refresh(debounce=True)
    client.wait(lambda f: 'action="refresh"' in f.get("html", ""), 30 + WINDOW)
    # Trailing edge: sent a window after the first refresh, not at once (load only delays).
    assert time.monotonic() - started >= WINDOW * 0.9
    wait_for(lambda: drained(redis_client, two_workers), 30, "both workers to finish")
    # A marker frame: everything sent before it has arrived.
    with override_settings(TURBO_TASKS={"QUEUE": two_workers[0]}):
        room.stream.append(text="marker", id="m")
    client.wait(lambda f: "marker" in f.get("html", ""))
    frames = refresh_frames(client)
    assert len(frames) == 1, frames
    # request-id only when every refresh in the window came from the same request.
    expected = ' request-id="req-1"' if same_request else ""
    assert frames[0]["html"] == f'<turbo-stream action="refresh"{expected}></turbo-stream>'


def test_the_window_key_opens_once_and_closes_only_with_its_token(redis_server):
    layer = layers.get_layer()
    group = f"g-{uuid.uuid4().hex}"
    token = layers.run(refreshes.open_window(layer, group, "r1", "s1"))
    assert token
    assert layers.run(refreshes.open_window(layer, group, "r1", "s2")) == ""
    assert layers.run(refreshes.close_window(layer, group, "not-the-token")) == (None, None)
    # The sender differed between the two refreshes: the trailing one excludes nobody.
    assert layers.run(refreshes.close_window(layer, group, token)) == ("r1", None)
    assert layers.run(refreshes.open_window(layer, group, None, None))  # a new window


def test_a_window_left_open_past_its_deadline_is_taken_over(redis_server, monkeypatch):
    # The worker that opened it died before scheduling the trailing refresh: the next
    # refresh must not be dropped for good.
    monkeypatch.setattr(refreshes, "GRACE_SECONDS", 0)
    layer = layers.get_layer()
    group = f"g-{uuid.uuid4().hex}"
    with override_settings(TURBO_TASKS={"REFRESH_DEBOUNCE_SECONDS": 0.05}):
        first = layers.run(refreshes.open_window(layer, group, None, None))
        assert first
        wait_for(
            lambda: layers.run(refreshes.open_window(layer, group, None, None)),
            10,
            "a refresh to open a new window once the old one is overdue",
        )
        assert layers.run(refreshes.close_window(layer, group, first)) == (None, None)
