"""Helpers for the suite's tests: real processes (redis-server, Celery workers, uvicorn),
a websocket client that speaks the turbo_tasks protocol, and a broker queue reader.
Fixtures that use them are in tests/conftest.py; tests import from here."""

from __future__ import annotations

import base64
import inspect
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from websockets.sync.client import ClientConnection, connect

from scripts import procs
from scripts.procs import LOG_DIR, ROOT, Process, accepts, free_port
from worker import app as celery_app  # the project's Celery app, loaded as a project would

__all__ = [
    "LOG_DIR",
    "ROOT",
    "Broker",
    "Process",
    "WsClient",
    "accepts",
    "celery_app",
    "free_port",
    "open_websocket",
    "ping",
    "start_asgi",
    "start_redis",
    "start_worker",
    "test_env",
    "wait_for",
]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    return procs.wait_for(condition, timeout, what, error=AssertionError)


def test_env() -> dict[str, str]:
    """The environment of a worker or ASGI server running the test project."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


test_env.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def start_redis(name: str, port: int | None = None) -> tuple[Process, str]:
    """A redis-server of our own (no persistence) on ``port`` or a free one, once it
    answers; returns it and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise AssertionError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    server = Process(
        f"{name}-{port}",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    try:
        wait_for(lambda: ping(redis.Redis(port=port)), 20, f"redis-server {name} on {port}")
    except AssertionError:
        server.stop()
        raise
    return server, f"redis://127.0.0.1:{port}/0"


def start_worker(
    name: str,
    queue: str = "turbo_tasks",
    env: dict[str, str] | None = None,
    pool: str = "solo",
    concurrency: int | None = None,
    app: Any = None,
) -> Process:
    """``celery -A worker worker -Q <queue> -P <pool>``, once it answers a ping sent
    through ``app`` (default: the project's app, whose broker is the suite's Redis)."""
    worker = Process(
        name,
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queue, "--pool", pool,
         *(("-c", str(concurrency)) if concurrency else ()),
         "--without-mingle", "--without-gossip", "-l", "info", "-n", f"{name}@%h"],
        env or test_env(),
    )  # fmt: skip
    destination = [f"{name}@{socket.gethostname()}"]
    pinger = app or celery_app

    def answers() -> bool:
        try:
            return worker.alive() and bool(
                pinger.control.ping(destination=destination, timeout=0.5)
            )
        except redis.ConnectionError:  # a pooled connection another test's fault killed
            return False

    try:
        wait_for(answers, 60, f"worker {name} to answer a ping")
    except AssertionError:
        worker.stop()
        raise AssertionError(f"worker {name} did not start:\n" + worker.log()) from None
    return worker


def start_asgi(
    name: str, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> tuple[Process, int]:
    """The test ASGI app under uvicorn on a free port, once it accepts connections."""
    port = free_port()
    server = Process(
        name,
        [sys.executable, "-m", "uvicorn", "tests.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning",
         # As the Procfile: shutdown can hang on channels_redis receives (docs/howto/operations.md).
         "--timeout-graceful-shutdown", "5", *extra],
        env or test_env(),
    )  # fmt: skip
    try:
        wait_for(lambda: accepts(port), 30, f"uvicorn {name} on port {port}")
    except AssertionError:
        server.stop()
        raise AssertionError(f"ASGI server {name} did not start:\n" + server.log()) from None
    return server, port


def open_websocket(
    url: str, origin: str = "http://127.0.0.1", timeout: float = 20, cookie: str | None = None
) -> ClientConnection:
    """A sync websocket client outside a ``with`` block (websockets >= 17 asks for
    ``legacy=True`` then; 16, the last for Python 3.10, has no such argument)."""
    extra: dict[str, Any] = {}
    if "legacy" in inspect.signature(connect).parameters:
        extra["legacy"] = True
    if cookie is not None:
        extra["additional_headers"] = {"Cookie": cookie}
    return connect(url, origin=origin, open_timeout=timeout, **extra)  # type: ignore[arg-type]


class WsClient:
    """A real websocket client speaking the turbo_tasks protocol."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        # The server's first frame on every connection; kept out of ``frames``.
        self.hello = json.loads(conn.recv(timeout=30))
        assert self.hello["type"] == "hello", self.hello
        self.socket_id: str = self.hello["socket_id"]

    def send(self, frame: Any) -> None:
        self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    def next(self, timeout: float = 30) -> dict[str, Any]:
        frame = json.loads(self.conn.recv(timeout=timeout))
        self.frames.append(frame)
        return frame

    def subscribe(
        self, signed_name: str, timeout: float = 30, since: str | None = None
    ) -> dict[str, Any]:
        """Subscribe; return the answer (``subscribed`` or ``rejected``). Frames replayed
        before it stay in ``frames``."""
        frame: dict[str, Any] = {"type": "subscribe", "stream": signed_name}
        if since is not None:
            frame["since"] = since
        self.send(frame)
        return self.wait(
            lambda f: f.get("stream") == signed_name and f["type"] in ("subscribed", "rejected"),
            timeout,
        )

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching frame within {timeout}s; got {self.frames}")
            try:
                frame = self.next(timeout=remaining)
            except TimeoutError:
                continue
            if predicate(frame):
                return frame

    def messages(self, timeout: float = 30) -> str:
        """The html of the next ``message`` frame."""
        return str(self.wait(lambda f: f["type"] == "message", timeout)["html"])


class Broker:
    """Reads the task messages published to one queue."""

    def __init__(self, client: Any, queue: str) -> None:
        self.client = client
        self.queue = queue

    def messages(self) -> list[dict[str, Any]]:
        """The published task messages, oldest first, as {"task", "jobs", "kwargs"}."""
        decoded = []
        for raw in reversed(self.client.lrange(self.queue, 0, -1)):
            message = json.loads(raw)
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            decoded.append({"task": message["headers"]["task"], "jobs": args[0], "kwargs": kwargs})
        return decoded

    def jobs(self) -> list[dict[str, Any]]:
        return [job for message in self.messages() for job in message["jobs"]]
