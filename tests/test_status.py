"""``manage.py turbo_tasks_status``: real workers and ASGI servers announce themselves on a
channel-layer Redis of the test's own, and the command, run as a process of its own with
their settings, lists them and names what they disagree on. Then the announcer itself
(a Redis outage, withdrawal, once per process), the comparison rules, and the broker
queue's depth."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import kombu
import pytest
import redis
from celery import Celery
from django.test import override_settings

from tests import rabbitmq
from tests.helpers import (
    ROOT,
    Process,
    WsClient,
    celery_app,
    open_websocket,
    ping,
    start_asgi,
    start_redis,
    start_worker,
    test_env,
    wait_for,
)
from turbo_tasks import presence
from turbo_tasks import status as findings_of
from turbo_tasks.jobs import TASK_NAME

# The command reads the outbox table: make pytest-django create the test database.
pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 60
HOST = socket.gethostname()
CORE = "channels_redis.core.RedisChannelLayer"
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
OTHER_KEY = "another-secret-key-for-the-status-test"
# As a project's manage.py: the project package imports its Celery app (Celery's Django
# guide), here the repository's worker app, so the command finds the broker.
MANAGE = (
    "import sys, worker; "
    "from django.core.management import execute_from_command_line; "
    "execute_from_command_line(sys.argv)"
)


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py turbo_tasks_status`` in a process of its own, with ``env``'s settings."""
    return subprocess.run(
        [sys.executable, "-c", MANAGE, "turbo_tasks_status", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stack_env(channel_url: str, queue: str, **extra: str) -> dict[str, str]:
    """Settings of a stack on its own channel-layer Redis and broadcast queue (the broker
    stays the suite's Redis)."""
    env = test_env()
    env["TURBO_TEST_CHANNEL_REDIS_URL"] = channel_url
    env["TURBO_TEST_TURBO_TASKS"] = json.dumps({"QUEUE": queue})
    env.update(extra)
    return env


def announced(channel_url: str) -> list[dict[str, Any]]:
    return presence.read(redis.Redis.from_url(channel_url), "asgi")


def wait_announced(channel_url: str, pids: set[int]) -> list[dict[str, Any]]:
    """The announcements on ``channel_url``, once they are exactly those of ``pids``."""

    def exactly() -> list[dict[str, Any]] | None:
        found = announced(channel_url)
        return found if {a["pid"] for a in found} == pids else None

    found: list[dict[str, Any]] = wait_for(exactly, TIMEOUT, f"announcements of {sorted(pids)}")
    return found


def start_web(stack: ExitStack, name: str, env: dict[str, str]) -> Process:
    """An ASGI server that has served one websocket, so it announces itself."""
    server, port = start_asgi(name, env)
    stack.callback(server.stop)
    with open_websocket(f"ws://127.0.0.1:{port}/ws/turbo/") as conn:
        WsClient(conn)  # waits for hello: the consumer has accepted
    return server


def web(process: Process) -> str:
    return f"web {HOST}:{process.pid}"


def worker(process: Process, name: str) -> str:
    return f"worker {HOST}:{process.pid} ({name}@{HOST})"


class Stack:
    def __init__(self, env: dict[str, str], url: str, web: Process, worker: Process, name: str):
        self.env, self.url, self.web, self.worker, self.worker_name = env, url, web, worker, name


@pytest.fixture(scope="module")
def healthy(redis_server: str, django_db_setup: None) -> Iterator[Stack]:
    """A web process and a (prefork) worker on the same core layer, both announced."""
    with ExitStack() as stack:
        server, url = start_redis("status-healthy")
        stack.callback(server.stop)
        queue = f"status-{uuid.uuid4().hex[:8]}"
        env = stack_env(url, queue)
        name = f"status-ok-{os.getpid()}"
        process = start_worker(name, queue, env, pool="prefork", concurrency=1)
        stack.callback(process.stop)
        asgi = start_web(stack, "status-healthy-asgi", env)
        wait_announced(url, {process.pid, asgi.pid})
        yield Stack(env, url, asgi, process, name)


@pytest.fixture(scope="module")
def split(redis_server: str, django_db_setup: None) -> Iterator[Stack]:
    """The failure this command was made for: the web process on the core layer, the
    worker on the pub/sub layer (its environment chose another BACKEND), same Redis."""
    with ExitStack() as stack:
        server, url = start_redis("status-split")
        stack.callback(server.stop)
        queue = f"status-{uuid.uuid4().hex[:8]}"
        env = stack_env(url, queue)
        name = f"status-pubsub-{os.getpid()}"
        process = start_worker(
            name, queue, stack_env(url, queue, TURBO_TEST_CHANNEL_LAYER="pubsub")
        )
        stack.callback(process.stop)
        asgi = start_web(stack, "status-split-asgi", env)
        wait_announced(url, {process.pid, asgi.pid})
        yield Stack(env, url, asgi, process, name)


# -- real processes ------------------------------------------------------------------------


def test_healthy_worker_and_web_pass_and_are_listed(healthy):
    result = status(healthy.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{worker(healthy.worker, healthy.worker_name)}: turbo_tasks" in result.stdout
    assert f"{web(healthy.web)}: turbo_tasks" in result.stdout
    assert "OK: no problems found." in result.stdout


def test_web_on_core_and_worker_on_pubsub_fail_naming_the_backends_and_processes(split):
    result = status(split.env)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if "BACKEND differs" in line]
    assert f"{CORE} in {web(split.web)}, this command ({HOST}:" in line
    assert f"{PUBSUB} in {worker(split.worker, split.worker_name)}" in line
    assert line.startswith("  ERROR: ")
    assert "turbo_tasks_status found 1 error(s)" in result.stderr


def test_json_holds_the_same_findings_as_the_text(split):
    text, machine = status(split.env), status(split.env, "--json")
    assert machine.returncode == text.returncode == 1
    report = json.loads(machine.stdout)
    assert report["ok"] is False
    assert {a["pid"] for a in report["processes"]} == {split.web.pid, split.worker.pid}
    [finding] = report["findings"]
    assert (finding["level"], finding["code"], finding["field"]) == ("error", "mismatch", "backend")
    holders = {v["value"]: v["processes"] for v in finding["values"]}
    assert holders[PUBSUB] == [worker(split.worker, split.worker_name)]
    assert holders[CORE][0] == web(split.web)
    # The same finding, but for the pid of the command, another process each time.
    message = re.sub(r"this command \(\S+\)", "this command", finding["message"])
    assert f"ERROR: {message}" in re.sub(r"this command \(\S+\)", "this command", text.stdout)
    assert f"What to do: {finding['advice']}" in text.stdout


def test_another_secret_key_fails_naming_the_fingerprint_never_the_key(healthy):
    with ExitStack() as stack:
        odd = start_web(
            stack, "status-odd-key", {**healthy.env, "TURBO_TEST_SECRET_KEY": OTHER_KEY}
        )
        pids = {healthy.web.pid, healthy.worker.pid, odd.pid}
        values = [json.dumps(a) for a in wait_announced(healthy.url, pids)]
        result, machine = status(healthy.env), status(healthy.env, "--json")
        odd.stop()  # a process that stops cleanly withdraws its announcement
        wait_announced(healthy.url, pids - {odd.pid})
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if "fingerprint" in line]
    assert "The signing key fingerprint (SECRET_KEY + TURBO_TASKS['SIGNING_SALT']) differs" in line
    assert f"in {web(odd)}" in line
    assert f"{web(healthy.web)}" in line
    [finding] = json.loads(machine.stdout)["findings"]
    assert finding["field"] == "signing"
    for shown in [result.stdout, result.stderr, machine.stdout, *values]:
        assert OTHER_KEY not in shown
        assert "test-secret-key-not-for-production" not in shown


def test_no_worker_fails(redis_server, django_db_setup):
    with ExitStack() as stack:
        server, url = start_redis("status-no-worker")
        stack.callback(server.stop)
        env = stack_env(url, f"status-{uuid.uuid4().hex[:8]}")
        asgi = start_web(stack, "status-no-worker-asgi", env)
        wait_announced(url, {asgi.pid})
        result = status(env, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    [finding] = json.loads(result.stdout)["findings"]
    assert (finding["level"], finding["code"]) == ("error", "no_worker")
    assert finding["message"].startswith("No Celery worker announced itself on this channel layer")


def test_queue_depth_counts_waiting_and_unacknowledged_messages(redis_server, django_db_setup):
    queue = f"status-depth-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server)
    with ExitStack() as stack:
        stack.callback(client.delete, queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))
        for priority in (0, 0, 0, 9):
            celery_app.send_task(TASK_NAME, args=[[]], queue=queue, priority=priority)
        assert client.llen(f"{queue}\x06\x169") == 1  # kombu's list for priorities 7-9
        # A consumer takes one and holds it unacknowledged (closing puts it back).
        connection = stack.enter_context(celery_app.connection_for_read())
        channel = connection.channel()
        stack.callback(channel.close)
        taken = kombu.Queue(queue, channel=channel).get(no_ack=False)
        assert taken is not None
        result = status(
            test_env() | {"TURBO_TEST_TURBO_TASKS": json.dumps({"QUEUE": queue})}, "--json"
        )
    depth = json.loads(result.stdout)["queue"]
    assert depth["transport"] == "redis"
    assert (depth["name"], depth["waiting"], depth["unacked"]) == (queue, 3, 1)
    assert 0 <= depth["oldest_unacked_seconds"] < TIMEOUT


def test_queue_depth_on_rabbitmq_comes_from_a_passive_declare(django_db_setup):
    rabbitmq.require()
    queue = f"status-depth-{uuid.uuid4().hex[:8]}"
    node = rabbitmq.Node("status")
    node.start()
    app = Celery("status-rabbitmq", set_as_current=False)
    try:
        app.conf.broker_url = node.url
        for _ in range(2):
            app.send_task(TASK_NAME, args=[[]], queue=queue)
        env = test_env() | {
            "TURBO_TEST_BROKER_URL": node.url,
            "TURBO_TEST_TURBO_TASKS": json.dumps({"QUEUE": queue}),
        }
        result = status(env, "--json")
    finally:
        app.close()
        node.stop()
    depth = json.loads(result.stdout)["queue"]
    assert (depth["transport"], depth["waiting"], depth["consumers"]) == ("amqp", 2, 0)
    assert "unacked" not in depth
    assert depth["note"] == "unacknowledged messages: only on a Redis broker"


# -- the announcer, in this process --------------------------------------------------------


def _layer_settings(url: str) -> dict[str, Any]:
    return {"default": {"BACKEND": CORE, "CONFIG": {"hosts": [{"address": url}]}}}


@pytest.fixture
def private_redis() -> Iterator[tuple[Process, str]]:
    server, url = start_redis("status-private")
    yield server, url
    server.stop()


def _announcer(url: str, role: str = "web") -> presence.Announcer:
    with override_settings(CHANNEL_LAYERS=_layer_settings(url)):
        alias, layer = presence.redis_layer() or ("", None)
        return presence.Announcer(layer, presence.describe(layer, alias, role))


def test_announcer_warns_once_per_outage_and_announces_again(private_redis, caplog, monkeypatch):
    server, url = private_redis
    monkeypatch.setattr(presence, "_PERIOD_SECONDS", 0.1)
    announcer = _announcer(url)
    caplog.set_level(logging.INFO, logger="turbo_tasks.presence")
    announcer.start()
    try:
        wait_for(lambda: announced(url), TIMEOUT, "the announcement")
        server.stop()
        wait_for(lambda: "cannot announce" in caplog.text, TIMEOUT, "the warning")
        tried = announcer.attempts
        wait_for(lambda: announcer.attempts >= tried + 5, TIMEOUT, "five more attempts")
        assert caplog.text.count("cannot announce") == 1
        server.start()  # the same port, empty
        wait_for(lambda: ping(redis.Redis.from_url(url)), TIMEOUT, "redis-server again")
        found = wait_for(lambda: announced(url), TIMEOUT, "the announcement again")
        assert [a["pid"] for a in found] == [os.getpid()]
        assert "announcing this web process again" in caplog.text
    finally:
        announcer.stop()


def test_stopped_announcer_withdraws_its_announcement(private_redis):
    _, url = private_redis
    announcer = _announcer(url)
    announcer.start()
    [found] = wait_for(lambda: announced(url), TIMEOUT, "the announcement")
    assert (found["role"], found["pid"], found["hosts"]) == ("web", os.getpid(), [url])
    announcer.stop()
    assert announced(url) == []
    assert redis.Redis.from_url(url).keys("asgi:turbo_tasks:*") == []


def test_start_makes_one_announcer_per_process_and_role(redis_server):
    role = f"test-{uuid.uuid4().hex[:6]}"
    started: list[presence.Announcer | None] = []

    def start() -> None:
        started.append(presence.start(role))

    threads = [threading.Thread(target=start) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert len(started) == 8
        assert started[0] is not None
        assert all(announcer is started[0] for announcer in started)
        assert presence.start(role) is started[0]
    finally:
        presence.stop(role)
    assert presence.start(role) is not started[0]  # stopped: a new one
    presence.stop(role)


# -- the comparison rules -------------------------------------------------------------------


def about(role: str, pid: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "role": role, "host": "h", "pid": pid, "name": "", "version": "1.0",
        "backend": CORE, "hosts": ["redis://r:6379/0"], "prefix": "asgi", "catch_up": True,
        "history_length": 200, "history_seconds": 600, "queue": "turbo_tasks",
        "publish_mode": "direct", "signing": "abc",
    }  # fmt: skip
    if role == "worker":
        base["consumes"] = ["turbo_tasks"]
    return {**base, **fields}


def codes(findings: list[findings_of.Finding]) -> list[tuple[str, str, str]]:
    return [(f["level"], f["code"], f.get("field", "")) for f in findings]


def test_agreeing_processes_have_no_findings():
    assert findings_of.check([about("worker", 1), about("web", 2)], about("status", 3)) == []


def test_each_disagreement_is_one_finding_naming_values_and_processes():
    web1, web2 = about("web", 2), about("web", 3, backend=PUBSUB, history_length=50)
    findings = findings_of.check([about("worker", 1), web1, web2])
    assert codes(findings) == [
        ("error", "mismatch", "backend"),
        ("warning", "mismatch", "history_length"),
    ]
    assert findings[0]["values"] == [
        {"value": CORE, "processes": ["worker h:1", "web h:2"]},
        {"value": PUBSUB, "processes": ["web h:3"]},
    ]
    assert findings[0]["message"] == (
        f"The channel layer BACKEND differs: {CORE} in worker h:1, web h:2; {PUBSUB} in web h:3."
    )


def test_the_commands_own_settings_take_part():
    own = about("status", 9, hosts=["redis://other:6379/0"])
    [finding] = findings_of.check([about("worker", 1), about("web", 2)], own)
    assert finding["field"] == "hosts"
    assert finding["values"][1] == {
        "value": ["redis://other:6379/0"],
        "processes": ["this command (h:9)"],
    }


def test_no_worker_is_an_error_and_no_web_a_warning():
    assert codes(findings_of.check([about("web", 2)])) == [("error", "no_worker", "")]
    assert codes(findings_of.check([about("worker", 1)])) == [("warning", "no_web", "")]


def test_a_queue_no_worker_consumes_is_an_error():
    worker_ = about("worker", 1, consumes=["celery"])
    [finding] = findings_of.check([worker_, about("web", 2)])
    assert codes([finding]) == [("error", "queue_not_consumed", "")]
    assert "'turbo_tasks'" in finding["message"]
    assert "celery" in finding["message"]


def test_addresses_drop_credentials_and_spell_one_server_one_way():
    assert presence.address({"address": "redis://:s3cret@Redis.Example:6380/2"}) == (
        "redis://redis.example:6380/2"
    )
    assert presence.address({"address": "rediss://user:pw@r"}) == "rediss://r:6379/0"
    assert presence.address({"host": "r", "port": 6379}) == "redis://r:6379/0"
    assert presence.address({"address": "redis://r:6379"}) == "redis://r:6379/0"
    sentinel = {"sentinels": [("s", 26379)], "master_name": "m", "db": 1, "password": "pw"}
    assert presence.address(sentinel) == "sentinel://s:26379/m/1"
