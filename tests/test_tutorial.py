"""The tutorial (docs/intro/tutorial.md), followed step by step with real processes.

docs/intro/mysite is the project the tutorial builds, and every code block of the tutorial
quotes its files. This test copies it to a temporary directory and runs it as a reader does:
a redis-server of its own for ``REDIS_URL``, ``python manage.py migrate``, a room made in
``python manage.py shell``, ``python manage.py runserver`` (daphne's), the room open in two
Chromium pages, a message posted before any worker runs (it waits in Redis), then
``celery -A mysite worker -Q turbo_tasks -l INFO``, and an edit and a delete made in the
shell. Both pages follow without a reload.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from celery import Celery
from playwright.sync_api import Page, expect

from tests.helpers import ROOT, Process, accepts, free_port, start_redis, wait_for

PROJECT = ROOT / "docs" / "intro" / "mysite"
TURBO = PROJECT / "node_modules" / "@hotwired" / "turbo" / "dist" / "turbo.es2017-esm.js"
MISSING_TURBO = (
    f"{TURBO.relative_to(ROOT)} is missing: the tutorial's Turbo comes from npm. Run "
    "`make install`, or `cd docs/intro/mysite && npm install --no-package-lock`."
)
SOURCE = "turbo-channels-stream-source"
TIMEOUT = 60  # seconds; two cores shared with other test runs

# The tutorial's commands and shell sessions (docs/intro/tutorial.md), as it shows them.
CREATE_ROOM = 'from chat.models import Room\nRoom.objects.create(name="lobby")'
EDIT = (
    "from chat.models import Message\n"
    "message = Message.objects.last()\n"
    'message.text = "Edited in the shell"\n'
    "message.save()"
)
DELETE = "from chat.models import Message\nmessage = Message.objects.last()\nmessage.delete()"
WORKER = ("celery", "-A", "mysite", "worker", "-Q", "turbo_tasks", "-l", "INFO")


@dataclass
class Site:
    project: Path
    env: dict[str, str]
    base_url: str
    processes: list[Process] = field(default_factory=list)

    def manage(self, *args: str) -> str:
        """``python manage.py <args>`` in the project, as the reader types it."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (
            f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def shell(self, code: str) -> None:
        self.manage("shell", "-c", code)

    def start_worker(self) -> Process:
        """The tutorial's ``celery -A mysite worker ...``, once it answers a ping."""
        celery = str(Path(sys.executable).with_name("celery"))
        name = f"tutorial-worker-{free_port()}"
        worker = Process(name, [celery, *WORKER[1:]], self.env, cwd=self.project)
        self.processes.append(worker)
        probe = Celery("probe", broker=self.env["REDIS_URL"], set_as_current=False)
        try:
            wait_for(
                lambda: worker.alive() and probe.control.ping(timeout=0.5),
                TIMEOUT,
                "the tutorial's Celery worker to answer a ping",
            )
        except AssertionError:
            raise AssertionError("the worker did not start:\n" + worker.log()) from None
        finally:
            probe.close()
        return worker


def _env(redis_url: str) -> dict[str, str]:
    """The reader's shell: no settings module of ours, only REDIS_URL pointing at our Redis."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "DJANGO_SETTINGS_MODULE" and not k.startswith(("TURBO_TEST_", "PYTEST_"))
    }
    env.update(REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not TURBO.is_file():
        pytest.fail(MISSING_TURBO)  # never a skip: CI would hide a tutorial that broke
    project = tmp_path_factory.mktemp("tutorial") / "mysite"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    redis_server, redis_url = start_redis("tutorial-redis")
    port = free_port()
    running = Site(project, _env(redis_url), f"http://127.0.0.1:{port}", [redis_server])
    try:
        running.manage("check", "--fail-level", "WARNING")
        # The tutorial runs makemigrations: the committed migration must be what it makes.
        running.manage("makemigrations", "--check", "--dry-run")
        running.manage("migrate")
        running.shell(CREATE_ROOM)
        web = Process(
            f"tutorial-web-{port}",
            # The tutorial's `python manage.py runserver`, on a free port, without the
            # autoreloader's second process.
            [sys.executable, "manage.py", "runserver", "--noreload", str(port)],
            running.env,
            cwd=project,
        )
        running.processes.append(web)
        try:
            wait_for(lambda: accepts(port), TIMEOUT, f"runserver on port {port}")
        except AssertionError:
            raise AssertionError("runserver did not start:\n" + web.log()) from None
        yield running
    finally:
        for process in reversed(running.processes):
            process.stop()


class Window:
    """One browser page on the room, recording whatever goes wrong in it."""

    def __init__(self, context, url: str) -> None:  # type: ignore[no-untyped-def]
        self.page: Page = context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"error: {error}"))
        self.page.on("console", self._console)
        # A 404 for turbo.es2017-esm.js or turbo-tasks.js would leave a page that looks
        # fine and never updates.
        self.page.on(
            "response",
            lambda r: r.status >= 400 and self.problems.append(f"{r.status} {r.url}"),
        )
        self.page.goto(url)
        try:
            self.page.wait_for_selector(f"{SOURCE}[connected]", state="attached")
        except Exception as exc:
            raise AssertionError(f"{url} never subscribed: {self.problems}") from exc
        # Gone if the page reloads: live updates must come without one.
        self.page.evaluate("window.__stayed = true")

    def _console(self, message) -> None:  # type: ignore[no-untyped-def]
        url = message.location.get("url", "")
        # The browser asks for /favicon.ico by itself; the tutorial's site has none.
        if message.type == "error" and not url.endswith("/favicon.ico"):
            self.problems.append(f"console: {message.text} ({url})")

    def messages(self):  # type: ignore[no-untyped-def]
        return self.page.locator("#messages > p")

    def stayed(self) -> bool:
        return bool(self.page.evaluate("window.__stayed === true"))


@pytest.mark.browser
def test_tutorial_two_windows_follow_create_edit_delete(site: Site, browser) -> None:  # type: ignore[no-untyped-def]
    expect.set_options(timeout=TIMEOUT * 1000)
    context = browser.new_context(base_url=site.base_url)
    context.set_default_timeout(TIMEOUT * 1000)
    try:
        # Two windows on http://127.0.0.1:8000/chat/lobby/, each subscribed to the room.
        first, second = (Window(context, "/chat/lobby/") for _ in range(2))
        assert first.page.evaluate("typeof window.Turbo") == "object"

        # Post in the first window: it shows the message at once (Turbo followed the
        # redirect and rendered the room again), the second one not yet, because no worker
        # runs: the broadcast waits in Redis.
        first.page.fill("input[name=text]", "Hello, lobby")
        first.page.click("button")
        expect(first.messages()).to_have_text(["Hello, lobby"])
        expect(first.page.locator("input[name=text]")).to_have_value("")
        broker = redis.Redis.from_url(site.env["REDIS_URL"])
        assert broker.llen("turbo_tasks") == 1
        assert second.messages().count() == 0

        # Start the worker: the second window gets the message.
        worker = site.start_worker()
        expect(second.messages()).to_have_text(["Hello, lobby"])
        message_id = second.messages().first.get_attribute("id")
        assert message_id is not None
        assert message_id.startswith("message-")
        expect(first.messages()).to_have_count(1)  # the frame and the render de-duplicate

        # Edit it in the shell: both windows replace it in place.
        site.shell(EDIT)
        for window in (first, second):
            expect(window.page.locator(f"#{message_id}")).to_have_text("Edited in the shell")
            expect(window.messages()).to_have_count(1)

        # Delete it in the shell: both windows remove it.
        site.shell(DELETE)
        for window in (first, second):
            expect(window.messages()).to_have_count(0)

        wait_for(lambda: broker.llen("turbo_tasks") == 0, TIMEOUT, "an empty broadcast queue")
        for window in (first, second):
            assert window.stayed(), "the page reloaded"
            assert window.problems == []
        assert "Traceback" not in worker.log(chars=200_000), worker.log()
    finally:
        context.close()
