"""What ``manage.py turbo_tasks_status`` finds wrong in the processes that announced
themselves (turbo_tasks.presence): settings that must agree and do not, no worker, no web
process, a queue no worker consumes. Each finding says what to do."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from turbo_tasks.presence import Announcement


class _FindingBase(TypedDict):
    level: str  # "error" (the command exits non-zero), "warning" or "info"
    code: str
    message: str
    advice: str


class Finding(_FindingBase, total=False):
    field: str  # for a disagreement: the announcement's field...
    values: list[dict[str, Any]]  # ...and each value with the processes holding it


# What must agree: field -> (level, what it is, why and what to do).
AGREE: dict[str, tuple[str, str, str]] = {
    "backend": ("error", "The channel layer BACKEND",
        "Frames pushed on one layer never reach sockets listening on another. Set the same "
        "CHANNEL_LAYERS BACKEND everywhere (look for an environment variable choosing it) "
        "and restart the odd processes."),
    "hosts": ("error", "The channel layer's list of hosts",
        "Workers push to, and web processes listen on, these servers in this order (a group "
        "lives on the shard its name hashes to). Write the same hosts, in the same order and "
        "spelling, in every process's CHANNEL_LAYERS."),
    "prefix": ("error", "The channel layer prefix",
        "Groups and histories are Redis keys named with it: processes with different "
        "prefixes never see each other's frames. Use one prefix everywhere."),
    "catch_up": ("error", "Catch-up (TURBO_TASKS['HISTORY_LENGTH'] > 0)",
        "Workers write the history web processes read: with catch-up on in one and off in "
        "the other, frames lack offsets or pages reset on every reconnect. Set the same "
        "HISTORY_LENGTH everywhere."),
    "queue": ("error", "TURBO_TASKS['QUEUE']",
        "Web processes publish broadcasts to it; workers consume it and retry into it. Set "
        "the same QUEUE everywhere, and start workers with -Q <that queue>."),
    "signing": ("error", "The signing key fingerprint (SECRET_KEY + TURBO_TASKS['SIGNING_SALT'])",
        "A stream name signed by one process is rejected (invalid_signature) by a process "
        "with another key: pages never subscribe. Use the same SECRET_KEY and SIGNING_SALT "
        "everywhere."),
    "version": ("error", "The turbo_tasks version",
        "Processes run different releases (job and frame formats may differ): finish the "
        "deploy by restarting the old ones."),
    "history_length": ("warning", "TURBO_TASKS['HISTORY_LENGTH']",
        "Workers trim each stream's history to their own length. Set one value everywhere."),
    "history_seconds": ("warning", "TURBO_TASKS['HISTORY_SECONDS']",
        "Workers keep frames and watched streams this long. Set one value everywhere."),
    "publish_mode": ("warning", "TURBO_TASKS['PUBLISH_MODE']",
        "Workers run the outbox relay only in outbox mode, so outbox rows may wait for a "
        "relay. Set one mode everywhere (or run manage.py turbo_tasks_relay)."),
}  # fmt: skip


def label(about: Announcement) -> str:
    """How a finding names a process: ``worker web-1:4242 (celery@web-1)``."""
    where = f"{about.get('host')}:{about.get('pid')}"
    if about.get("role") == "status":
        return f"this command ({where})"
    name = f" ({about['name']})" if about.get("name") else ""
    return f"{about.get('role')} {where}{name}"


def show(value: Any) -> str:
    """A setting's value as findings print it."""
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value) if isinstance(value, str) else json.dumps(value)


def disagreements(announcements: list[Announcement]) -> list[Finding]:
    """One finding per field of :data:`AGREE` on which ``announcements`` differ, naming
    each value and the processes that hold it."""
    findings = []
    for field, (level, what, advice) in AGREE.items():
        holders: dict[str, list[str]] = {}
        for about in announcements:
            value = json.dumps(about.get(field), sort_keys=True)
            holders.setdefault(value, []).append(label(about))
        if len(holders) < 2:
            continue
        values = [{"value": json.loads(v), "processes": who} for v, who in holders.items()]
        shown = "; ".join(f"{show(v['value'])} in {', '.join(v['processes'])}" for v in values)
        finding = _finding(level, "mismatch", f"{what} differs: {shown}.", advice)
        finding["field"], finding["values"] = field, values
        findings.append(finding)
    return findings


def check(announcements: list[Announcement], own: Announcement | None = None) -> list[Finding]:
    """Findings about the processes that announced on one layer, compared with each other
    and with ``own`` (this command's settings): disagreements, no worker, no web process,
    a queue that broadcasts are published to and no worker consumes."""
    mine = [own] if own is not None else []
    findings = disagreements([*announcements, *mine])
    workers = [a for a in announcements if a.get("role") == "worker"]
    webs = [a for a in announcements if a.get("role") == "web"]
    where = f" ({show(own.get('hosts'))}, prefix {own.get('prefix')!r})" if own else ""
    elsewhere = "compare their CHANNEL_LAYERS with this command's settings."
    if not workers:
        findings.append(_finding(
            "error", "no_worker",
            f"No Celery worker announced itself on this channel layer{where}: nothing would "
            "deliver broadcasts.",
            "Start one (celery -A <your app> worker -Q <TURBO_TASKS['QUEUE']>). If workers "
            f"run, they use another channel layer or Redis: {elsewhere}",
        ))  # fmt: skip
    if not webs:
        findings.append(_finding(
            "warning", "no_web",
            f"No web (ASGI) process announced itself on this channel layer{where}.",
            "A web process announces from its first websocket: none has served one since it "
            f"started, or it listens on another channel layer or Redis: {elsewhere}",
        ))  # fmt: skip
    consumed = [set(a["consumes"]) for a in workers if isinstance(a.get("consumes"), list)]
    if not consumed or len(consumed) < len(workers):
        return findings  # a worker that did not say what it consumes may consume anything
    for queue in sorted({str(a.get("queue")) for a in [*webs, *mine]}):
        if not any(queue in queues for queues in consumed):
            findings.append(_finding(
                "error", "queue_not_consumed",
                f"No worker consumes the queue {queue!r} broadcasts are published to "
                f"(workers consume: {show(sorted(set().union(*consumed)))}).",
                f"Start a worker with -Q {queue}, or set TURBO_TASKS['QUEUE'] to a queue "
                "the workers consume.",
            ))  # fmt: skip
    return findings


def _finding(level: str, code: str, message: str, advice: str) -> Finding:
    return Finding(level=level, code=code, message=message, advice=advice)
