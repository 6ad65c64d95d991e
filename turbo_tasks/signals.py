"""The write path: record which row changed, publish one Celery message per commit.

Receivers only build small JSON jobs. Jobs wait in a per-transaction batch and are published
by an ``on_commit`` callback, so nothing leaves the process before the data is committed and
nothing at all leaves for a rolled-back transaction or savepoint.

Savepoints: Django drops the ``on_commit`` callbacks registered inside a savepoint that is
rolled back. Jobs are therefore grouped in *buckets*, one ``on_commit`` callback each, and a
bucket only takes jobs that must live or die with it. At commit the first bucket to run
publishes itself together with every bucket that can no longer be dropped, so a transaction
normally becomes a single message.

Suppression (``turbo.suppress()``) is checked where jobs are recorded: a write or action
inside it records nothing, so nothing is published for it at commit either.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeVar, cast

from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.models.signals import post_delete, post_save

from turbo_tasks import _compat, conf, outbox, publish, request_context
from turbo_tasks.jobs import Job, delete_job, save_job

_BATCH_ATTR = "_turbo_tasks_batch"


class _HasHooks(Protocol):
    snapshot_attnames: ClassVar[tuple[str, ...]]

    @classmethod
    def overrides(cls, hook: str) -> bool: ...


# The models whose stream overrides on_save, and (model -> the attnames its delete snapshots
# hold) those whose stream overrides on_delete: turbo.saved()/deleted() follow the receivers.
save_models: set[type[models.Model]] = set()
snapshot_attnames: dict[type[models.Model], Collection[str]] = {}


def connect_receivers(model_streams: Mapping[type[models.Model], type[_HasHooks]]) -> None:
    """Connect receivers for the models whose stream overrides a hook."""
    for model, stream_class in model_streams.items():
        label = model._meta.label_lower
        if stream_class.overrides("on_save"):
            save_models.add(model)
            post_save.connect(
                _on_post_save, sender=model, weak=False, dispatch_uid=f"turbo_tasks.save.{label}"
            )
        if stream_class.overrides("on_delete"):
            snapshot_attnames[model] = frozenset(stream_class.snapshot_attnames)
            post_delete.connect(
                _on_post_delete,
                sender=model,
                weak=False,
                dispatch_uid=f"turbo_tasks.delete.{label}",
            )


def _on_post_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool = False,
    using: str = DEFAULT_DB_ALIAS,
    **kwargs: Any,
) -> None:
    if raw:  # loaddata: fixtures are not user-visible changes
        return
    enqueue(save_job(instance, created, kwargs.get("update_fields")), using)


def _on_post_delete(
    sender: type[models.Model],
    instance: models.Model,
    using: str = DEFAULT_DB_ALIAS,
    **kwargs: Any,
) -> None:
    if suppressed():  # enqueue would drop the job too; skip taking the snapshot
        return
    enqueue(delete_job(instance, snapshot_attnames[sender]), using)


# -- suppression -------------------------------------------------------------------------

# How many suppress() blocks are open. A ContextVar, so each thread and each asyncio task has
# its own; a task starts with a copy of its creator's (and sync_to_async carries it along).
_suppress_depth: ContextVar[int] = ContextVar("turbo_tasks_suppress_depth", default=0)

_F = TypeVar("_F", bound=Callable[..., Any])


def suppressed() -> bool:
    """Whether the current thread or asyncio task is inside ``turbo.suppress()``."""
    return _suppress_depth.get() > 0


def suppress() -> _Suppress:
    """Record no broadcast for what runs inside, like turbo-rails'
    ``suppressing_turbo_broadcasts``::

        with turbo.suppress():
            message.save()                          # no save job
            room.stream.append(text="hi", id="log")  # no <turbo-stream> frame

        @turbo.suppress()                           # a decorator too, on async def as well
        def import_messages(rows): ...

    Saves and deletes record no job, ``turbo.saved()``/``turbo.deleted()`` record none, and
    stream actions send nothing, whether called in a view or in a hook run by a worker (their
    arguments are still checked). Nestable. Per thread and per asyncio task: other requests
    keep broadcasting. Jobs recorded before the block are still published at commit.
    """
    return _Suppress()


class _Suppress:
    # A depth counter rather than set/reset tokens: one instance may be entered again (by
    # recursion, or from another thread) before it is left.
    def __enter__(self) -> None:
        _suppress_depth.set(_suppress_depth.get() + 1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _suppress_depth.set(_suppress_depth.get() - 1)

    def __call__(self, func: _F) -> _F:
        if inspect.iscoroutinefunction(func):
            # Suppress while the coroutine runs, not just while it is created.
            @functools.wraps(func)
            async def run_suppressed_async(*args: Any, **kwargs: Any) -> Any:
                with _Suppress():
                    return await func(*args, **kwargs)

            return cast(_F, run_suppressed_async)

        @functools.wraps(func)
        def run_suppressed(*args: Any, **kwargs: Any) -> Any:
            with _Suppress():
                return func(*args, **kwargs)

        return cast(_F, run_suppressed)


# -- batching --------------------------------------------------------------------------


class _Batch:
    """The jobs of one transaction on one connection."""

    __slots__ = ("buckets", "using")

    def __init__(self, using: str) -> None:
        self.using = using
        self.buckets: list[_Bucket] = []

    def flush(self, first: _Bucket) -> None:
        conn = connections[self.using]
        if getattr(conn, _BATCH_ATTR, None) is self:
            setattr(conn, _BATCH_ATTR, None)
        # `first` is running, so it survived. Settled buckets had no open savepoint left
        # when last checked, so they will run too: publish them all now, in order.
        # Unsettled ones (a savepoint still open at the last check) publish themselves
        # when, and only if, Django runs them.
        taken = [b for b in self.buckets if not b.done and (b is first or b.settled)]
        jobs: list[Job] = []
        ids: list[int] = []
        for bucket in taken:
            bucket.done = True
            jobs.extend(bucket.jobs)
            ids.extend(bucket.outbox_ids)
        _publish_committed(jobs, ids, self.using)


class _Bucket:
    """Jobs registered under one set of savepoints; one ``on_commit`` callback."""

    def __init__(self, batch: _Batch, sids: frozenset[str]) -> None:
        # Django names the callback by __qualname__ when it logs an error from it.
        self.__qualname__ = "turbo_tasks.signals._Bucket"
        self.batch = batch
        self.sids = sids
        self.jobs: list[Job] = []
        self.outbox_ids: list[int] = []  # outbox mode: the rows written for self.jobs
        self.settled = not sids
        self.done = False

    def add(self, job: Job, durable: bool) -> None:
        self.jobs.append(job)
        if durable:
            self.outbox_ids.append(outbox.record(job, self.batch.using))

    def __call__(self) -> None:
        if not self.done:
            self.batch.flush(self)


def enqueue(job: Job, using: str = DEFAULT_DB_ALIAS) -> None:
    """Publish ``job`` once the current transaction on ``using`` commits (now if none);
    nothing inside ``suppress()``."""
    enqueue_all([job], using)


def enqueue_all(
    jobs: Sequence[Job], using: str = DEFAULT_DB_ALIAS, *, suppressible: bool = True
) -> None:
    """Publish ``jobs`` with the rest of the current transaction on ``using`` (at once, as
    one message, outside a transaction); nothing inside ``suppress()`` unless not
    ``suppressible``. Each job records the request context (turbo_tasks.request_context)."""
    if not jobs or (suppressible and suppressed()):
        return
    request = request_context.capture(for_job=True)
    if request:
        for job in jobs:
            job["request"] = request
    conn = connections[using]
    durable = conf.get("PUBLISH_MODE") == "outbox"
    if not conn.in_atomic_block:
        ids = [outbox.record(job, using) for job in jobs] if durable else []
        _publish_committed(list(jobs), ids, using)
        return
    batch: _Batch | None = getattr(conn, _BATCH_ATTR, None)
    if batch is not None and batch.buckets:
        bucket = batch.buckets[-1]
        # (A separate name: mypy 2 would narrow `bucket` to the callback's type.)
        newest = _compat.last_on_commit_callback(conn) is bucket
        # Fast path: our bucket is the newest callback (so it is alive) and every open
        # savepoint was already open when it was registered (so it dies with them).
        if newest and not bucket.done and all(sid in bucket.sids for sid in conn.savepoint_ids):
            for job in jobs:
                bucket.add(job, durable)
            return
    batch = _refresh(conn, batch, using)
    bucket = _Bucket(batch, frozenset(conn.savepoint_ids))
    for job in jobs:
        bucket.add(job, durable)
    batch.buckets.append(bucket)
    transaction.on_commit(bucket, using=using, robust=True)


def _refresh(conn: Any, batch: _Batch | None, using: str) -> _Batch:
    """Forget buckets Django has dropped and note those that no savepoint can drop."""
    if batch is not None:
        alive = {id(callback) for callback in _compat.on_commit_callbacks(conn)}
        batch.buckets = [b for b in batch.buckets if id(b) in alive and not b.done]
        open_sids = set(conn.savepoint_ids)
        for b in batch.buckets:
            b.settled = b.settled or not (b.sids & open_sids)
    if batch is None or not batch.buckets:
        # First job of this transaction, or the previous one was rolled back.
        batch = _Batch(using)
        setattr(conn, _BATCH_ATTR, batch)
    return batch


def _publish_committed(jobs: list[Job], outbox_ids: list[int], using: str) -> None:
    if outbox_ids:
        outbox.publish_rows(outbox_ids, jobs, using)
    else:
        publish.send_jobs(jobs, using)
