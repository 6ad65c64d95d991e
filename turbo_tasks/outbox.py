"""Durable publishing: the transactional outbox and its relay.

In ``TURBO_TASKS["PUBLISH_MODE"] = "outbox"`` every job is also written to
``turbo_tasks_outboxjob`` in the transaction of the change it describes, so it commits or
rolls back with it. After the commit the committing process publishes the jobs at once and
deletes their rows; rows left behind (the broker was down, the process died) are published
by a relay. Publishers *claim* rows before publishing them, so several relays, and a relay
racing the committing process, never publish a row twice while its claim holds.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections
from django.db.models import Q
from django.utils import timezone

from turbo_tasks import conf

logger = logging.getLogger(__name__)

Job = dict[str, Any]
Sender = Callable[[list[Job], str], bool]


def record(job: Job, using: str) -> int:
    """Write ``job`` in the current transaction; return its row id."""
    from turbo_tasks.models import OutboxJob

    return int(OutboxJob._base_manager.using(using).create(job=job).pk)


def publish_rows(ids: list[int], jobs: list[Job], using: str, send: Sender) -> None:
    """After commit: claim these rows, publish their jobs, delete them."""
    from turbo_tasks.models import OutboxJob

    rows = OutboxJob._base_manager.using(using)
    token = uuid.uuid4()
    until = timezone.now() + timedelta(seconds=conf.get("OUTBOX_CLAIM_SECONDS"))
    claimed = rows.filter(pk__in=ids, claim__isnull=True).update(claim=token, claimed_until=until)
    if claimed != len(ids):
        # A relay got there first (we were slow); publish only what is ours.
        jobs = [row.job for row in rows.filter(claim=token).order_by("pk")]
    if send(jobs, using):
        rows.filter(claim=token).delete()
    else:
        # Leave them for the relay, at once rather than when the claim expires.
        rows.filter(claim=token).update(claim=None, claimed_until=None)


def relay_once(using: str = DEFAULT_DB_ALIAS, send: Sender | None = None) -> int:
    """Publish outbox rows older than ``OUTBOX_RELAY_AGE`` seconds (or whose claim
    expired), in one message per ``MAX_JOBS_PER_MESSAGE``; return how many were published."""
    from turbo_tasks.models import OutboxJob
    from turbo_tasks.signals import send_jobs

    send = send or send_jobs
    rows = OutboxJob._base_manager.using(using)
    now = timezone.now()
    size = conf.get("MAX_JOBS_PER_MESSAGE")
    published = 0
    while True:
        free = Q(claim__isnull=True) | Q(claimed_until__lt=now)
        old = now - timedelta(seconds=conf.get("OUTBOX_RELAY_AGE"))
        candidates = list(
            rows.filter(free, created_at__lte=old)
            .order_by("pk")
            .values_list("pk", flat=True)[:size]
        )
        if not candidates:
            return published
        token = uuid.uuid4()
        until = timezone.now() + timedelta(seconds=conf.get("OUTBOX_CLAIM_SECONDS"))
        # The claim repeats the "free" condition: of two relays updating the same rows,
        # the second sees the first one's claim and takes nothing.
        rows.filter(free, pk__in=candidates).update(claim=token, claimed_until=until)
        claimed = list(rows.filter(claim=token).order_by("pk"))
        if not claimed:
            continue
        if not send([row.job for row in claimed], using):
            rows.filter(claim=token).update(claim=None, claimed_until=None)
            return published
        rows.filter(claim=token).delete()
        published += len(claimed)
        logger.info("turbo_tasks relay published %d outbox job(s) from %r", len(claimed), using)


def run_relay(stop: threading.Event, databases: list[str] | None = None) -> None:
    """Relay until ``stop`` is set, every ``OUTBOX_RELAY_INTERVAL`` seconds."""
    while not stop.is_set():
        for alias in databases or list(settings.DATABASES):
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
