"""The per-transaction batch: jobs wait for their commit, then go as one Celery message.

Jobs are published by an ``on_commit`` callback, so nothing leaves the process before the
data is committed and nothing at all leaves for a rolled-back transaction or savepoint.

Savepoints: Django drops the ``on_commit`` callbacks registered inside a savepoint that is
rolled back. Jobs are therefore grouped in *buckets*, one ``on_commit`` callback each, and a
bucket only takes jobs that must live or die with it. At commit the first bucket to run
publishes itself together with every bucket that can no longer be dropped, so a transaction
normally becomes a single message.

Outside a transaction (autocommit) jobs are published at once. In outbox mode
(``PUBLISH_MODE = "outbox"``) each job is also written to the outbox table in the same
transaction (turbo_tasks.outbox).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from turbo_tasks import _compat, conf, outbox, publish, request_context
from turbo_tasks.jobs import Job
from turbo_tasks.suppression import suppressed

# The connection attribute holding the open transaction's batch.
_BATCH_ATTR = "_turbo_tasks_batch"


def forget_batch(using: str) -> None:
    """Start a new batch for the next job on ``using`` (turbo_tasks.testing): the current one
    keeps its ``on_commit`` callback and still publishes if its transaction commits."""
    setattr(connections[using], _BATCH_ATTR, None)


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
        self.__qualname__ = "turbo_tasks.batching._Bucket"
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
