"""The example chat site end to end: real Chromium pages, uvicorn, a Celery worker, Redis.

Two members and one non-member of the room "general" open it in separate browser contexts;
everything member A does must show up on B's page without a reload, never on C's, and B's
page must reconnect by itself after the ASGI server restarts. Screenshots of B's page after
each step go to artifacts/browser/.

The HTTP tests at the end use the same processes to check the example's views (303 after a
successful form, 422 with errors, 403 for other people's messages).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import redis
from celery import Celery
from playwright.sync_api import expect

from tests.helpers import ROOT, Process, free_port, start_redis, wait_for
from tests.stack import HttpClient, example_env, manage

SCREENSHOTS = ROOT / "artifacts" / "browser"
SOURCE = "turbo-channels-stream-source"
TIMEOUT_MS = 30_000


@dataclass
class Stack:
    base_url: str
    web: Process
    worker: Process
    env: dict[str, str]

    def post_as(self, author: str, room: str, texts: list[str]) -> None:
        """Commit messages from outside the site (one transaction each), as another
        process of the project would: the web server may be down."""
        manage(
            self.env,
            "shell",
            "-c",
            "from example.chat.models import Message, Room\n"
            "from django.contrib.auth.models import User\n"
            f"room = Room.objects.get(name={room!r})\n"
            f"author = User.objects.get(username={author!r})\n"
            f"for text in {texts!r}:\n"
            "    Message.objects.create(room=room, author=author, text=text)\n",
        )

    def wait_for_worker(self) -> None:
        """Until the example's worker has run every broadcast published so far."""
        broker = redis.Redis.from_url(self.env["REDIS_URL"])
        wait_for(
            lambda: broker.llen("turbo_tasks") == 0 and broker.hlen("unacked") == 0,
            60,
            "the worker to run every broadcast",
        )

    def room_url(self, name: str, member: str = "alice") -> str:
        client = HttpClient(self.base_url)
        client.login(member)
        rooms = client.get("/").body
        match = re.search(r'href="(/rooms/\d+/)">' + re.escape(name) + "<", rooms)
        assert match, f"room {name!r} not on the room list"
        return self.base_url + match.group(1)

    def restart_web(self) -> None:
        self.web.stop()
        self.web.start()
        _wait_for_site(self.base_url, self.web)


def _wait_for_site(base_url: str, web: Process) -> None:
    client = HttpClient(base_url)
    try:
        wait_for(lambda: client.answers("/accounts/login/"), 60, "the example site")
    except AssertionError:
        raise AssertionError("example site did not start:\n" + web.log()) from None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _example_stack(tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def pubsub_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The same site on channels_redis' RedisPubSubChannelLayer."""
    backend = "channels_redis.pubsub.RedisPubSubChannelLayer"
    with _example_stack(tmp_path_factory, CHANNEL_LAYER_BACKEND=backend) as running:
        yield running


@contextmanager
def _example_stack(tmp_path_factory: pytest.TempPathFactory, **extra: str) -> Iterator[Stack]:
    redis_server, redis_url = start_redis("example-redis")
    processes = [redis_server]
    try:
        env = example_env(tmp_path_factory.mktemp("example") / "db.sqlite3", redis_url, **extra)
        manage(env, "migrate", "--noinput", "-v", "0")
        manage(env, "seed_demo")
        worker = Process(
            "example-worker",
            [
                *(sys.executable, "-m", "celery", "-A", "worker", "worker"),
                *("-Q", "turbo_tasks", "--pool", "solo", "-l", "info"),
                *("--without-mingle", "--without-gossip", "-n", f"example-{free_port()}@%h"),
            ],
            env,
        )
        processes.append(worker)
        probe = Celery("probe", broker=redis_url, set_as_current=False)
        try:
            wait_for(
                lambda: worker.proc.poll() is None and probe.control.ping(timeout=0.5),
                60,
                "the example's Celery worker",
            )
        except AssertionError:
            raise AssertionError("worker did not start:\n" + worker.log()) from None
        finally:
            probe.close()
        port = free_port()
        web = Process(
            "example-web",
            [
                *(sys.executable, "-m", "uvicorn", "example.asgi:application"),
                *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
                # As in the Procfile: a socket's channel-layer receive can keep a graceful
                # shutdown waiting forever (see docs/howto/example.md).
                *("--timeout-graceful-shutdown", "5"),
            ],
            env,
        )
        processes.append(web)
        base_url = f"http://127.0.0.1:{port}"
        _wait_for_site(base_url, web)
        yield Stack(base_url, web, worker, env)
    finally:
        for process in reversed(processes):
            process.stop()


# -- the browser ------------------------------------------------------------------------


class User:
    """One person in a browser context of their own, with every dialog recorded."""

    def __init__(self, browser, base_url: str, username: str) -> None:  # type: ignore[no-untyped-def]
        self.username = username
        self.context = browser.new_context(
            base_url=base_url, viewport={"width": 900, "height": 700}
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page.on(
            "dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss())
        )
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def log_in(self) -> None:
        self.page.goto("/accounts/login/")
        self.page.fill("#id_username", self.username)
        self.page.fill("#id_password", "turbo-demo")
        self.page.click("button[type=submit]")
        self.page.wait_for_selector("#current-user")
        assert self.page.locator("#current-user").inner_text() == self.username
        assert "/accounts/" not in self.page.url

    def wait_subscribed(self) -> None:
        self.page.wait_for_selector(f"{SOURCE}[connected]", state="attached")

    def post(self, text: str) -> None:
        self.page.fill("#new-message textarea", text)
        self.page.click("#new-message button[type=submit]")
        # Turbo followed the 303 and rendered the room page again, with an empty form.
        expect(self.page.locator("#new-message textarea")).to_have_value("")

    def close(self) -> None:
        self.context.close()


def _screenshot(user: User, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    user.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _message(user: User, text: str):  # type: ignore[no-untyped-def]
    return user.page.locator("#messages > .message").filter(
        has=user.page.locator(".text", has_text=text)
    )


@pytest.mark.browser
def test_live_chat_between_members_and_not_to_others(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    expect.set_options(timeout=TIMEOUT_MS)
    room = stack.room_url("general")
    alice, bob, carol = (User(browser, stack.base_url, name) for name in ("alice", "bob", "carol"))
    try:
        # 1. Both members open the room; the server confirms their subscriptions. Carol (not
        #    a member) opens the same room: her page asks too, and the server refuses.
        for member in (alice, bob):
            member.log_in()
            member.page.goto(room)
            member.wait_subscribed()
        carol.log_in()
        response = carol.page.goto(room)
        assert response is not None
        assert response.status == 403
        carol.page.wait_for_selector(f'{SOURCE}[data-rejected="forbidden"]', state="attached")
        assert carol.page.locator(f"{SOURCE}[connected]").count() == 0
        # A full reload would lose window.__marker; a Turbo visit would replace <body>.
        bob.page.evaluate("window.__marker = 1; document.body.dataset.marker = '1'")
        bob_url = bob.page.url
        seeded = bob.page.locator("#messages > .message").count()
        _screenshot(bob, "01-subscribed")

        def bob_stayed() -> None:
            assert bob.page.evaluate("window.__marker") == 1
            assert bob.page.evaluate("document.body.dataset.marker") == "1"
            assert bob.page.url == bob_url

        def carol_saw_nothing() -> None:
            assert carol.page.locator("#messages > *").count() == 0

        # 2. Alice posts: the message appears on Bob's page, escaped, without a reload.
        text = """<script>alert(1)</script> "double" & 'single' <b>bold</b>"""
        alice.post(text)
        posted = _message(bob, "alert(1)")
        expect(posted).to_have_count(1)
        expect(posted.locator(".text")).to_have_text(text)
        expect(posted.locator(".author")).to_have_text("alice")
        assert bob.page.locator("#messages script, #messages b").count() == 0
        message_id = posted.get_attribute("id")
        assert message_id is not None
        assert re.fullmatch(r"message-\d+", message_id)
        assert bob.page.locator("#messages > .message").count() == seeded + 1
        # Alice's own page shows it once: the redirect's render and the frame de-duplicate.
        expect(alice.page.locator(f"#{message_id}")).to_have_count(1)
        bob_stayed()
        carol_saw_nothing()
        _screenshot(bob, "02-posted")

        # 3. Alice edits it: Bob sees the new text in the same place.
        order = bob.page.eval_on_selector_all("#messages > .message", "els => els.map(e => e.id)")
        alice.page.locator(f"#{message_id} .message-actions a", has_text="Edit").click()
        alice.page.fill("#edit-message textarea", "edited by alice")
        alice.page.click("#edit-message button[type=submit]")
        expect(bob.page.locator(f"#{message_id} .text")).to_have_text("edited by alice")
        assert (
            bob.page.eval_on_selector_all("#messages > .message", "els => els.map(e => e.id)")
            == order
        )
        bob_stayed()
        carol_saw_nothing()
        _screenshot(bob, "03-edited")

        # 4. Alice deletes it: it disappears from Bob's page.
        alice.page.locator(f"#{message_id} .message-actions a", has_text="Delete").click()
        alice.page.click("#delete-message button[type=submit]")
        expect(bob.page.locator(f"#{message_id}")).to_have_count(0)
        assert bob.page.locator("#messages > .message").count() == seeded
        bob_stayed()
        carol_saw_nothing()
        _screenshot(bob, "04-deleted")

        # 5. Carol got none of it, and her page says why.
        assert carol.page.locator(f'{SOURCE}[data-rejected="forbidden"]').count() == 1
        expect(carol.page.locator(".live")).to_be_visible()
        _screenshot(carol, "05-non-member-carol")
        _screenshot(bob, "05-non-member")

        # 6. The ASGI server restarts: Bob's page reconnects by itself and gets what follows.
        stack.web.stop()
        bob.page.wait_for_selector(f"{SOURCE}:not([connected])", state="attached")
        stack.restart_web()
        bob.wait_subscribed()
        alice.wait_subscribed()
        alice.post("after the restart")
        expect(_message(bob, "after the restart")).to_have_count(1)
        bob_stayed()
        carol_saw_nothing()
        _screenshot(bob, "06-reconnected")

        for user in (alice, bob, carol):
            assert user.dialogs == [], f"{user.username} saw a dialog: {user.dialogs}"
            assert user.errors == [], f"{user.username}'s page raised: {user.errors}"
    finally:
        for user in (alice, bob, carol):
            user.close()


# -- catch-up ------------------------------------------------------------------------------


def _member(stack: Stack, browser, name: str, room: str) -> User:  # type: ignore[no-untyped-def]
    user = User(browser, stack.base_url, name)
    user.log_in()
    user.page.goto(room)
    user.wait_subscribed()
    user.page.evaluate("window.__marker = 1")
    return user


def _not_reloaded(user: User) -> None:
    assert user.page.evaluate("window.__marker") == 1, "the page was reloaded"


@pytest.mark.browser
def test_page_shows_what_was_committed_while_the_server_was_down(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    _shows_what_was_committed_while_the_server_was_down(stack, browser, "07-caught-up")


@pytest.mark.browser
def test_pubsub_layer_page_shows_what_was_committed_while_the_server_was_down(  # type: ignore[no-untyped-def]
    pubsub_stack: Stack, browser
) -> None:
    _shows_what_was_committed_while_the_server_was_down(pubsub_stack, browser, "07-pubsub")


def _shows_what_was_committed_while_the_server_was_down(stack: Stack, browser, shot: str) -> None:  # type: ignore[no-untyped-def]
    expect.set_options(timeout=TIMEOUT_MS)
    bob = _member(stack, browser, "bob", stack.room_url("general"))
    try:
        stack.web.stop()
        bob.page.wait_for_selector(f"{SOURCE}:not([connected])", state="attached")
        texts = [f"while down {i}" for i in range(3)]
        stack.post_as("alice", "general", texts)
        stack.web.start()
        # And while it starts again.
        stack.post_as("alice", "general", ["while starting"])
        _wait_for_site(stack.base_url, stack.web)
        stack.post_as("alice", "general", ["once it was back"])
        for text in [*texts, "while starting", "once it was back"]:
            expect(_message(bob, text)).to_have_count(1)
        bob.wait_subscribed()
        _not_reloaded(bob)
        _screenshot(bob, f"{shot}-after-outage")
        assert bob.errors == []
    finally:
        bob.close()


@pytest.mark.browser
def test_page_whose_socket_opens_after_a_commit_shows_it(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    expect.set_options(timeout=TIMEOUT_MS)
    room = stack.room_url("general")
    bob = User(browser, stack.base_url, "bob")
    try:
        bob.log_in()
        held = {"open": False, "refused": 0}

        def hold(ws) -> None:  # type: ignore[no-untyped-def]
            if held["open"]:
                ws.connect_to_server()
            else:
                held["refused"] += 1
                ws.close()

        bob.page.route_web_socket(re.compile(r".*/ws/turbo/$"), hold)
        bob.page.goto(room)
        wait_for(lambda: held["refused"] > 0, 30, "the page to try its socket")
        stack.post_as("alice", "general", ["committed before the socket opened"])
        held["open"] = True
        expect(_message(bob, "committed before the socket opened")).to_have_count(1)
        bob.wait_subscribed()
        assert bob.errors == []
    finally:
        bob.close()


@pytest.mark.browser
def test_page_past_the_history_window_refreshes_itself(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    expect.set_options(timeout=TIMEOUT_MS)
    bob = _member(stack, browser, "bob", stack.room_url("general"))
    try:
        bob.page.evaluate("window.scrollTo(0, 120)")
        scrolled = bob.page.evaluate("window.scrollY")
        resets: list[object] = []
        bob.page.expose_function("__reset", lambda: resets.append(1))
        bob.page.evaluate("document.addEventListener('turbo-tasks:reset', () => window.__reset())")
        stack.web.stop()
        bob.page.wait_for_selector(f"{SOURCE}:not([connected])", state="attached")
        # More separate commits than the history keeps (HISTORY_LENGTH, 200 by default):
        # what Bob missed can no longer be replayed.
        stack.post_as("alice", "general", [f"flood {i}" for i in range(205)])
        stack.wait_for_worker()  # all 205 in the history (which keeps 200) before Bob is back
        stack.restart_web()
        expect(_message(bob, "flood 204")).to_have_count(1)  # the refreshed page has it
        expect(_message(bob, "flood 0")).to_have_count(1)
        bob.wait_subscribed()
        # One per stream past its window: the room's and its activity component's.
        assert len(resets) == 2
        assert bob.page.evaluate("window.scrollY") == scrolled
        _screenshot(bob, "08-refreshed-after-reset")
        assert bob.errors == []
    finally:
        bob.close()


# -- the views over plain HTTP --------------------------------------------------------------


def _room_path(stack: Stack, name: str) -> str:
    return stack.room_url(name).removeprefix(stack.base_url)


def test_posting_redirects_with_303(stack: Stack) -> None:
    client = HttpClient(stack.base_url)
    client.login("bob")
    room = _room_path(stack, "general")
    response = client.post_form(room + "messages/", {"text": "hello over http"}, room)
    assert response.status == 303
    assert response.headers["Location"] == room
    assert "hello over http" in client.get(room).body


def test_invalid_message_is_rerendered_with_422(stack: Stack) -> None:
    client = HttpClient(stack.base_url)
    client.login("bob")
    room = _room_path(stack, "general")
    response = client.post_form(room + "messages/", {"text": "   "}, room)
    assert response.status == 422
    assert "This field is required." in response.body


def test_failed_login_answers_422(stack: Stack) -> None:
    client = HttpClient(stack.base_url)
    response = client.post_form("/accounts/login/", {"username": "bob", "password": "wrong"})
    assert response.status == 422


def test_only_the_author_may_edit_or_delete(stack: Stack) -> None:
    alice, bob = HttpClient(stack.base_url), HttpClient(stack.base_url)
    alice.login("alice")
    bob.login("bob")
    room = _room_path(stack, "general")
    alice.post_form(room + "messages/", {"text": "alice's own words"}, room)
    match = re.search(
        r'<div id="message-(\d+)"[^>]*>(?:(?!<div id="message-).)*alice&#x27;s own words',
        alice.get(room).body,
        re.S,
    )
    assert match
    message = match.group(1)
    assert bob.get(f"/messages/{message}/edit/").status == 403
    assert bob.get(f"/messages/{message}/delete/").status == 403
    token_page = room  # any page of Bob's carries his CSRF token
    edit = bob.post_form(f"/messages/{message}/edit/", {"text": "bob was here"}, token_page)
    assert edit.status == 403
    delete = bob.post_form(f"/messages/{message}/delete/", {}, token_page)
    assert delete.status == 403
    assert "alice&#x27;s own words" in alice.get(room).body
    assert alice.get(f"/messages/{message}/edit/").status == 200


def test_non_members_cannot_post(stack: Stack) -> None:
    carol = HttpClient(stack.base_url)
    carol.login("carol")
    room = _room_path(stack, "general")
    assert carol.get(room).status == 403
    response = carol.post_form(room + "messages/", {"text": "let me in"}, "/")
    assert response.status == 403


def test_room_list_shows_other_rooms_as_not_a_member(stack: Stack) -> None:
    carol = HttpClient(stack.base_url)
    carol.login("carol")
    body = carol.get("/").body
    assert re.search(r"general.*?not a member", body, re.S)


def test_static_files_are_served_by_the_asgi_app(stack: Stack) -> None:
    client = HttpClient(stack.base_url)
    assert client.get("/static/turbo.es2017-esm.js").status == 200
    assert client.get("/static/turbo_tasks/turbo-tasks.js").status == 200


# -- request context: the sender's tab, refreshes --------------------------------------------


def _record_frames(user: User) -> list[dict]:  # type: ignore[type-arg]
    """Every JSON frame the page's websocket receives from now on (before its first goto)."""
    frames: list[dict] = []  # type: ignore[type-arg]
    user.page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda payload: frames.append(json.loads(payload))),
    )
    return frames


@pytest.mark.browser
def test_the_authors_tab_is_spared_its_own_message(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    # The example's MessageStream appends new messages with exclude_sender=True: the element
    # sends its socket id with Turbo's form submission, the middleware records it, and the
    # worker's frame skips that one socket. The author's page shows the message from the
    # redirect's render.
    expect.set_options(timeout=TIMEOUT_MS)
    room = stack.room_url("general")
    alice, bob = User(browser, stack.base_url, "alice"), User(browser, stack.base_url, "bob")
    try:
        seen_by = {"alice": _record_frames(alice), "bob": _record_frames(bob)}
        for member in (alice, bob):
            member.log_in()
            member.page.goto(room)
            member.wait_subscribed()
        alice.post("spared from its author")
        expect(_message(bob, "spared from its author")).to_have_count(1)
        expect(_message(alice, "spared from its author")).to_have_count(1)

        def messages(name: str) -> list[dict]:  # type: ignore[type-arg]
            # The room stream's frames: the activity component has a stream of its own.
            return [
                f
                for f in seen_by[name]
                if f.get("type") == "message" and "roomactivitycomponent" not in f["html"]
            ]

        wait_for(lambda: messages("alice"), 30, "alice's socket to get the spared frame")
        assert [f["html"] for f in messages("alice")] == [""]
        assert "spared from its author" in messages("bob")[0]["html"]
        assert messages("alice")[0]["offset"] == messages("bob")[0]["offset"]
        hellos = [f for f in seen_by["alice"] if f.get("type") == "hello"]
        assert len(hellos) == 1
        assert seen_by["alice"][0] == hellos[0]
        assert alice.errors == []
        assert bob.errors == []
    finally:
        alice.close()
        bob.close()


@pytest.mark.browser
def test_a_renamed_room_refreshes_its_pages_by_morphing(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    # RoomStream has Meta.broadcasts_refreshes: renames committed in a burst become a
    # debounced <turbo-stream action="refresh"> sent after the last one; the page (which opts
    # in to morphing) keeps its elements, its scroll position and its JavaScript state.
    expect.set_options(timeout=TIMEOUT_MS)
    room = stack.room_url("book club", member="bob")
    bob = User(browser, stack.base_url, "bob")
    frames = _record_frames(bob)

    def rename(*names: str) -> None:  # one transaction each
        manage(
            stack.env,
            "shell",
            "-c",
            "from example.chat.models import Room\n"
            f"room = Room.objects.get(name={names[0]!r})\n"
            f"for name in {names[1:]!r}:\n"
            "    room.name = name\n"
            "    room.save()\n",
        )

    def refreshes() -> list[dict]:  # type: ignore[type-arg]
        return [f for f in frames if 'action="refresh"' in f.get("html", "")]

    try:
        bob.log_in()
        bob.page.goto(room)
        bob.wait_subscribed()
        bob.page.set_viewport_size({"width": 900, "height": 240})  # so that it scrolls
        bob.page.evaluate("window.scrollTo(0, 80)")
        scrolled = bob.page.evaluate("window.scrollY")
        assert scrolled > 0
        bob.page.evaluate("window.__marker = 1; document.querySelector('#messages').__kept = 1")
        rename("book club", "club 1", "club 2", "club 3")
        expect(bob.page.locator("h1")).to_have_text("club 3")
        # Three saves within the debounce window: one refresh (two if the loaded machine
        # ran them further apart than REFRESH_DEBOUNCE_SECONDS), not three.
        assert 1 <= len(refreshes()) <= 2, refreshes()
        assert refreshes()[0]["html"] == '<turbo-stream action="refresh"></turbo-stream>'
        assert bob.page.evaluate("window.__marker") == 1, "the page was reloaded"
        assert bob.page.evaluate("document.querySelector('#messages').__kept") == 1, (
            "the refresh replaced #messages instead of morphing it"
        )
        assert bob.page.evaluate("window.scrollY") == scrolled
        bob.wait_subscribed()
        assert bob.errors == []
    finally:
        rename("club 3", "book club")
        expect(bob.page.locator("h1")).to_have_text("book club")
        bob.close()
