"""Announcements: every Celery worker and ASGI web process says, in the channel layer's
Redis, which settings it runs with, so ``manage.py turbo_tasks_status`` can tell when
processes disagree on what must be the same everywhere (turbo_tasks.status,
docs/howto/status.md).

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
from typing import Any
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
