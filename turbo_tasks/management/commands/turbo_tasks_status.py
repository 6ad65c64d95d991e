"""``manage.py turbo_tasks_status``: which turbo_tasks processes run, whether they agree on
what must be the same everywhere, and what is waiting (docs/howto/status.md)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from turbo_tasks import _compat, backlog, conf, presence, status
from turbo_tasks.status import Finding

# History keys: SCAN calls per shard (COUNT 1000 each) before giving up counting, and how
# many of the keys found get a MEMORY USAGE (the total is estimated from them).
HISTORY_SCAN_CALLS = 500
HISTORY_SAMPLE = 200


class Command(BaseCommand):
    help = (
        "List the turbo_tasks workers and web processes that announced themselves on the "
        "channel layer, and check that they agree with each other and with these settings "
        "(channel layer, queue, catch-up, signing key, version); show the broadcast queue, "
        "the outbox and the history. Exits with status 1 when something is wrong: use it "
        "as a deploy check."
    )
    # A diagnosis runs whatever the system checks say.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = gather()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write(render(report))
        errors = sum(1 for finding in report["findings"] if finding["level"] == "error")
        if errors:
            raise CommandError(f"turbo_tasks_status found {errors} error(s).", returncode=1)


def gather() -> dict[str, Any]:
    """The report: this process's settings, the processes announced on its channel layer,
    what is wrong, and the broadcast queue, the outbox and the history."""
    findings: list[Finding] = []
    report: dict[str, Any] = {"layer": None, "processes": [], "this_command": None}
    report["history"] = None
    found = presence.redis_layer()
    if found is None:
        alias = conf.get("CHANNEL_LAYER")
        findings.append(
            Finding(
                level="error",
                code="no_redis_layer",
                message=f"The channel layer {alias!r} (TURBO_TASKS['CHANNEL_LAYER']) is missing or "
                "not one of channels_redis' layers: processes cannot announce on it.",
                advice="Configure CHANNEL_LAYERS with channels_redis, as docs/howto/operations.md "
                "shows: workers in other processes cannot reach sockets otherwise.",
            )
        )
    else:
        alias, layer = found
        own = presence.describe(layer, alias, "status")
        report["this_command"] = own
        report["layer"] = {k: own[k] for k in ("layer", "backend", "hosts", "prefix")}
        try:
            client = _compat.sync_client(layer, 0)
            report["processes"] = presence.read(client, own["prefix"])
        except Exception as exc:
            findings.append(
                Finding(
                    level="error",
                    code="redis_unreachable",
                    message=f"Cannot read the channel layer's Redis ({own['hosts'][0]}): {exc!r}.",
                    advice="Start it, or check CHANNEL_LAYERS: with it down nothing is delivered.",
                )
            )
        else:
            findings += status.check(report["processes"], own)
            report["history"] = history_size(layer, own["prefix"])
    report["queue"] = backlog.broker_queue(conf.get("QUEUE"))
    if report["queue"].get("error"):
        findings.append(
            Finding(
                level="warning",
                code="broker_unreachable",
                message=f"Cannot look into the broker: {report['queue']['error']}.",
                advice="Check CELERY_BROKER_URL; with the broker down, nothing is published.",
            )
        )
    report["outbox"] = backlog.outbox_backlog()
    report["findings"] = findings
    report["ok"] = not any(finding["level"] == "error" for finding in findings)
    return report


def history_size(layer: Any, prefix: str) -> dict[str, Any]:
    """How many streams have a history on the layer's shards and about how much memory it
    takes (``MEMORY USAGE`` of up to HISTORY_SAMPLE keys, extrapolated); ``capped`` when a
    shard holds more keys than HISTORY_SCAN_CALLS could look through."""
    pattern = f"{prefix}:turbo_tasks:history:*"
    streams = sampled = sampled_bytes = 0
    capped = False
    try:
        for index in range(len(_compat.hosts(layer))):
            client = _compat.sync_client(layer, index)
            cursor, calls = 0, 0
            while True:
                cursor, keys = client.scan(cursor, match=pattern, count=1000)
                calls += 1
                streams += len(keys)
                sample = keys[: max(0, HISTORY_SAMPLE - sampled)]
                if sample:
                    pipe = client.pipeline(transaction=False)
                    for key in sample:
                        pipe.memory_usage(key)
                    sampled_bytes += sum(size or 0 for size in pipe.execute())
                    sampled += len(sample)
                if cursor == 0:
                    break
                if calls >= HISTORY_SCAN_CALLS:
                    capped = True
                    break
    except Exception as exc:
        return {"error": repr(exc)}
    estimate = round(sampled_bytes * streams / sampled) if sampled else 0
    return {"streams": streams, "bytes": estimate, "sampled": sampled, "capped": capped}


def render(report: dict[str, Any]) -> str:
    """The report as text."""
    lines = []
    own, layer = report["this_command"], report["layer"]
    if own is not None:
        lines.append(
            f"turbo_tasks {own['version']} status, from {status.label(own)}.\n"
            f"Channel layer {layer['layer']!r}: {layer['backend']} on "
            f"{status.show(layer['hosts'])}, prefix {layer['prefix']!r}.\n"
        )
        lines.append(f"Processes announced on it: {len(report['processes'])}")
    for about in report["processes"]:
        lines.append(f"  {status.label(about)}: {_summary(about)}")
    lines += ["", _queue_line(report["queue"])]
    if report["outbox"] is not None:
        lines.append(_outbox_line(report["outbox"]))
    if report.get("history") is not None:
        lines.append(_history_line(report["history"]))
    findings = report["findings"]
    if findings:
        lines += ["", "Problems:"]
    for finding in findings:
        lines.append(f"  {finding['level'].upper()}: {finding['message']}")
        lines.append(f"    What to do: {finding['advice']}")
    errors = sum(1 for f in findings if f["level"] == "error")
    warnings = len(findings) - errors
    lines.append("")
    lines.append(
        f"{errors} error(s), {warnings} warning(s)." if findings else "OK: no problems found."
    )
    return "\n".join(lines)


def _summary(about: dict[str, Any]) -> str:
    parts = [
        f"turbo_tasks {about.get('version')}",
        str(about.get("backend", "")).rpartition(".")[2],
        f"queue {about.get('queue')!r}",
        f"catch-up {'on' if about.get('catch_up') else 'off'}",
        f"signing {about.get('signing')}",
    ]
    if about.get("consumes") is not None:
        parts.append(f"consumes {status.show(about['consumes'])}")
    if about.get("age") is not None:
        parts.append(f"refreshed {about['age']:.0f}s ago")
    return ", ".join(parts)


def _queue_line(queue: dict[str, Any]) -> str:
    line = f"Broker queue {queue['name']!r}"
    if queue.get("error"):
        return f"{line}: cannot look: {queue['error']}"
    if "waiting" in queue:
        line += f": {queue['waiting']} waiting"
    if "consumers" in queue:
        line += f", {queue['consumers']} consumer(s)"
    if "unacked" in queue:
        line += f", {queue['unacked']}{'+' if queue['unacked_capped'] else ''} unacknowledged"
        if queue["oldest_unacked_seconds"] is not None:
            line += f" (oldest delivered {queue['oldest_unacked_seconds']:.0f}s ago"
            line += f"; redelivered after {queue['visibility_timeout']}s)"
    return f"{line} ({queue['note']})." if queue.get("note") else f"{line}."


def _outbox_line(backlog: dict[str, Any]) -> str:
    if backlog.get("error"):
        return f"Outbox ({backlog['mode']} mode): cannot look: {backlog['error']}"
    parts = []
    for db in backlog["databases"]:
        oldest = f", oldest {db['oldest_seconds']:.0f}s old" if db["oldest_seconds"] else ""
        parts.append(f"{db['rows']} row(s) in {db['database']!r}{oldest}")
    return f"Outbox ({backlog['mode']} mode): {'; '.join(parts) or 'no database'}."


def _history_line(history: dict[str, Any]) -> str:
    if history.get("error"):
        return f"History: cannot look: {history['error']}"
    size = f"{history['bytes'] / 1024:.1f} KiB"
    if history["sampled"] < history["streams"]:
        size = f"about {size} (from {history['sampled']} sampled)"
    more = " (capped: at least that many; the scan stopped)" if history["capped"] else ""
    return f"History: {history['streams']} stream(s){more}, {size}."
