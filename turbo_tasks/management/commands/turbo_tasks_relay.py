"""Publish outbox rows the committing processes could not (PUBLISH_MODE "outbox")."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from turbo_tasks import outbox


class Command(BaseCommand):
    help = (
        "Relay for TURBO_TASKS['PUBLISH_MODE'] = 'outbox': publish jobs left in the outbox "
        "(the broker was down at commit). Safe to run several at once. Workers run one "
        "themselves unless TURBO_TASKS['OUTBOX_RELAY_IN_WORKER'] is False."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="One sweep, then exit.")
        parser.add_argument(
            "--database",
            action="append",
            default=[],
            help="Database alias to relay from (repeatable; default: TURBO_TASKS"
            "['OUTBOX_DATABASES'], or the database the router picks for the outbox table).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        databases = options["database"] or outbox.relay_databases()
        if options["once"]:
            count = sum(outbox.relay_once(alias) for alias in databases)
            self.stdout.write(f"Published {count} outbox job(s).")
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"Relaying the turbo_tasks outbox of {', '.join(databases)}.")
        outbox.run_relay(stop, databases)
