"""Subscribe permissions: whether a socket's user may receive a stream's frames, asked on
subscribe and again on every recheck (``stream.recheck()``, the periodic refresh)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from django.contrib import auth
from django.contrib.auth.models import AnonymousUser

from turbo_tasks import signing, storm
from turbo_tasks.exceptions import StreamRejected
from turbo_tasks.registry import resolve_ref
from turbo_tasks.signing import StreamRef

if TYPE_CHECKING:
    # channels has no type hints; its database_sync_to_async is a SyncToAsync subclass with
    # the same signature (it only closes old DB connections around the call), so type
    # checkers see asgiref's typed base class instead.
    from asgiref.sync import SyncToAsync as database_sync_to_async
else:
    from channels.db import database_sync_to_async

logger = logging.getLogger(__name__)


async def authorize(ref: StreamRef, scope: Any) -> tuple[str, bool]:
    """Rebuild a verified name's stream, and run its permission check, for the
    socket's user as the database has it now (a re-subscribe sees a demotion or a logout).

    In a thread: a stream's constructor and ``user_passes_test`` are user code that may
    query the database. Any failure to resolve the name is ``unknown_stream`` for that
    stream alone; a crashing check refuses, and neither touches the socket.

    The checks asked for at once on one event loop share one trip through that thread
    (after a server restart every page subscribes at once: 1,000 hops through Channels' one
    database thread, one after the other, were a large part of the reconnect storm). Each
    still runs for its own socket's user (``current_user(scope)``), and each caller gets its
    own answer or its own exception.
    """
    # A caller that goes away (its socket closed) leaves its check to run unanswered.
    batches = storm.per_loop(_batches, lambda: storm.Batches(_check_batch))
    return await batches.ask((ref, scope, contextvars.copy_context()))


# What one check of a batch came to: its answer, or the exception it raised.
_Outcome = tuple[str, bool] | BaseException


# One request: the stream, the socket's scope, and the caller's context variables.
_Request = tuple[StreamRef, Any, contextvars.Context]


def _authorize_one(ref: StreamRef, scope: Any) -> tuple[str, bool]:
    return check(ref, current_user(scope))


@database_sync_to_async
def _authorize_each(requests: list[_Request]) -> list[_Outcome]:
    """``check(ref, current_user(scope))`` for each request, in order, in one trip through
    the database thread, each in (a copy of) its caller's context, as its own
    database_sync_to_async call would have run it; an exception is the outcome of its own
    request only."""
    outcomes: list[_Outcome] = []
    for ref, scope, context in requests:
        try:
            outcomes.append(context.run(_authorize_one, ref, scope))
        except Exception as exc:  # StreamRejected, or e.g. the database down
            outcomes.append(exc)
    return outcomes


async def _check_batch(batch: list[tuple[_Request, asyncio.Future[tuple[str, bool]]]]) -> None:
    """One trip through the database thread for the checks of ``batch``."""
    try:
        outcomes = await _authorize_each([request for request, _ in batch])
    except Exception as exc:  # the hop itself failed: each caller raises it
        storm.fail(batch, exc)
        return
    for (_, answer), outcome in zip(batch, outcomes, strict=True):
        if answer.done():  # cancelled
            continue
        if isinstance(outcome, BaseException):
            answer.set_exception(outcome)
        else:
            answer.set_result(outcome)


_batches: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, storm.Batches[_Request, tuple[str, bool]]
] = weakref.WeakKeyDictionary()


@database_sync_to_async
def authorize_all(names: list[str], scope: Any) -> dict[str, bool]:
    """Whether the socket's user (looked up once) still passes each stream's check; a name
    that no longer resolves does not."""
    user = current_user(scope)
    allowed = {}
    for name in names:
        try:
            allowed[name] = check(signing.unsign(name), user)[1]
        except StreamRejected:  # e.g. expired since (SIGNED_NAME_MAX_AGE)
            allowed[name] = False
    return allowed


def current_user(scope: Any) -> Any:
    """The socket's user as their next request would see it (the scope's user object was
    loaded when the socket connected).

    With a session (channels' AuthMiddlewareStack): the session as stored now, through the
    auth backend, as ``django.contrib.auth.get_user`` does: a logout elsewhere, a password
    change (the session's auth hash), a deleted or (with ModelBackend) deactivated user
    make it anonymous. Without one: the user's row reloaded; deleted or inactive is
    anonymous.
    """
    user: Any = scope.get("user") or AnonymousUser()
    if not getattr(user, "is_authenticated", False):
        return user
    session = scope.get("session")
    key = getattr(session, "session_key", None) if session is not None else None
    if key:
        stored = _StoredSession(session.__class__(key))
        return auth.get_user(SimpleNamespace(session=stored))  # type: ignore[arg-type]
    fresh = user.__class__._default_manager.filter(pk=user.pk).first()
    if fresh is None or not getattr(fresh, "is_active", True):
        return AnonymousUser()
    return fresh


class _StoredSession:
    """A session read from its store, for ``auth.get_user``: read-only (get_user flushes or
    cycles sessions that fail or need rehashing; a websocket check must not write them)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def cycle_key(self) -> None:
        pass


def check(ref: StreamRef, user: Any) -> tuple[str, bool]:
    try:
        stream = resolve_ref(ref)
        group = stream.group_name
    except StreamRejected:
        raise
    except Exception:
        logger.exception("turbo_tasks: a validly signed stream name failed to resolve")
        raise StreamRejected("unknown_stream") from None
    try:
        return group, bool(stream.user_passes_test(user))
    except Exception:
        logger.exception("turbo_tasks: %r.user_passes_test raised; refusing", stream)
        return group, False
