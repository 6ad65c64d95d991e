"""Announcements: every Celery worker and ASGI web process says, in the channel layer's
Redis, which settings it runs with, so ``manage.py turbo_tasks_status`` can tell when
processes disagree on what must be the same everywhere (docs/howto/status.md).

A web process that listens on one channel layer while the workers push to another loses
every frame, and nothing logs it: each process is fine on its own. So each process keeps a
small JSON value under a key of its own on shard 0 of its channel layer,
``<prefix>:turbo_tasks:process:<role>:<host>:<pid>``, refreshed by a daemon thread every
``_PERIOD_SECONDS`` (never on a request or a task) and expiring after ``_EXPIRES_AFTER``
periods without a refresh. The keys are listed in the sorted set
``<prefix>:turbo_tasks:processes`` (scored by when each was written), so reading them needs
no SCAN. A worker announces from its main process, which stands for its whole pool
(``worker_ready``); a web process from the first websocket it accepts. A process whose
channel layer is not one of channels_redis' announces nothing. A process that stops
cleanly withdraws its announcement; a killed one stays listed until it expires.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from typing import Any, TypedDict
from urllib.parse import urlsplit

from channels.layers import get_channel_layer
from django.utils.crypto import salted_hmac

from turbo_tasks import _compat, conf

logger = logging.getLogger(__name__)

# Seconds between two refreshes of an announcement. Private: tests shorten it for the
# announcers they make themselves.
_PERIOD_SECONDS = 10.0
# Refreshes an announcement may miss before it expires.
_EXPIRES_AFTER = 3
# Index entries not refreshed for this long are dropped by the next process that announces.
_FORGET_SECONDS = 3600

# An announcement, as JSON: see describe().
Announcement = dict[str, Any]


class _FindingBase(TypedDict):
    level: str  # "error" (the command exits non-zero), "warning" or "info"
    code: str
    message: str
    advice: str


class Finding(_FindingBase, total=False):
    field: str  # for a disagreement: the announcement's field...
    values: list[dict[str, Any]]  # ...and each value with the processes holding it


def index_key(prefix: str) -> str:
    return f"{prefix}:turbo_tasks:processes"


def fingerprint() -> str:
    """12 hex digits, equal in two processes when their ``SECRET_KEY`` and
    ``TURBO_TASKS["SIGNING_SALT"]`` are (they make signed stream names): an HMAC keyed with
    ``SECRET_KEY``, so neither can be read back from it."""
    salt = str(conf.get("SIGNING_SALT"))
    return salted_hmac("turbo_tasks.status", salt, algorithm="sha256").hexdigest()[:12]


def address(host: dict[str, Any]) -> str:
    """One channels_redis ``hosts`` entry as a URL without credentials (user, password and
    query dropped; default port and database filled in), e.g. ``redis://10.0.0.5:6379/0``
    or ``sentinel://10.0.0.7:26379/mymaster/0``."""
    if "address" in host:
        url = urlsplit(str(host["address"]))
        if url.scheme == "unix":
            return f"unix://{url.path}"
        name = url.hostname or "localhost"
        name = f"[{name}]" if ":" in name else name
        try:
            port = url.port or 6379
        except ValueError:
            port = 6379
        return f"{url.scheme}://{name}:{port}/{url.path.strip('/') or host.get('db', 0)}"
    if "sentinels" in host:
        sentinels = ",".join(f"{name}:{port}" for name, port in host["sentinels"])
        return f"sentinel://{sentinels}/{host.get('master_name')}/{host.get('db', 0)}"
    return f"redis://{host.get('host', 'localhost')}:{host.get('port', 6379)}/{host.get('db', 0)}"


def redis_layer() -> tuple[str, Any] | None:
    """``(alias, layer)`` of this process's channel layer (``TURBO_TASKS["CHANNEL_LAYER"]``),
    or None when it is missing or not one of channels_redis' layers."""
    alias = str(conf.get("CHANNEL_LAYER"))
    layer = get_channel_layer(alias)
    if layer is None or not _compat.is_redis_layer(layer):
        return None
    return alias, layer


def describe(
    layer: Any, alias: str, role: str, name: str = "", consumes: list[str] | None = None
) -> Announcement:
    """What this process announces: who it is (``role``: ``"worker"``, ``"web"``, or
    ``"status"`` for the command itself; host, pid, a worker's node ``name`` and the queues
    it ``consumes``) and the settings that must agree across processes. Addresses only:
    no password, and a :func:`fingerprint` of the signing key, never the key."""
    import turbo_tasks  # its __init__ imports much of the package: not at module level

    about: Announcement = {
        "role": role,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "name": name,
        "version": turbo_tasks.__version__,
        "layer": alias,
        "backend": f"{type(layer).__module__}.{type(layer).__qualname__}",
        "hosts": [address(host) for host in _compat.hosts(layer)],
        "prefix": _compat.prefix(layer),
        "catch_up": bool(conf.get("HISTORY_LENGTH")),
        "history_length": conf.get("HISTORY_LENGTH"),
        "history_seconds": conf.get("HISTORY_SECONDS"),
        "queue": conf.get("QUEUE"),
        "publish_mode": conf.get("PUBLISH_MODE"),
        "signing": fingerprint(),
        "started": time.time(),
        "period": _PERIOD_SECONDS,
    }
    if consumes is not None:
        about["consumes"] = consumes
    return about


class Announcer:
    """Keeps one process's announcement fresh from a daemon thread until :meth:`stop`,
    which withdraws it. A Redis that fails is logged at warning once per outage, and tried
    again every period."""

    def __init__(self, layer: Any, about: Announcement) -> None:
        self.layer = layer
        self.about = about
        self.period = float(about["period"])
        prefix, role = about["prefix"], about["role"]
        self.key = f"{prefix}:turbo_tasks:process:{role}:{about['host']}:{about['pid']}"
        self.index = index_key(prefix)
        self.attempts = 0  # refreshes tried so far
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"turbo_tasks-presence-{about['role']}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop refreshing and withdraw the announcement (waiting at most ``timeout``)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.period)
        try:
            client = _compat.sync_client(self.layer, 0)
            client.pipeline(transaction=False).delete(self.key).zrem(self.index, self.key).execute()
        except Exception as exc:  # it expires by itself
            logger.debug("turbo_tasks: could not withdraw %s: %s", self.key, exc)

    def refresh(self) -> bool:
        """Write the announcement once; whether it worked. Never raises."""
        self.attempts += 1
        role = self.about["role"]
        try:
            now = time.time()
            client = _compat.sync_client(self.layer, 0)
            pipe = client.pipeline(transaction=False)
            pipe.set(self.key, json.dumps(self.about), px=int(self.period * _EXPIRES_AFTER * 1000))
            pipe.zadd(self.index, {self.key: now})
            pipe.zremrangebyscore(self.index, "-inf", now - _FORGET_SECONDS)
            pipe.expire(self.index, _FORGET_SECONDS)
            pipe.execute()
        except Exception as exc:
            if not self._failing:  # once per outage
                message = "turbo_tasks: cannot announce this %s process in the channel layer's"
                message += " Redis (%s); turbo_tasks_status will not list it. Retrying every %ss"
                logger.warning(message, role, exc, self.period)
            self._failing = True
            return False
        if self._failing:
            logger.info("turbo_tasks: announcing this %s process again", role)
        self._failing = False
        return True


_lock = threading.Lock()
# role -> (pid, its announcer, None where the layer cannot hold one): a forked child has
# another pid, so it starts its own.
_running: dict[str, tuple[int, Announcer | None]] = {}


def start(role: str, name: str = "", consumes: list[str] | None = None) -> Announcer | None:
    """Announce this process as ``role`` from now on: once per process and role
    (idempotent and thread-safe; cheap enough to call on every websocket connect). Never
    raises. None when this process's channel layer cannot hold announcements."""
    pid = os.getpid()
    running = _running.get(role)
    if running is not None and running[0] == pid:
        return running[1]
    with _lock:
        running = _running.get(role)
        if running is not None and running[0] == pid:
            return running[1]
        announcer = None
        try:
            found = redis_layer()
            if found is not None:
                announcer = Announcer(found[1], describe(found[1], found[0], role, name, consumes))
                announcer.start()
            else:
                logger.debug("turbo_tasks: not a channels_redis layer; announcing nothing")
        except Exception:
            logger.warning("turbo_tasks: cannot announce this %s process", role, exc_info=True)
            announcer = None
        _running[role] = (pid, announcer)
        return announcer


def start_worker(consumer: Any) -> Announcer | None:
    """Announce this Celery worker (``worker_ready``: its main process), with its node name
    and the queues it consumes."""
    app = getattr(consumer, "app", None)
    try:
        queues: list[str] | None = sorted(app.amqp.queues.consume_from)  # type: ignore[union-attr]
    except Exception:
        queues = None
    return start("worker", str(getattr(consumer, "hostname", "") or ""), queues)


def stop(role: str) -> None:
    """Withdraw this process's announcement as ``role`` (a worker's ``worker_shutdown``)."""
    with _lock:
        running = _running.get(role)
        if running is None or running[0] != os.getpid():
            return
        del _running[role]
    if running[1] is not None:
        running[1].stop()


@atexit.register
def _stop_all() -> None:
    for role in list(_running):
        stop(role)


def read(client: Any, prefix: str) -> list[Announcement]:
    """The live announcements in one Redis (``client``, a redis-py client, and the layer's
    ``prefix``): workers first, then web processes, by host and pid. Each gets ``age``:
    seconds since its last refresh, from the key's time to live (other hosts' clocks do
    not matter)."""
    keys = client.zrange(index_key(prefix), 0, -1)
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key).pttl(key)
    replies = pipe.execute()
    found = []
    for value, pttl in zip(replies[::2], replies[1::2], strict=True):
        try:
            about = json.loads(value) if value is not None else None
        except ValueError:
            continue
        if not isinstance(about, dict):
            continue
        lives = float(about.get("period") or _PERIOD_SECONDS) * _EXPIRES_AFTER
        about["age"] = round(max(0.0, lives - pttl / 1000), 1) if pttl > 0 else None
        found.append(about)
    order = {"worker": 0, "web": 1}
    return sorted(
        found, key=lambda a: (order.get(str(a.get("role")), 2), str(a.get("host")), a.get("pid", 0))
    )


# -- comparing them ---------------------------------------------------------------------

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
