"""A reconnect storm (every page subscribes at once after a server restart): the permission
checks asked for together share one trip through the database thread, each still for its own
socket's user, with its own answer or exception."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from unittest import mock

import pytest

from turbo_tasks import permissions
from turbo_tasks.exceptions import StreamRejected


def fake_check(ref, user):  # type: ignore[no-untyped-def]
    """group ``g-<ref>``; allowed when the user is ``ok``; ``ref`` "bad" is unknown and
    "crash" fails the way a database error would."""
    if ref == "bad":
        raise StreamRejected("unknown_stream")
    if ref == "crash":
        raise RuntimeError("database down")
    return f"g-{ref}", user == "ok"


@pytest.fixture
def checks():  # type: ignore[no-untyped-def]
    """Patch the check and the user lookup; yield the list of batches the thread ran."""
    batches: list[list[tuple[str, object]]] = []
    real = permissions._authorize_each.func  # type: ignore[attr-defined]

    def recorded(requests):  # type: ignore[no-untyped-def]
        batches.append([(ref, scope) for ref, scope, _ in requests])
        return real(requests)

    with (
        mock.patch.object(permissions, "check", fake_check),
        mock.patch.object(permissions, "current_user", lambda scope: scope["user"]),
        mock.patch.object(permissions._authorize_each, "func", recorded),
    ):
        yield batches


@pytest.mark.asyncio
async def test_checks_asked_together_share_one_trip_with_answers_of_their_own(checks):
    answers = await asyncio.gather(
        permissions.authorize("a", {"user": "ok"}),
        permissions.authorize("b", {"user": "nobody"}),  # its own user: refused
        permissions.authorize("bad", {"user": "ok"}),
        permissions.authorize("crash", {"user": "ok"}),
        permissions.authorize("c", {"user": "ok"}),
        return_exceptions=True,
    )
    assert len(checks) == 1
    assert len(checks[0]) == 5
    assert answers[0] == ("g-a", True)
    assert answers[1] == ("g-b", False)
    assert isinstance(answers[2], StreamRejected)
    assert answers[2].reason == "unknown_stream"
    assert isinstance(answers[3], RuntimeError)
    assert answers[4] == ("g-c", True)


@pytest.mark.asyncio
async def test_checks_asked_while_a_batch_runs_go_in_the_next(checks):
    in_thread, release = threading.Event(), threading.Event()

    def slow_user(scope):  # type: ignore[no-untyped-def]
        if scope.get("slow"):
            in_thread.set()
            release.wait(10)
        return scope["user"]

    with mock.patch.object(permissions, "current_user", slow_user):
        first = asyncio.ensure_future(permissions.authorize("a", {"user": "ok", "slow": True}))
        assert await asyncio.to_thread(in_thread.wait, 10)
        later = [
            asyncio.ensure_future(permissions.authorize(ref, {"user": user}))
            for ref, user in (("b", "ok"), ("c", "nobody"))
        ]
        await asyncio.sleep(0.05)
        assert len(checks) == 1  # b and c wait for the thread
        release.set()
        assert await first == ("g-a", True)
        assert [await task for task in later] == [("g-b", True), ("g-c", False)]
    assert [[ref for ref, _ in batch] for batch in checks] == [["a"], ["b", "c"]]


@pytest.mark.asyncio
async def test_a_caller_that_goes_away_leaves_the_others_their_answers(checks):
    gone = asyncio.ensure_future(permissions.authorize("a", {"user": "ok"}))
    stays = asyncio.ensure_future(permissions.authorize("b", {"user": "ok"}))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == ("g-b", True)
    with pytest.raises(asyncio.CancelledError):
        await gone
    # And the next check after the batch is answered too (a new batch starts).
    assert await permissions.authorize("c", {"user": "ok"}) == ("g-c", True)


TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


@pytest.mark.asyncio
async def test_each_check_runs_with_its_own_callers_context_variables(checks):
    # A check may read context variables an app's middleware set for its socket (a
    # tenant, a trace): in a shared batch it still sees its own caller's.
    seen = {}

    def check_seeing_tenant(ref, user):  # type: ignore[no-untyped-def]
        seen[ref] = TENANT.get()
        return f"g-{ref}", True

    async def socket(ref: str, tenant: str) -> tuple[str, bool]:
        TENANT.set(tenant)
        return await permissions.authorize(ref, {"user": "ok"})

    with mock.patch.object(permissions, "check", check_seeing_tenant):
        await asyncio.gather(socket("a", "t1"), socket("b", "t2"), socket("c", "t3"))
    assert len(checks) == 1
    assert seen == {"a": "t1", "b": "t2", "c": "t3"}
