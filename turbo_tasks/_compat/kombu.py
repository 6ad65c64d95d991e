"""kombu's Redis transport: the bytes it ``LPUSH``es for a Celery task message (task
protocol 2, JSON serializer), which turbo_tasks.publish writes itself on the fast path.
Pinned by tests/test_publish.py, which compares it with what ``send_task`` writes."""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

_EMBED_JSON = json.dumps(
    {"callbacks": None, "errbacks": None, "chain": None, "chord": None}, separators=(",", ":")
)


class TaskMessageLayout:
    """The message of one task, with the parts that do not change between publishes built
    once per queue."""

    def __init__(self, task_name: str) -> None:
        self._task_name = task_name
        self._origin_json = json.dumps(f"gen{os.getpid()}@{socket.gethostname()}")
        self._reply_to = str(uuid.uuid4())
        self._templates: dict[str, tuple[str, str, bytes]] = {}

    def _template(self, queue: str) -> tuple[str, str, bytes]:
        try:
            return self._templates[queue]
        except KeyError:
            pass
        # The JSON kombu writes, in kombu's key order, split around the values that change:
        # the task id, the body and argsrepr/kwargsrepr.
        headers_head = (
            f'"content-encoding":"utf-8","content-type":"application/json",'
            f'"headers":{{"lang":"py","task":{json.dumps(self._task_name)},"id":"'
        )
        headers_tail = (
            f'"origin":{self._origin_json},"ignore_result":true,"replaced_task_nesting":0,'
            f'"stamped_headers":null,"stamps":{{}}'
        )
        properties_tail = (
            f'"reply_to":"{self._reply_to}","delivery_mode":2,'
            f'"delivery_info":{{"exchange":"","routing_key":{json.dumps(queue)}}},'
            f'"priority":0,"body_encoding":"base64","delivery_tag":"'
        ).encode()
        template = self._templates[queue] = (headers_head, headers_tail, properties_tail)
        return template

    def encode(
        self, queue: str, args_json: str, shown_json: str, kwargs_json: str, headers: str = ""
    ) -> bytes:
        """The message for ``task(<args_json>, **<kwargs_json>)`` on ``queue``: one
        positional argument, given as JSON; Flower shows ``shown_json`` for it. ``headers``:
        custom headers, as the members of a JSON object (``"a":1,"b":"x"``), where
        ``send_task(headers=...)`` puts them: after Celery's own."""
        headers_head, headers_tail, properties_tail = self._template(queue)
        task_id = str(uuid.uuid4())
        body = base64.b64encode(f"[[{args_json}],{kwargs_json},{_EMBED_JSON}]".encode())
        return b"".join(
            (
                b'{"body":"',
                body,
                b'",',
                (
                    f'{headers_head}{task_id}","shadow":null,"eta":null,"expires":null,'
                    f'"group":null,"group_index":null,"retries":0,"timelimit":[null,null],'
                    f'"root_id":"{task_id}","parent_id":null,'
                    f'"argsrepr":{json.dumps(f"[{shown_json}]")},'
                    f'"kwargsrepr":{json.dumps(kwargs_json)},{headers_tail}'
                    f'{"," + headers if headers else ""}}},"properties":{{"correlation_id":"'
                    f'{task_id}",'
                ).encode(),
                properties_tail,
                task_id.encode(),  # delivery_tag: unique per message, like kombu's uuid
                b'"}}',
            )
        )


def oldest_redis_messages(client: Any, key: str, count: int) -> list[tuple[Any, Any]]:
    """The ``count`` oldest task messages waiting in the kombu Redis queue ``key``, oldest
    first, as ``(args, kwargs)``. kombu ``LPUSH``es and ``BRPOP``s, so the oldest are at the
    list's right end. A message that does not decode as a JSON task is left out."""
    found = []
    for raw in reversed(client.lrange(key, -count, -1)):
        try:
            message = json.loads(raw)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, kwargs, _ = json.loads(body)
        except (ValueError, KeyError, TypeError):
            continue
        found.append((args, kwargs))
    return found


def redis_queue_size(channel: Any, queue: str) -> int:
    """How many messages wait in ``queue``, every priority's list counted (kombu's Redis
    ``Channel._size``)."""
    return int(channel._size(queue))


def redis_unacked(channel: Any, queue: str, limit: int) -> tuple[list[float], bool]:
    """When each message of ``queue`` that a worker took and has not acknowledged was
    delivered (Unix time), of the ``limit`` oldest unacknowledged messages of the broker,
    and whether ``limit`` cut the list. kombu keeps them in its ``unacked`` hash (delivery
    tag -> ``[message, exchange, routing key]``) and the ``unacked_index`` sorted set
    (delivery tag, scored by delivery time); ``conn_or_acquire`` honours
    ``global_keyprefix``."""
    with channel.conn_or_acquire() as client:
        entries = client.zrange(channel.unacked_index_key, 0, limit - 1, withscores=True)
        pipe = client.pipeline()
        for tag, _ in entries:
            pipe.hget(channel.unacked_key, tag)
        payloads = pipe.execute() if entries else []
    delivered = []
    for (_, score), payload in zip(entries, payloads, strict=True):
        try:
            _, _, routing_key = json.loads(payload)
        except (TypeError, ValueError):
            continue
        if routing_key == queue:
            delivered.append(float(score))
    return delivered, len(entries) >= limit
