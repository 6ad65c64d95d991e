"""Durable publishing: the transactional outbox and its relay.

In ``TURBO_TASKS["PUBLISH_MODE"] = "outbox"`` every job is also written to
``turbo_tasks_outboxjob`` in the transaction of the change it describes, so it commits or
rolls back with it. After the commit the committing process publishes the jobs at once,
naming their rows in the message; the worker deletes the rows once it has pushed the
frames (``confirm``). Rows left behind (the broker was down, the process died, the message
was lost in the broker or its worker killed) are published again by a relay once their
claim (``OUTBOX_CLAIM_SECONDS``) expires. Publishers *claim* rows before publishing them,
so several relays, and a relay racing the committing process, never publish a row twice
while its claim holds. At least once, end to end: a duplicate is harmless (Turbo actions
are idempotent by element id) and gets a new offset.

Queued is not lost: when workers fall behind, a message may wait in the broker's queue
longer than its claim. On a Redis broker the relay looks at the queue's oldest messages
(``publish.queue_head``): a queue is first in, first out, so every row published since the
oldest message still waiting may be waiting too, and the relay extends those rows' claims
instead of publishing them again. A row published before it has left the queue: if no
worker confirms it within a claim, it was lost, and the relay publishes it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections, router, transaction
from django.db.models import Min, Q, QuerySet
from django.utils import timezone

from turbo_tasks import conf, publish
from turbo_tasks.jobs import Job

logger = logging.getLogger(__name__)

# Sends jobs (naming their outbox rows), returns how many of them (a prefix) were sent:
# publish.send_jobs.
Sender = Callable[[Sequence[Job], str, Sequence[int]], int]

# How many of the queue's oldest messages the relay reads to find the oldest of its rows.
HEAD_MESSAGES = 10
# How far the clocks of two publishing processes may disagree.
CLOCK_SLACK = timedelta(seconds=2)


def record(job: Job, using: str) -> int:
    """Write ``job`` in the current transaction; return its row id."""
    from turbo_tasks.models import OutboxJob

    return int(OutboxJob._base_manager.using(using).create(job=job).pk)


def publish_rows(ids: list[int], jobs: list[Job], using: str, send: Sender | None = None) -> None:
    """After commit: claim these rows, publish their jobs, delete what was published."""
    from turbo_tasks.models import OutboxJob

    rows = OutboxJob._base_manager.using(using)
    token = uuid.uuid4()
    now = timezone.now()
    until = now + timedelta(seconds=conf.get("OUTBOX_CLAIM_SECONDS"))
    claimed = rows.filter(pk__in=ids, claim__isnull=True).update(
        claim=token, claimed_until=until, published_at=now
    )
    pairs: list[tuple[int, Any]] = list(zip(ids, jobs, strict=True))
    if claimed != len(ids):
        # A relay got there first (we were slow); publish only what is ours.
        pairs = list(rows.filter(claim=token).order_by("pk").values_list("pk", "job"))
    _send_claimed(rows, token, pairs, using, send or publish.send_jobs)


def _send_claimed(
    rows: QuerySet[Any], token: uuid.UUID, pairs: list[tuple[int, Any]], using: str, send: Sender
) -> int:
    """Send the claimed ``(row id, job)`` pairs. The rows whose jobs went out stay claimed
    until their worker confirms them (or the claim expires and a relay sends them again);
    the others are released to the relay at once."""
    ids = [pk for pk, _ in pairs]
    sent = send([job for _, job in pairs], using, ids)
    if sent < len(pairs):
        rows.filter(claim=token, pk__in=ids[sent:]).update(claim=None, claimed_until=None)
    return sent


def confirm(ids: Sequence[int] | None, using: str) -> None:
    """The worker pushed the frames of these rows' jobs: delete the rows. Never raises (a
    row left behind is only published again)."""
    if not ids:
        return
    from turbo_tasks.models import OutboxJob

    try:
        OutboxJob._base_manager.using(using).filter(pk__in=list(ids)).delete()
    except Exception:
        logger.exception(
            "turbo_tasks could not confirm outbox rows %s on %r; a relay will publish them "
            "again after OUTBOX_CLAIM_SECONDS",
            list(ids),
            using,
        )


# A worker confirms in batches: one DELETE per database every CONFIRM_INTERVAL seconds, from
# a thread, rather than one write transaction (one fsync) per task. A confirmation lost with
# its process only means the row is published again after its claim.
CONFIRM_INTERVAL = 0.2


class _Confirmations:
    """The rows this process has delivered and not yet deleted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # flush() returns once what was pending is gone
        self._pending: dict[str, list[int]] = {}
        self._pid: int | None = None

    def add(self, ids: Sequence[int], using: str) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: a thread of its own
                self._pid, self._pending = os.getpid(), {}
                threading.Thread(target=self._run, name="turbo_tasks-confirm", daemon=True).start()
            self._pending.setdefault(using, []).extend(ids)

    def _run(self) -> None:
        while True:  # a daemon thread: it lives as long as its process
            time.sleep(CONFIRM_INTERVAL)
            self.flush()

    def flush(self) -> None:
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, {}
            for using, ids in pending.items():
                confirm(ids, using)
            if pending:
                close_old_connections()


_confirmations = _Confirmations()


def confirm_soon(ids: Sequence[int] | None, using: str) -> None:
    """``confirm`` these rows within ``CONFIRM_INTERVAL`` seconds, batched with the other
    tasks' (what the worker calls)."""
    if ids:
        _confirmations.add(ids, using)


def flush_confirmations() -> None:
    """Delete the rows confirmed so far now (a worker process that is stopping)."""
    _confirmations.flush()


def relay_once(using: str = DEFAULT_DB_ALIAS, send: Sender | None = None) -> int:
    """Publish outbox rows older than ``OUTBOX_RELAY_AGE`` seconds (or whose claim
    expired), in one message per ``MAX_JOBS_PER_MESSAGE``; return how many were published."""
    from turbo_tasks.models import OutboxJob

    send = send or publish.send_jobs
    rows = OutboxJob._base_manager.using(using)
    now = timezone.now()
    size = conf.get("MAX_JOBS_PER_MESSAGE")
    held = hold_queued(rows, using, now)
    if held:
        logger.debug("turbo_tasks relay: %d outbox row(s) on %r still queued", held, using)
    published = 0
    while True:
        token = uuid.uuid4()
        if not _claim(rows, token, now, size, using):
            return published
        claimed = list(rows.filter(claim=token).order_by("pk").values_list("pk", "job"))
        if not claimed:
            continue
        sent = _send_claimed(rows, token, claimed, using, send)
        published += sent
        if sent:
            logger.info("turbo_tasks relay published %d outbox job(s) from %r", sent, using)
        if sent < len(claimed):
            return published


def hold_queued(rows: QuerySet[Any], using: str, now: datetime) -> int:
    """Extend the claims, about to run out, of rows whose message may still be waiting in
    the broker's queue: those published since the oldest message of ``using``'s rows that
    is still there (all published rows when none of the oldest names rows that still exist).
    Nothing when the queue is empty or cannot be looked into. Returns how many."""
    head = publish.queue_head(HEAD_MESSAGES)
    if not head:
        return 0
    claim = timedelta(seconds=conf.get("OUTBOX_CLAIM_SECONDS"))
    queued = rows.filter(published_at__isnull=False, claimed_until__lt=now + claim / 2)
    oldest = _oldest_published(rows, head, using)
    if oldest is not None:
        queued = queued.filter(published_at__gte=oldest - CLOCK_SLACK)
    return queued.update(claimed_until=now + claim)


def _oldest_published(rows: QuerySet[Any], head: list[tuple[Any, Any]], using: str) -> Any:
    """When the oldest of these waiting messages that names rows of ``using`` was
    published; None if none does."""
    for _, kwargs in head:
        if not isinstance(kwargs, dict) or kwargs.get("using", DEFAULT_DB_ALIAS) != using:
            continue
        ids = kwargs.get("outbox")
        ids = [pk for pk in ids if type(pk) is int] if isinstance(ids, list) else []
        if ids:
            found = rows.filter(pk__in=ids).aggregate(at=Min("published_at"))["at"]
            if found is not None:
                return found
    return None


def _claim(rows: QuerySet[Any], token: uuid.UUID, now: datetime, size: int, using: str) -> bool:
    """Claim up to ``size`` free rows old enough for the relay with ``token``; return
    whether there were any candidates."""
    free = Q(claim__isnull=True) | Q(claimed_until__lt=now)
    old = now - timedelta(seconds=conf.get("OUTBOX_RELAY_AGE"))
    candidates = rows.filter(free, created_at__lte=old).order_by("pk")
    claimed_at = timezone.now()
    until = claimed_at + timedelta(seconds=conf.get("OUTBOX_CLAIM_SECONDS"))
    if connections[using].features.has_select_for_update_skip_locked:
        # PostgreSQL, MySQL 8, Oracle: lock the candidates, skipping rows another relay
        # has locked, so concurrent relays take disjoint batches instead of queueing on
        # each other's row locks.
        with transaction.atomic(using=using):
            ids = list(
                candidates.select_for_update(skip_locked=True).values_list("pk", flat=True)[:size]
            )
            if ids:
                rows.filter(pk__in=ids).update(
                    claim=token, claimed_until=until, published_at=claimed_at
                )
        return bool(ids)
    # Elsewhere (SQLite) the claim is a conditional UPDATE that repeats the "free"
    # condition: of two relays updating the same rows, the second sees the first one's
    # claim and takes nothing.
    ids = list(candidates.values_list("pk", flat=True)[:size])
    if ids:
        rows.filter(free, pk__in=ids).update(
            claim=token, claimed_until=until, published_at=claimed_at
        )
    return bool(ids)


def relay_databases() -> list[str]:
    """The databases the relay sweeps: ``TURBO_TASKS["OUTBOX_DATABASES"]``, by default the
    one the database router picks for writing outbox rows; only those that have the
    outbox table (a replica, or a database the table was never migrated to, is skipped)."""
    from turbo_tasks.models import OutboxJob

    configured = conf.get("OUTBOX_DATABASES")
    aliases = [router.db_for_write(OutboxJob)] if configured is None else list(configured)
    return [alias for alias in aliases if _has_outbox_table(alias)]


_tables_seen: set[str] = set()


def _has_outbox_table(alias: str) -> bool:
    from turbo_tasks.models import OutboxJob

    if alias in _tables_seen:
        return True
    if not router.allow_migrate_model(alias, OutboxJob):
        return False
    try:
        with connections[alias].cursor() as cursor:
            tables = connections[alias].introspection.table_names(cursor)
    except Exception:
        logger.warning("turbo_tasks relay: cannot list the tables of %r", alias, exc_info=True)
        return False
    if OutboxJob._meta.db_table not in tables:
        logger.warning(
            "turbo_tasks relay: database %r has no %s table (run migrate); skipping it",
            alias,
            OutboxJob._meta.db_table,
        )
        return False
    _tables_seen.add(alias)
    return True


def run_relay(stop: threading.Event, databases: list[str] | None = None) -> None:
    """Relay until ``stop`` is set, every ``OUTBOX_RELAY_INTERVAL`` seconds."""
    while not stop.is_set():
        try:
            aliases = databases or relay_databases()
        except Exception:
            logger.exception("turbo_tasks outbox relay could not pick its databases")
            aliases = []
        for alias in aliases:
            try:
                relay_once(alias)
            except Exception:
                logger.exception("turbo_tasks outbox relay failed on %r; will retry", alias)
            finally:
                close_old_connections()
        stop.wait(conf.get("OUTBOX_RELAY_INTERVAL"))


def start_relay_thread(databases: list[str] | None = None) -> threading.Event:
    """Run the relay in a daemon thread (used inside Celery workers); returns its stop."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_relay, args=(stop, databases), name="turbo_tasks-relay", daemon=True
    )
    thread.start()
    return stop
