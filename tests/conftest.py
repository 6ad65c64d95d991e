"""Fixtures for the suite: a redis-server, a Celery worker and an ASGI server, each a
subprocess on a free port started once per session when a test asks for it; pytest-celery's
in-process worker; a room. The helpers they use are in tests/helpers.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from tests.helpers import (
    Broker,
    Process,
    WsClient,
    open_websocket,
    start_asgi,
    start_redis,
    start_worker,
)
from tests.testapp.models import Room


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


# --- real processes ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server of our own on the port tests.settings chose (broker and layer)."""
    server, _ = start_redis("redis", settings.REDIS_PORT)
    yield settings.REDIS_URL
    server.stop()


@pytest.fixture
def redis_client(redis_server: str) -> redis.Redis:
    return redis.Redis.from_url(redis_server)


# The processes below use the test database: they depend on django_db_setup, so they start
# after it is created and stop (closing their connections) before it is dropped. PostgreSQL
# refuses to drop a database a worker that reuses its connection is still connected to.


@pytest.fixture(scope="session")
def celery_worker_process(redis_server: str, django_db_setup: None) -> Iterator[Process]:
    """A real worker consuming the broadcast queue: ``celery -A worker worker -Q turbo_tasks``."""
    worker = start_worker(f"test-{os.getpid()}")
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def asgi_server(redis_server: str, django_db_setup: None) -> Iterator[str]:
    """The test ASGI app under uvicorn; yields its ws:// base URL."""
    server, port = start_asgi("asgi")
    yield f"ws://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def ws_client(asgi_server: str) -> Iterator[Callable[..., WsClient]]:
    with ExitStack() as stack:

        def open_client(origin: str = "http://127.0.0.1", cookie: str | None = None) -> WsClient:
            url = f"{asgi_server}/ws/turbo/"
            conn = stack.enter_context(open_websocket(url, origin, cookie=cookie))
            return WsClient(conn)

        yield open_client


@pytest.fixture
def broker(redis_client: redis.Redis) -> Iterator[Broker]:
    """Publish to a queue of the test's own that no worker consumes, to count messages."""
    queue = f"counted-{uuid.uuid4().hex[:8]}"
    with override_settings(TURBO_TASKS={"QUEUE": queue}):
        yield Broker(redis_client, queue)
    redis_client.delete(queue)


# --- pytest-celery's in-process worker (celery_session_worker) -----------------------------

# Celery's Django fixup runs Django's system checks when a worker starts. In the in-process
# worker that happens inside a test's fixture setup, where pytest-django blocks database
# access, and on Django 6 a JSONField's check asks the database: skip them there (the suite
# tests the checks themselves; `manage.py check` runs them).
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")


@pytest.fixture(scope="session")
def celery_config(redis_server: str) -> dict[str, Any]:
    return {
        "broker_url": settings.CELERY_BROKER_URL,
        "broker_transport_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "task_routes": ("turbo_tasks.tasks.route",),
    }


# A queue of its own: with celery_worker_process on "turbo_tasks" too, two workers would
# push one stream's frames out of order, which some tests rely on not happening.
IN_PROCESS_QUEUE = "in-process-worker"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # Celery's default queue too, for the fixture's start-up ping.
    return {"queues": (IN_PROCESS_QUEUE, "celery")}


@pytest.fixture
def in_process_worker(celery_session_worker: Any) -> Iterator[Any]:
    """pytest-celery's in-process worker, with this test's broadcasts routed to it."""
    with override_settings(TURBO_TASKS={"QUEUE": IN_PROCESS_QUEUE}):
        yield celery_session_worker


# --- data ----------------------------------------------------------------------------------


@pytest.fixture
def room(db: None) -> Room:
    return Room.objects.create(name="lobby")


# --- Debian's chromium under Playwright (test_browser.py, test_tutorial.py) -------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-sandbox",
    "--disable-gpu",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
