"""List failed broadcasts from Flower's API and re-run them through it."""

from __future__ import annotations

import ast
import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from turbo_tasks import conf
from turbo_tasks.jobs import TASK_NAME as TASK


class Command(BaseCommand):
    help = (
        "List turbo_tasks.deliver tasks that Flower saw FAIL and re-run them with the same "
        "arguments through Flower's API (POST /api/task/async-apply/turbo_tasks.deliver)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--flower-url",
            default=os.environ.get("FLOWER_URL", "http://localhost:5555"),
            help="Flower's base URL (default: $FLOWER_URL or http://localhost:5555).",
        )
        parser.add_argument(
            "--auth",
            default=os.environ.get("FLOWER_BASIC_AUTH"),
            help="user:password for Flower's basic auth (default: $FLOWER_BASIC_AUTH).",
        )
        parser.add_argument("--dry-run", action="store_true", help="List, do not re-run.")
        parser.add_argument("--limit", type=int, default=100, help="At most this many tasks.")
        parser.add_argument(
            "--task-id", action="append", default=[], help="Only this task (repeatable)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.flower = options["flower_url"].rstrip("/")
        self.auth = options["auth"]
        query = urllib.parse.urlencode(
            {"taskname": TASK, "state": "FAILURE", "limit": options["limit"]}
        )
        tasks = self._call("GET", f"/api/tasks?{query}")
        failed = sorted(tasks.values(), key=lambda task: task.get("failed") or 0)
        if options["task_id"]:
            failed = [task for task in failed if task["uuid"] in options["task_id"]]
        if not failed:
            self.stdout.write("No failed broadcasts in Flower.")
            return
        for task in failed:
            try:
                task_args, task_kwargs = _parse(task.get("args")), _parse(task.get("kwargs"))
            except ValueError as exc:
                self.stderr.write(f"{task['uuid']}: cannot re-run: {exc}")
                continue
            jobs = task_args[0] if task_args else []
            self.stdout.write(
                f"{task['uuid']} failed: {task.get('exception')} — {len(jobs)} job(s)"
            )
            if options["dry_run"]:
                continue
            body = {"args": task_args, "kwargs": task_kwargs, "queue": conf.get("QUEUE")}
            result = self._call("POST", f"/api/task/async-apply/{TASK}", body)
            self.stdout.write(self.style.SUCCESS(f"  re-run as {result.get('task-id')}"))

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.flower + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.auth:
            token = base64.b64encode(self.auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            hint = (
                " (Flower's API needs auth: pass --auth, or run Flower with "
                "FLOWER_UNAUTHENTICATED_API=true on a trusted network)"
                if exc.code == 401
                else ""
            )
            raise CommandError(f"Flower answered {exc.code} to {method} {path}{hint}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise CommandError(f"Cannot reach Flower at {self.flower}: {exc}") from exc


def _parse(text: Any) -> Any:
    """Flower shows arguments as the publisher's ``argsrepr``: JSON for turbo_tasks'
    own publishes, a Python repr for others (e.g. tasks re-run by hand)."""
    if not isinstance(text, str):
        raise ValueError("Flower has no arguments for this task")
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text.endswith("...") or "...'" in text:
        raise ValueError("Flower shows truncated arguments")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"unreadable arguments {text[:80]!r}: {exc}") from None
