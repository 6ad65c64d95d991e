"""The lean publish path writes the same Celery message Celery itself would."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import redis
from celery import Celery
from celery.signals import before_task_publish
from django.test import override_settings

from tests.helpers import celery_app, free_port
from turbo_tasks import publish

JOBS = [{"action": "save", "model": "testapp.message", "pk": 5, "created": True}]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def raw_messages(redis_client, queue):
    return [json.loads(raw) for raw in reversed(redis_client.lrange(queue, 0, -1))]


def test_fast_message_matches_celerys_own(redis_client):
    queue = "compare-publish"
    redis_client.delete(queue)
    headers = {"turbo_committed": 1765000000.25, "traceparent": TRACEPARENT}
    with override_settings(TURBO_TASKS={"FAST_PUBLISH": False}):
        publish.publish(celery_app, JOBS, {"using": "other"}, queue, headers=headers)
    publish.publish(celery_app, JOBS, {"using": "other"}, queue, headers=headers)
    slow, fast = raw_messages(redis_client, queue)
    redis_client.delete(queue)

    assert publish._fast_publisher(celery_app) is not None
    assert fast.keys() == slow.keys()
    # In the same order too: Celery appends custom headers after its own.
    assert list(fast["headers"]) == list(slow["headers"])
    for key in ("lang", "task", "retries", "argsrepr", "kwargsrepr", "ignore_result", *headers):
        assert fast["headers"][key] == slow["headers"][key]
    assert fast["headers"]["root_id"] == fast["headers"]["id"]
    # Celery also copies argsrepr/kwargsrepr into the properties; workers ignore them.
    assert set(slow["properties"]) - set(fast["properties"]) == {"argsrepr", "kwargsrepr"}
    assert fast["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
    decode = lambda m: json.loads(base64.b64decode(m["body"]))  # noqa: E731
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert decode(fast) == decode(slow) == [[JOBS], {"using": "other"}, embed]


def test_publish_signals_in_use_fall_back_to_celery(redis_client):
    seen = []

    def receiver(sender=None, headers=None, **kwargs):
        seen.append(headers["task"])

    before_task_publish.connect(receiver)
    try:
        assert publish._fast_publisher(celery_app) is None
        publish.publish(celery_app, JOBS, {}, "signal-fallback")
    finally:
        before_task_publish.disconnect(receiver)
        redis_client.delete("signal-fallback")
    assert seen == ["turbo_tasks.deliver"]


@pytest.mark.parametrize(
    "config",
    [
        {"broker_url": "amqp://guest@localhost//"},
        {"broker_url": "rediss://localhost:6379/0"},
        {"broker_url": "redis://localhost:6379/0", "task_serializer": "pickle"},
        {
            "broker_url": "redis://localhost:6379/0",
            "broker_transport_options": {"global_keyprefix": "x:"},
        },
    ],
)
def test_other_brokers_and_options_use_celery(config):
    app = Celery("other", set_as_current=False)
    app.conf.update(config)
    assert publish._make_publisher(app) is None


def test_plain_redis_broker_uses_the_fast_path():
    app = Celery("plain", set_as_current=False, broker="redis://localhost:6379/3")
    assert isinstance(publish._make_publisher(app), publish.RedisPublisher)


def test_threads_publish_on_their_own_connections(redis_client):
    queue = "threaded-publish"
    redis_client.delete(queue)
    publisher = publish._fast_publisher(celery_app)
    assert publisher is not None
    policy = {"max_retries": 0}

    def publish_many(n):
        for i in range(50):
            publisher.publish([{**JOBS[0], "pk": n * 100 + i}], {}, queue, policy)

    threads = [threading.Thread(target=publish_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    messages = raw_messages(redis_client, queue)
    redis_client.delete(queue)
    bodies = [json.loads(base64.b64decode(m["body"])) for m in messages]
    assert sorted(body[0][0][0]["pk"] for body in bodies) == sorted(
        n * 100 + i for n in range(4) for i in range(50)
    )
    assert len({m["headers"]["id"] for m in messages}) == 200


def test_a_dropped_connection_is_reopened(redis_client):
    queue = "reconnect-publish"
    publisher = publish._fast_publisher(celery_app)
    assert publisher is not None
    publisher.publish(JOBS, {}, queue, {"max_retries": 0})
    # The server closes every client connection (as a Redis restart or idle timeout does).
    redis_client.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(redis.ConnectionError):
        publisher.publish(JOBS, {}, queue, {"max_retries": 0})
    publisher.publish(JOBS, {}, queue, {"max_retries": 0})  # a new connection
    redis_client.client_kill_filter(_type="normal", skipme=True)
    publisher.publish(JOBS, {}, queue, {"max_retries": 1})  # reconnects within the call
    assert redis_client.llen(queue) == 3
    redis_client.delete(queue)


def test_fast_path_publishes_to_broker_write_url(redis_client):
    # broker_url (for reading) is dead; Celery itself would publish to broker_write_url.
    port = redis_client.connection_pool.connection_kwargs["port"]
    app = Celery(
        "split-broker",
        set_as_current=False,
        broker=f"redis://127.0.0.1:{free_port()}/0",
        broker_write_url=f"redis://127.0.0.1:{port}/0",
    )
    queue = "write-url-publish"
    publish.publish(app, JOBS, {}, queue)
    assert [m["headers"]["task"] for m in raw_messages(redis_client, queue)] == [
        "turbo_tasks.deliver"
    ]
    redis_client.delete(queue)


def test_secret_snapshot_fields_are_masked_in_flowers_args_only(redis_client):
    queue = "redacted-publish"
    jobs = [
        {
            "action": "delete",
            "model": "testapp.member",
            "pk": 1,
            "fields": {
                "id": 1,
                "name": "ann",
                "password": "pbkdf2_sha256$1$salt$hash",
                "api_token": "t0k",
            },
        }
    ]
    publish.publish(celery_app, jobs, {}, queue)
    [message] = raw_messages(redis_client, queue)
    redis_client.delete(queue)
    assert json.loads(message["headers"]["argsrepr"]) == [
        [
            {
                **jobs[0],
                "fields": {"id": 1, "name": "ann", "password": "********", "api_token": "********"},
            }
        ]
    ]
    assert json.loads(base64.b64decode(message["body"]))[0] == [jobs]  # the task gets them


def test_queue_head_reads_the_oldest_messages_first_as_both_publishers_write_them(redis_client):
    queue = "peek-publish"
    redis_client.delete(queue)
    with override_settings(TURBO_TASKS={"QUEUE": queue}):
        with override_settings(TURBO_TASKS={"QUEUE": queue, "FAST_PUBLISH": False}):
            publish.publish(celery_app, [{"n": 1}], {"outbox": [1]}, queue)
        publish.publish(celery_app, [{"n": 2}], {"outbox": [2], "using": "other"}, queue)
        publish.publish(celery_app, [{"n": 3}], {}, queue)
        head = publish.queue_head(2)
        everything = publish.queue_head(10)
    redis_client.delete(queue)
    assert head == [
        ([[{"n": 1}]], {"outbox": [1]}),
        ([[{"n": 2}]], {"outbox": [2], "using": "other"}),
    ]
    assert [args for args, _ in everything] == [[[{"n": 1}]], [[{"n": 2}]], [[{"n": 3}]]]


def test_queue_head_is_none_for_a_broker_it_cannot_look_into():
    other = Celery("amqp-app", broker="amqp://guest@127.0.0.1:1//", set_as_current=False)
    other.set_current()
    try:
        assert publish.queue_head(10) is None
    finally:
        celery_app.set_current()


def test_every_message_carries_its_commit_time_for_the_lag_metric(broker):
    before = time.time()
    publish.send_jobs(JOBS)
    publish.send_jobs(JOBS, countdown=0.01)  # a trailing send: not a commit
    first, delayed = (
        json.loads(raw) for raw in reversed(broker.client.lrange(broker.queue, 0, -1))
    )
    assert before <= first["headers"]["turbo_committed"] <= time.time()
    assert "turbo_committed" not in delayed["headers"]
    assert "traceparent" not in first["headers"]  # no span active here
