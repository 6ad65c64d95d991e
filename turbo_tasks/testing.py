"""Assert what your code broadcasts, in your own tests.

Inside these helpers the jobs your code records are delivered in-process as soon as the
transaction commits (or, in a ``TestCase``, when the block ends): your real ``on_save`` /
``on_delete`` hooks run and real templates render; only the push to the channel layer is
replaced by capturing the frames::

    from turbo_tasks.testing import assert_broadcasts, capture_broadcasts

    def test_post_appends(room):
        with capture_broadcasts() as sent:
            Message.objects.create(room=room, text="hi")
        sent.assert_sent(room, action="append", target="messages", count=1)

    def test_post(room):
        with assert_broadcasts(room, action="append", count=1):
            Message.objects.create(room=room, text="hi")

With pytest the ``turbo_broadcasts`` fixture is ``capture_broadcasts``. Works with
``TestCase`` (which never commits) and ``TransactionTestCase`` / ``transaction=True`` alike.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turbo_tasks.jobs import Job
    from turbo_tasks.rendering import Broadcast
    from turbo_tasks.streams import Stream


def _as_stream(value: Any) -> Stream:
    from turbo_tasks.streams import Stream

    if isinstance(value, Stream):
        return value
    stream = getattr(value, "stream", None)
    if isinstance(stream, Stream):
        return stream
    raise TypeError(f"Expected a stream or a model instance with a ModelStream, not {value!r}")


class CapturedBroadcasts(list["Broadcast"]):
    """The frames sent inside ``capture_broadcasts()``, in order."""

    def on(self, stream: Any) -> list[Broadcast]:
        """The frames sent to ``stream`` (a Stream or a model instance)."""
        group = _as_stream(stream).group_name
        return [b for b in self if b.group == group]

    def assert_sent(
        self,
        stream: Any,
        *,
        action: str | None = None,
        target: str | None = None,
        targets: str | None = None,
        contains: str | None = None,
        count: int | None = None,
    ) -> list[Broadcast]:
        """Assert frames matching all the given filters were sent to ``stream``; with
        ``count``, exactly that many. Returns the matching frames."""
        sent = self.on(stream)
        matching = [
            b
            for b in sent
            if (action is None or b.action == action)
            and (target is None or b.target == target)
            and (targets is None or b.targets == targets)
            and (contains is None or contains in b.html)
        ]
        wanted = f"{count}" if count is not None else "at least one"
        if (count is None and not matching) or (count is not None and len(matching) != count):
            sent_desc = "\n".join(f"  {b.html}" for b in sent) or "  (nothing)"
            filters = {
                k: v
                for k, v in {
                    "action": action,
                    "target": target,
                    "targets": targets,
                    "contains": contains,
                }.items()
                if v is not None
            }
            raise AssertionError(
                f"Expected {wanted} broadcast(s) to {_as_stream(stream)!r} matching {filters}, "
                f"found {len(matching)}. Sent to that stream:\n{sent_desc}"
            )
        return matching

    def assert_nothing_sent(self, stream: Any = None) -> None:
        sent = self if stream is None else self.on(stream)
        if sent:
            raise AssertionError(
                "Expected no broadcasts, found:\n" + "\n".join(f"  {b.html}" for b in sent)
            )


@contextmanager
def capture_broadcasts(using: str | None = None) -> Iterator[CapturedBroadcasts]:
    """Deliver broadcasts in-process and collect their frames instead of pushing them."""
    from django.db import DEFAULT_DB_ALIAS
    from django.test import TestCase

    from turbo_tasks import batching, delivery, publish

    captured = CapturedBroadcasts()
    errors: list[BaseException] = []

    def run(jobs: list[Job], alias: str) -> None:
        # The same JSON round trip a real message makes.
        result = delivery.run_hooks(json.loads(json.dumps(jobs)), alias)
        delivery.render_frames(result.broadcasts, result.errors)  # render now, as a worker would
        captured.extend(result.broadcasts)
        errors.extend(exc for _, exc in result.errors)

    alias = using or DEFAULT_DB_ALIAS
    # A job recorded in this block would otherwise join the transaction's pending batch,
    # whose on_commit callback a fixture's save registered before the block: the capture
    # only runs callbacks registered inside it, and a TestCase never commits. Start a new
    # batch; the old one keeps its own callback and still publishes if the data commits.
    batching.forget_batch(alias)
    token = publish.publisher.set(run)
    try:
        with TestCase.captureOnCommitCallbacks(using=alias, execute=True):
            yield captured
    finally:
        publish.publisher.reset(token)
    if errors:
        raise errors[0]


@contextmanager
def assert_broadcasts(
    stream: Any,
    *,
    action: str | None = None,
    target: str | None = None,
    targets: str | None = None,
    contains: str | None = None,
    count: int | None = None,
) -> Iterator[CapturedBroadcasts]:
    """Assert the block sends matching frames to ``stream`` (see CapturedBroadcasts.assert_sent)."""
    with capture_broadcasts() as captured:
        yield captured
    captured.assert_sent(
        stream, action=action, target=target, targets=targets, contains=contains, count=count
    )


@contextmanager
def assert_no_broadcasts(stream: Any = None) -> Iterator[CapturedBroadcasts]:
    """Assert the block sends nothing (to ``stream``, or at all)."""
    with capture_broadcasts() as captured:
        yield captured
    captured.assert_nothing_sent(stream)


_FRAME = re.compile(r'<turbo-stream action="([^"]*)" (target|targets)="([^"]*)"')


class StreamListener:
    """A member of a stream's Channels group, as a subscribed page is: it receives what
    workers really push. See ``listen()``."""

    def __init__(self, stream: Any) -> None:
        from turbo_tasks import layers

        self.stream = _as_stream(stream)
        self.layer = layers.get_layer()
        self.group = self.stream.group_name
        self.channel = layers.run(self.layer.new_channel())
        layers.run(self.layer.group_add(self.group, self.channel))
        self.frames: list[str] = []  # each message's html, in arrival order

    def wait(
        self,
        *,
        action: str | None = None,
        target: str | None = None,
        contains: str | None = None,
        timeout: float = 30,
    ) -> str:
        """The html of the first message (already received, or arriving within
        ``timeout`` seconds) holding a ``<turbo-stream>`` that matches every filter given;
        AssertionError naming what arrived when none does."""
        import asyncio

        from turbo_tasks import layers

        def matches(html: str) -> bool:
            return (contains is None or contains in html) and any(
                (action is None or found[0] == action) and (target is None or found[2] == target)
                for found in _FRAME.findall(html)
            )

        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for html in self.frames[seen:]:
                if matches(html):
                    return html
            seen = len(self.frames)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = "\n".join(f"  {html}" for html in self.frames) or "  (nothing)"
                raise AssertionError(
                    f"No frame with action={action!r} target={target!r} contains={contains!r} "
                    f"reached {self.stream!r} within {timeout}s. Received:\n{got}"
                )
            try:
                event = layers.run(asyncio.wait_for(self.layer.receive(self.channel), remaining))
            except (asyncio.TimeoutError, TimeoutError):
                continue
            if event.get("type") == "turbo.message" and event.get("group") == self.group:
                self.frames.append(str(event["html"]))

    def close(self) -> None:
        from turbo_tasks import layers

        layers.run(self.layer.group_discard(self.group, self.channel))


@contextmanager
def listen(stream: Any) -> Iterator[StreamListener]:
    """Receive what workers push to ``stream`` (a Stream or a model instance), through the
    real channel layer, for tests with a real Celery worker (pytest-celery's
    ``celery_session_worker``, or a worker process)::

        def test_post_reaches_the_room(room, celery_session_worker):
            with listen(room) as frames:
                Message.objects.create(room=room, text="hi")
                frames.wait(action="append", target="messages", contains="hi")

    Needs ``transaction=True`` (the worker only sees committed rows) and a channel layer
    shared with the worker (channels_redis).
    """
    listener = StreamListener(stream)
    try:
        yield listener
    finally:
        listener.close()


try:
    import pytest
except ImportError:  # Django's test runner without pytest: the fixture is not needed.
    pass
else:

    @pytest.fixture
    def turbo_broadcasts() -> Any:
        """``with turbo_broadcasts() as sent: …`` — see capture_broadcasts()."""
        return capture_broadcasts
