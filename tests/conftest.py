"""Real parts for the suite: a redis-server, a Celery worker and an ASGI server, each a
subprocess on a free port, started once per session when a test asks for it."""

from __future__ import annotations

import base64
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings
from websockets.sync.client import ClientConnection, connect

from tests import procs
from tests.procs import accepts, free_port
from worker import (
    app as celery_app,
)  # (the project's Celery app, loaded as a project's __init__ would)

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "artifacts" / "logs"


# --- PostgreSQL (TURBO_TEST_DATABASE=postgres) ------------------------------------------
# tests.settings chose the port when pytest-django read it (before any conftest hook); the
# cluster starts here, before any fixture creates the test databases or starts a worker or
# an ASGI server (they read the port from the environment), and stops when pytest ends.
def pytest_configure(config: pytest.Config) -> None:
    if settings.DATABASE != "postgres":
        return
    from tests import postgres

    names = [db["NAME"] for db in settings.DATABASES.values()]
    cluster = postgres.start(settings.PG_PORT, names)
    config.add_cleanup(cluster.stop)


# -----------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    return procs.wait_for(condition, timeout, what, error=AssertionError)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Process:
    """A subprocess whose output goes to a log file, stopped on teardown."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.args = args
        self.env = env or _env()
        self.log_path = LOG_DIR / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server of our own on the port tests.settings chose."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = settings.REDIS_PORT
    server = Process(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    client = redis.Redis(port=port)
    try:
        wait_for(lambda: _ping(client), 20, f"redis-server on port {port}")
        yield settings.REDIS_URL
    finally:
        server.stop()


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_client(redis_server: str) -> redis.Redis:
    return redis.Redis.from_url(redis_server)


def start_worker(
    name: str, queue: str = "turbo_tasks", env: dict[str, str] | None = None
) -> Process:
    """``celery -A worker worker -Q <queue>`` (solo pool), once it answers a ping."""
    worker = Process(
        name,
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queue, "--pool", "solo",
         "--without-mingle", "--without-gossip", "-l", "info", "-n", f"{name}@%h"],
        env=env,
    )  # fmt: skip
    destination = [f"{name}@{socket.gethostname()}"]
    try:
        wait_for(
            lambda: (
                worker.proc is not None
                and worker.proc.poll() is None
                and celery_app.control.ping(destination=destination, timeout=0.5)
            ),
            60,
            f"worker {name} to answer a ping",
        )
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
         # As the Procfile: shutdown can hang on channels_redis receives (README).
         "--timeout-graceful-shutdown", "5", *extra],
        env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: accepts(port), 30, f"uvicorn {name} on port {port}")
    except AssertionError:
        server.stop()
        raise AssertionError(f"ASGI server {name} did not start:\n" + server.log()) from None
    return server, port


@pytest.fixture(scope="session")
def celery_worker_process(redis_server: str) -> Iterator[Process]:
    """A real worker consuming the broadcast queue: ``celery -A worker worker -Q turbo_tasks``."""
    worker = start_worker(f"test-{os.getpid()}")
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def asgi_server(redis_server: str) -> Iterator[str]:
    """The test ASGI app under uvicorn; yields its ws:// base URL."""
    server, port = start_asgi("asgi", extra=("--ws", "websockets"))
    yield f"ws://127.0.0.1:{port}"
    server.stop()


def open_websocket(
    url: str, origin: str = "http://127.0.0.1", timeout: float = 20
) -> ClientConnection:
    """A sync websocket client outside a ``with`` block (websockets >= 17 asks for
    ``legacy=True`` then; 16, the last for Python 3.10, has no such argument)."""
    extra: dict[str, Any] = {}
    if "legacy" in inspect.signature(connect).parameters:
        extra["legacy"] = True
    return connect(url, origin=origin, open_timeout=timeout, **extra)  # type: ignore[arg-type]


class WsClient:
    """A real websocket client speaking the turbo_tasks protocol."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []

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


@pytest.fixture
def ws_client(asgi_server: str) -> Iterator[Callable[..., WsClient]]:
    with ExitStack() as stack:

        def open_client(origin: str = "http://127.0.0.1") -> WsClient:
            conn = stack.enter_context(
                connect(f"{asgi_server}/ws/turbo/", origin=origin, open_timeout=20)  # type: ignore[arg-type]
            )
            return WsClient(conn)

        yield open_client


class Broker:
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


@pytest.fixture
def broker(redis_client):
    """Publish to a queue of the test's own that no worker consumes, to count messages."""
    queue = f"counted-{uuid.uuid4().hex[:8]}"
    with override_settings(TURBO_TASKS={"QUEUE": queue}):
        yield Broker(redis_client, queue)
    redis_client.delete(queue)
