"""Prometheus metrics (turbo_tasks.metrics, turbo_tasks.views): real processes count what
they do and serve it over HTTP; the write path counts what it publishes; nothing is
measured when prometheus_client is absent or METRICS is off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    ROOT,
    WsClient,
    free_port,
    open_websocket,
    start_asgi,
    start_redis,
    start_worker,
    test_env,
    wait_for,
)
from tests.testapp.models import Message, Room
from turbo_tasks import metrics, publish

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 60
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def fetch(url: str, token: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    status, _, body = fetch(url)
    assert status == 200, body
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def stack_env(channel_url: str, queue: str, **turbo_tasks: Any) -> dict[str, str]:
    env = test_env()
    env["TURBO_TEST_CHANNEL_REDIS_URL"] = channel_url
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"QUEUE": queue, **turbo_tasks})
    return env


class Stack:
    def __init__(self, queue: str, worker_metrics: str, web_metrics: str, ws_url: str) -> None:
        self.queue, self.worker_metrics, self.web_metrics = queue, worker_metrics, web_metrics
        self.ws_url = ws_url


@pytest.fixture(scope="module")
def stack(redis_server: str, django_db_setup: None) -> Iterator[Stack]:
    """A solo worker serving /metrics on a port of its own, and an ASGI server serving the
    metrics view, on a channel-layer Redis and a broadcast queue of their own."""
    with ExitStack() as stack:
        server, url = start_redis("metrics")
        stack.callback(server.stop)
        queue = f"metrics-{uuid.uuid4().hex[:8]}"
        port = free_port()
        worker = start_worker(
            f"metrics-{os.getpid()}", queue, stack_env(url, queue, WORKER_METRICS_PORT=port)
        )
        stack.callback(worker.stop)
        asgi, web_port = start_asgi("metrics-asgi", stack_env(url, queue))
        stack.callback(asgi.stop)
        worker_metrics = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: fetch(worker_metrics)[0] == 200, TIMEOUT, "the worker's /metrics")
        yield Stack(
            queue,
            worker_metrics,
            f"http://127.0.0.1:{web_port}/turbo-tasks/metrics",
            f"ws://127.0.0.1:{web_port}/ws/turbo/",
        )


def test_a_delivered_change_is_counted_end_to_end_with_a_plausible_lag(stack):
    worker_before, web_before = scrape(stack.worker_metrics), scrape(stack.web_metrics)
    with override_settings(TURBO_TASKS={"QUEUE": stack.queue}):
        room = Room.objects.create(name="measured")
        with open_websocket(stack.ws_url) as conn:
            client = WsClient(conn)
            assert client.subscribe(room.stream.signed_name)["type"] == "subscribed"
            assert client.subscribe("forged")["type"] == "rejected"
            during = scrape(stack.web_metrics)
            Message.objects.create(room=room, text="counted")
            assert "counted" in client.messages(timeout=TIMEOUT)

            def delivered() -> Samples | None:
                found = scrape(stack.worker_metrics)
                done = value(found, "turbo_tasks_frames_pushed_total") - value(
                    worker_before, "turbo_tasks_frames_pushed_total"
                )
                return found if done >= 1 else None

            worker = wait_for(delivered, TIMEOUT, "the worker to count its push")
            web = wait_for(
                lambda: (
                    (found := scrape(stack.web_metrics))
                    and value(found, "turbo_tasks_frames_sent_total") >= 1
                    and found
                ),
                TIMEOUT,
                "the web process to count the frame sent",
            )
    after = scrape(stack.web_metrics)

    def grew(samples: Samples, before: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    # The worker: the Room's save (no frame: nobody watched it yet) and the Message's.
    assert grew(worker, worker_before, "turbo_tasks_tasks_total", outcome="ok") >= 1
    assert grew(worker, worker_before, "turbo_tasks_frames_rendered_total") >= 1
    assert grew(worker, worker_before, "turbo_tasks_frames_pushed_total") >= 1
    lags = grew(worker, worker_before, "turbo_tasks_commit_to_push_seconds_count")
    lag_sum = grew(worker, worker_before, "turbo_tasks_commit_to_push_seconds_sum")
    assert lags >= 1
    assert 0 < lag_sum / lags < TIMEOUT
    assert grew(worker, worker_before, "turbo_tasks_render_seconds_count") >= 1
    # The web process: one socket and one subscription while it was open, one refused.
    assert value(during, "turbo_tasks_sockets") == value(web_before, "turbo_tasks_sockets") + 1
    assert value(during, "turbo_tasks_subscriptions") == 1
    assert grew(during, web_before, "turbo_tasks_subscribes_total", outcome="subscribed") == 1
    assert (
        grew(during, web_before, "turbo_tasks_subscribes_total", outcome="invalid_signature") == 1
    )
    assert grew(web, web_before, "turbo_tasks_frames_sent_total") == 1
    assert grew(web, web_before, "turbo_tasks_push_to_socket_seconds_count") == 1
    assert 0 < grew(web, web_before, "turbo_tasks_push_to_socket_seconds_sum") < TIMEOUT
    # Closed: the gauges come down (the consumer's disconnect runs once the socket closes).
    wait_for(
        lambda: (
            value(scrape(stack.web_metrics), "turbo_tasks_sockets")
            == value(web_before, "turbo_tasks_sockets")
        ),
        TIMEOUT,
        "the socket gauge to come down",
    )
    assert value(after, "turbo_tasks_subscriptions") in (0, 1)  # scraped before or after


def test_the_web_view_reads_the_queue_when_scraped(stack):
    status, kind, body = fetch(stack.web_metrics)
    assert status == 200, body
    assert kind.startswith("text/plain")
    samples = parse(body)
    # The view's process publishes to the stack's queue (a Redis broker): its depth and
    # the messages a worker holds unacknowledged are read at scrape time.
    for name in ("turbo_tasks_queue_waiting", "turbo_tasks_queue_unacked"):
        assert (name, frozenset({("queue", stack.queue)})) in samples, name


def test_the_write_path_counts_jobs_and_messages(redis_client, settings):
    queue = f"metrics-write-{uuid.uuid4().hex[:8]}"
    settings.TURBO_TASKS = {"QUEUE": queue}
    room = Room.objects.create(name="written")
    before = parse(_local())
    Message.objects.create(room=room, text="one")
    Message.objects.create(room=room, text="two")
    try:
        assert redis_client.llen(queue) == 2
        after = parse(_local())
        for name in ("turbo_tasks_jobs_total", "turbo_tasks_messages_published_total"):
            grew = value(after, name, mode="direct") - value(before, name, mode="direct")
            assert grew == 2, name
    finally:
        redis_client.delete(queue)


def ours() -> Samples:
    """This process's turbo_tasks samples (the default registry also has the process's
    CPU time and memory, which change between two reads)."""
    return {key: v for key, v in parse(_local()).items() if key[0].startswith("turbo_tasks_")}


def _local() -> str:
    import prometheus_client

    return prometheus_client.generate_latest(metrics.registry()).decode()


def test_a_failed_publish_is_counted_by_mode(monkeypatch, settings):
    settings.TURBO_TASKS = {"PUBLISH_MODE": "direct"}

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(publish, "publish", broken)
    before = parse(_local())
    job = {"action": "save", "model": "testapp.room", "pk": 1, "created": True}
    assert publish.send_jobs([job]) == 0
    assert publish.send_jobs([job], countdown=1) == 0
    after = parse(_local())
    for mode in ("direct", "trailing"):
        grew = value(after, "turbo_tasks_publish_failures_total", mode=mode) - value(
            before, "turbo_tasks_publish_failures_total", mode=mode
        )
        assert grew == 1, mode


def test_metrics_off_measures_nothing_and_the_view_is_404(client, settings, monkeypatch):
    settings.TURBO_TASKS = {"METRICS": False}
    assert not metrics.available()
    before = ours()
    metrics.published("direct", messages=1, jobs=1)
    metrics.task_done("ok")
    metrics.frame_sent(0.0)
    assert ours() == before
    assert client.get("/turbo-tasks/metrics").status_code == 404


def test_the_view_asks_for_the_token_when_one_is_set(client, settings):
    settings.TURBO_TASKS = {"METRICS_TOKEN": "s3cret"}
    assert client.get("/turbo-tasks/metrics").status_code == 401
    wrong = client.get("/turbo-tasks/metrics", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    assert wrong["WWW-Authenticate"].startswith("Bearer")
    right = client.get("/turbo-tasks/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert right.status_code == 200
    assert b"turbo_tasks_jobs_total" in right.content or b"turbo_tasks_jobs" in right.content
    assert client.post("/turbo-tasks/metrics").status_code == 405


def test_without_prometheus_client_nothing_is_imported_and_recording_is_a_no_op():
    """In a process where ``import prometheus_client`` fails, as without the extra."""
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "prometheus_client":
            raise ImportError("blocked")
sys.meta_path.insert(0, Block())
import django
django.setup()
from turbo_tasks import metrics, tracing, publish, consumers, tasks, views
assert not metrics.available()
metrics.published("direct", messages=1, jobs=2); metrics.publish_failed("direct")
metrics.task_done("retry"); metrics.pushed_after_commit(0.0); metrics.socket_opened()
metrics.subscriptions_changed(1); metrics.replied("rejected", {"reason": "forbidden"})
metrics.replayed(3); metrics.repaired("check", 2); metrics.frame_sent(0.0)
metrics.rendered(1, groups=["g"], subscribed=set(), failures=0, seconds=0.1); metrics.pushed(1)
assert metrics.serve_worker("solo") is False
from django.test import Client
assert Client().get("/turbo-tasks/metrics").status_code == 404
assert "prometheus_client" not in sys.modules
print("ok")
"""
    env = test_env()
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"WORKER_METRICS_PORT": free_port()})
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.stdout.strip() == "ok", result.stderr


def test_a_prefork_worker_sums_its_children_through_the_multiprocess_dir(
    redis_server: str, django_db_setup: None, tmp_path: Path, redis_client
):
    queue = f"metrics-prefork-{uuid.uuid4().hex[:8]}"
    port = free_port()
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server, url = start_redis("metrics-prefork")
    try:
        env = stack_env(url, queue, WORKER_METRICS_PORT=port)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        worker = start_worker(f"prefork-{os.getpid()}", queue, env, pool="prefork", concurrency=2)
        try:
            endpoint = f"http://127.0.0.1:{port}/metrics"
            wait_for(lambda: fetch(endpoint)[0] == 200, TIMEOUT, "the worker's /metrics")
            with override_settings(TURBO_TASKS={"QUEUE": queue}):
                room = Room.objects.create(name="prefork")
                for index in range(5):
                    Message.objects.create(room=room, text=f"message {index}")

            def counted() -> bool:
                return value(scrape(endpoint), "turbo_tasks_tasks_total", outcome="ok") == 5

            wait_for(counted, TIMEOUT, "five tasks counted across the children")
            # Counted by the children (their own files), served by the main process.
            writers = {p.name.rsplit("_", 1)[-1] for p in directory.glob("counter_*.db")}
            assert writers - {f"{worker.pid}.db"}
        finally:
            worker.stop()
    finally:
        server.stop()
        redis_client.delete(queue)


def test_a_message_without_a_commit_time_observes_no_lag():
    """A re-run from Flower or turbo_tasks_rerun carries no ``turbo_committed`` header."""
    key = ("turbo_tasks_commit_to_push_seconds_count", frozenset())
    before = parse(_local()).get(key, 0.0)
    metrics.pushed_after_commit(None)
    metrics.pushed_after_commit("not a time")
    assert parse(_local()).get(key, 0.0) == before
    metrics.pushed_after_commit(0.0)
    assert parse(_local()).get(key, 0.0) == before + 1


def test_a_missing_multiprocess_dir_turns_metrics_off_instead_of_breaking_saves(tmp_path):
    """prometheus_client raises on every value it creates when PROMETHEUS_MULTIPROC_DIR is
    not a directory: a save must still commit and publish."""
    script = """
import django
django.setup()
from turbo_tasks import metrics, publish
assert not metrics.available()
job = {"action": "save", "model": "testapp.room", "pk": 1, "created": True}
assert publish.send_jobs([job]) == 1
print("ok")
"""
    env = test_env()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "missing")
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"QUEUE": f"metrics-nodir-{uuid.uuid4().hex[:8]}"})
    result = subprocess.run(
        [sys.executable, "-c", "import worker\n" + script], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.strip() == "ok", result.stderr
    assert "is not a directory: metrics are off" in result.stderr
