"""Publishing ``turbo_tasks.deliver`` messages.

``send_task`` costs about 0.8 ms per call here, several Redis round trips' worth, and it
runs in the user's commit. With a plain Redis broker we write the same Celery message
ourselves: one ``LPUSH`` of the JSON that kombu's Redis transport would write (task
protocol 2), on a persistent connection pool. Any Celery worker, and Flower, sees an
ordinary task. Everything else (other brokers, SSL, key prefixes, custom serializers, and
projects hooking ``before_task_publish``/``after_task_publish``) goes through
``send_task``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
import weakref
from typing import Any

import redis
from celery import Celery
from celery.signals import after_task_publish, before_task_publish

from turbo_tasks import conf

TASK_NAME = "turbo_tasks.deliver"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED, separators=(",", ":"))


def readable_args(jobs: list[dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Message options that show the arguments whole, as JSON, in Flower: a re-run through
    Flower's API (or ``turbo_tasks_rerun``) needs them complete, and Celery's default repr
    is cut at 1024 characters."""
    return {
        "argsrepr": json.dumps([jobs], separators=(",", ":")),
        "kwargsrepr": json.dumps(kwargs, separators=(",", ":")),
    }


def publish(app: Celery, jobs: list[dict[str, Any]], kwargs: dict[str, Any], queue: str) -> None:
    """Publish one ``turbo_tasks.deliver(jobs, **kwargs)`` message to ``queue``; raises on
    failure after ``PUBLISH_RETRY_POLICY``."""
    policy = conf.get("PUBLISH_RETRY_POLICY")
    fast = _fast_publisher(app) if conf.get("FAST_PUBLISH") else None
    if fast is None:
        app.send_task(
            TASK_NAME,
            (jobs,),
            kwargs,
            queue=queue,
            retry=True,
            retry_policy=policy,
            ignore_result=True,
            **readable_args(jobs, kwargs),
        )
    else:
        fast.publish(jobs, kwargs, queue, policy)


class RedisPublisher:
    """Writes Celery task messages straight to a Redis broker's queue list."""

    def __init__(self, broker_url: str, transport_options: dict[str, Any]) -> None:
        self.client = redis.Redis.from_url(
            broker_url,
            socket_timeout=transport_options.get("socket_timeout"),
            socket_connect_timeout=transport_options.get("socket_connect_timeout"),
        )
        self.origin_json = json.dumps(f"gen{os.getpid()}@{socket.gethostname()}")
        self.reply_to = str(uuid.uuid4())

    def message(self, jobs: list[dict[str, Any]], kwargs: dict[str, Any], queue: str) -> bytes:
        # The JSON kombu would write, assembled from one dump of the jobs: this runs in
        # the user's commit, once per transaction.
        task_id = str(uuid.uuid4())
        jobs_json = json.dumps(jobs, separators=(",", ":"))
        kwargs_json = json.dumps(kwargs, separators=(",", ":"))
        body = f"[[{jobs_json}],{kwargs_json},{_EMBED_JSON}]".encode()
        headers = (
            f'{{"lang":"py","task":"{TASK_NAME}","id":"{task_id}","shadow":null,"eta":null,'
            f'"expires":null,"group":null,"group_index":null,"retries":0,'
            f'"timelimit":[null,null],"root_id":"{task_id}","parent_id":null,'
            f'"argsrepr":{json.dumps(f"[{jobs_json}]")},"kwargsrepr":{json.dumps(kwargs_json)},'
            f'"origin":{self.origin_json},"ignore_result":true,"replaced_task_nesting":0,'
            f'"stamped_headers":null,"stamps":{{}}}}'
        )
        properties = (
            f'{{"correlation_id":"{task_id}","reply_to":"{self.reply_to}","delivery_mode":2,'
            f'"delivery_info":{{"exchange":"","routing_key":{json.dumps(queue)}}},'
            f'"priority":0,"body_encoding":"base64","delivery_tag":"{uuid.uuid4()}"}}'
        )
        return (
            f'{{"body":"{base64.b64encode(body).decode()}","content-encoding":"utf-8",'
            f'"content-type":"application/json","headers":{headers},'
            f'"properties":{properties}}}'
        ).encode()

    def publish(
        self,
        jobs: list[dict[str, Any]],
        kwargs: dict[str, Any],
        queue: str,
        policy: dict[str, Any],
    ) -> None:
        message = self.message(jobs, kwargs, queue)
        delay = float(policy.get("interval_start", 0))
        for attempt in range(int(policy.get("max_retries", 3)) + 1):
            try:
                self.client.lpush(queue, message)
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == int(policy.get("max_retries", 3)):
                    raise
            time.sleep(delay)
            delay = min(
                delay + float(policy.get("interval_step", 0.2)),
                float(policy.get("interval_max", 1)),
            )


_publishers: weakref.WeakKeyDictionary[Celery, RedisPublisher | None] = weakref.WeakKeyDictionary()


def _fast_publisher(app: Celery) -> RedisPublisher | None:
    try:
        publisher = _publishers[app]
    except KeyError:
        publisher = _publishers[app] = _make_publisher(app)
    # A project may connect publish hooks (tracing, auditing) at any time: honour them.
    if before_task_publish.receivers or after_task_publish.receivers:
        return None
    return publisher


def _make_publisher(app: Celery) -> RedisPublisher | None:
    url, options = app.conf.broker_url, dict(app.conf.broker_transport_options or {})
    if (
        not isinstance(url, str)
        or not url.startswith("redis://")
        or ";" in url  # failover list
        or app.conf.broker_use_ssl
        or app.conf.task_serializer != "json"
        or app.conf.task_compression
        or int(app.conf.task_protocol) != 2
        or options.get("global_keyprefix")
        or options.get("sep")
    ):
        return None
    return RedisPublisher(url, options)
