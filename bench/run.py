#!/usr/bin/env python
"""Side-by-side benchmarks of turbo_tasks (``make bench``; see docs/topics/performance.md).

    .venv/bin/python bench/run.py                 # everything (~5-8 minutes here)
    .venv/bin/python bench/run.py --quick         # small N, under 2 minutes
    .venv/bin/python bench/run.py --only W1,F2    # a subset (W1,W2,F1,F2,F3,F4)
    .venv/bin/python bench/run.py --quick --only F3 --workers 2 --asgi 2 --shards 2
    .venv/bin/python bench/run.py --quick --scale-out   # ratios to 1/1/1 (bench/scaleout.py)
    make bench BENCH_ARGS="--quick --only F3"

It starts everything it needs on free loopback ports and stops it at the end, on failure
too: two redis-servers (Celery broker; channel layer), a SQLite file in a temp dir (on
tmpfs when /dev/shm is writable), and for the F benchmarks one Celery worker process
(``celery -A worker worker -Q turbo_tasks,bench_naive -c 1 --pool solo``) and uvicorn
serving bench/asgi.py. Variants of one comparison alternate within each round (ABC ABC …);
the catch-up-off variants of F1 and F2 restart the worker and the ASGI server with
``HISTORY_LENGTH`` 0 (once per round), and F4 restarts the ASGI server on purpose.

``--workers N`` starts N worker processes (each its own node name; pausing and resuming a
queue addresses all of them), ``--asgi N`` N uvicorn processes on their own ports (the
websocket clients go to them in turn; F4 restarts all of them), ``--shards N`` N
channel-layer redis-servers (the layer's ``hosts``; BENCH_CHANNEL_REDIS_URL lists them,
comma-separated). ``--scale-out`` runs F1-F4 on several such layouts (bench/scaleout.py).
uvicorn runs with its default websocket implementation, as the Procfile does;
``BENCH_UVICORN_ARGS`` adds options to every uvicorn (e.g. ``--ws websockets`` for the legacy
implementation, or ``--ws-per-message-deflate false``).

Writes bench/results/results.json, results.md and chart.png; logs go to
bench/results/logs/. Prints the Markdown tables and the machine at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path; import everything as bench.* instead.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
else:
    sys.path.insert(0, str(ROOT))

from scripts.procs import Process, accepts, free_port, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BENCHES = ("W1", "W2", "F1", "F2", "F3", "F4")
F_BENCHES = ("F1", "F2", "F3", "F4")

FULL: dict[str, dict[str, Any]] = {
    "W1": {
        "rounds": 15,
        "saves": 200,
        # turbo-django saves per batch: at most the channel capacity (100), fewer when
        # each one fans out to 10,000 members.
        "td_saves": {"default": 100, 10000: 40},
        "subscribers": [1, 100, 10000],
    },
    "W2": {
        "rounds": 5,
        "saves": 1000,
        "variants": ["off", "turbo_tasks", "naive", "turbo_django"],
    },
    "F1": {
        "rounds": 5,
        "changes": 10000,
        "naive_changes": 1000,
        "autocommit_changes": 1000,
        "batch": 100,
        "timeout": 120,
    },
    "F2": {"rounds": 3, "rate": 100, "seconds": 5, "warmup_seconds": 0.5},
    "F3": {"sockets": [1, 100, 1000], "actions": 5, "gap": 0.5},
    "F4": {"rounds": 3, "sockets": 1000, "frames": 50, "timeout": 60},
}
QUICK: dict[str, dict[str, Any]] = {
    "W1": {**FULL["W1"], "rounds": 4, "saves": 100, "td_saves": {"default": 30, 10000: 10}},
    # turbo-django takes 5-10 s per 1,000-save transaction: full runs only.
    "W2": {**FULL["W2"], "rounds": 3, "variants": ["off", "turbo_tasks", "naive"]},
    "F1": {
        **FULL["F1"],
        "rounds": 2,
        "changes": 3000,
        "naive_changes": 200,
        "autocommit_changes": 200,
        "timeout": 60,
    },
    "F2": {**FULL["F2"], "rounds": 2, "seconds": 2},
    "F3": {**FULL["F3"], "actions": 3, "gap": 0.3},
    "F4": {**FULL["F4"], "rounds": 1},
}


def log(message: str) -> None:
    print(message, flush=True)


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(len(os.sched_getaffinity(0)))
    redis_version = subprocess.run(
        [shutil.which("redis-server") or "redis-server", "--version"],
        capture_output=True,
        text=True,
    ).stdout.split()
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "django": version("django"),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "channels": version("channels"),
        "channels_redis": version("channels-redis"),
        "redis_py": version("redis"),
        "redis_server": next((w[2:] for w in redis_version if w.startswith("v=")), "?"),
        "uvicorn": version("uvicorn"),
        "websockets": version("websockets"),
        "turbo_django": version("turbo-django"),
        "turbo_tasks": version("turbo-tasks"),
    }


def source_state() -> str:
    """The commit measured, and whether the library had uncommitted changes."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "turbo_tasks", "worker")
    return f"{head}{' + uncommitted changes in turbo_tasks/ or worker/' if dirty else ''}"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['nproc']} CPU(s), {m['cpu']}, {m['memory']} RAM, Linux {m['kernel']}; "
        f"Python {m['python']}, Django {m['django']}, Celery {m['celery']} (kombu {m['kombu']}), "
        f"channels {m['channels']}, channels-redis {m['channels_redis']}, redis-py "
        f"{m['redis_py']}, redis-server {m['redis_server']}, uvicorn {m['uvicorn']}, "
        f"websockets {m['websockets']}, turbo-django {m['turbo_django']}"
    )


def numbered(name: str, index: int, count: int) -> str:
    """``name`` when it is the only one of its kind (the default layout), else ``name-1``,
    ``name-2``, …: process and log names of --workers/--asgi/--shards."""
    return name if count == 1 else f"{name}-{index + 1}"


TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds() -> dict[int, float]:
    """CPU seconds used so far by each process group (every process the harness starts
    leads one: a worker with its pool children), summed over the live threads of its
    processes (/proc/<pid>/task/<tid>/schedstat, in ns; /proc/<pid>/stat counts 10 ms
    ticks, too coarse for a redis-server's share of a one-second run)."""
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            group = int(stat.read_text().rpartition(")")[2].split()[2])
            ns = sum(int(t.read_text().split()[0]) for t in stat.parent.glob("task/*/schedstat"))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        used[group] = used.get(group, 0.0) + ns / 1e9
    return used


def busy_seconds() -> float:
    """CPU seconds the machine spent busy so far, all cores and all processes (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS  # less idle and iowait


def redis_calls(urls: list[str]) -> dict[str, int]:
    """Calls so far per command, summed over the redis-servers at ``urls``."""
    import redis

    calls: dict[str, int] = {}
    for url in urls:
        for key, stats in redis.Redis.from_url(url).info("commandstats").items():
            command = key.removeprefix("cmdstat_")
            calls[command] = calls.get(command, 0) + int(stats["calls"])
    return calls


class Context:
    """Everything a run started, stopped in ``close()``.

    The F benchmarks run on a *layout*: ``n_workers`` Celery worker processes, ``n_asgi``
    uvicorn processes and a channel layer of ``n_shards`` redis-servers (--workers, --asgi,
    --shards; ``configure()`` switches layouts for --scale-out)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pool = args.pool
        self.log_dir = RESULTS / "logs"
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        base = args.db_dir or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
        self.tmp = Path(tempfile.mkdtemp(prefix="turbo_tasks_bench_", dir=base))
        self.processes: list[Process] = []
        self.children: list[subprocess.Popen[Any]] = []
        self.n_workers, self.n_asgi, self.n_shards = args.workers, args.asgi, args.shards
        self.workers: list[Process] = []
        self.worker_nodes: list[str] = []
        self.asgis: list[Process] = []
        # Kept across restarts: the clients of F4 reconnect to the same URLs.
        self.asgi_ports: list[int] = []
        self.ws_urls: list[str] = []
        self.broker_redis: Process | None = None
        self.channel_redis: list[tuple[str, Process]] = []  # (URL, server) of every shard started
        self.env: dict[str, str] = {}
        self.history = True  # catch-up (TURBO_TASKS["HISTORY_LENGTH"]) in worker and ASGI
        self.history_switches = 0

    def log(self, message: str) -> None:
        log(message)

    def track(self, proc: subprocess.Popen[Any]) -> None:
        self.children.append(proc)

    def spawn(self, name: str, args: list[str]) -> Process:
        proc = Process(name, args, self.env or dict(os.environ), self.log_dir)
        self.processes.append(proc)
        return proc

    @staticmethod
    def wait_up(proc: Process, ready: Any, timeout: float, what: str) -> None:
        try:
            wait_for(lambda: proc.alive() and ready(), timeout, what)
        except TimeoutError:
            raise RuntimeError(f"{proc.name} did not start:\n" + proc.log()) from None

    def start_redis(self, name: str) -> tuple[str, Process]:
        port = free_port()
        server = self.spawn(
            f"{name}-redis",
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.tmp)),
            ],
        )
        import redis

        def ping() -> bool:
            try:
                return bool(redis.Redis(port=port).ping())
            except redis.ConnectionError:
                return False

        self.wait_up(server, ping, 20, f"redis-server on port {port}")
        return f"redis://127.0.0.1:{port}/0", server

    def start(self, shards: int | None = None) -> None:
        """The broker, ``shards`` channel-layer redis-servers (default --shards; the layout
        uses the first ``n_shards``), the database, and Django in this process."""
        if not shutil.which("redis-server"):
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        broker_url, self.broker_redis = self.start_redis("broker")
        count = shards or self.n_shards
        self.channel_redis = [
            self.start_redis(numbered("channels", i, count)) for i in range(count)
        ]
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TURBO_TEST_", "PYTEST_", "DJANGO_SETTINGS_MODULE"))
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            BENCH_REDIS_URL=broker_url,
            BENCH_CHANNEL_REDIS_URL=",".join(url for url, _ in self.channel_redis[: self.n_shards]),
            BENCH_DB=str(self.tmp / "bench.sqlite3"),
            BENCH_CHANNEL_LAYER=LAYERS[self.args.layer],
        )
        os.environ.update(self.env)
        import django

        # The project's Celery app, loaded before anything publishes (as a Django project's
        # __init__.py does in Celery's guide); it reads CELERY_* from bench.settings.
        import worker  # noqa: F401

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)

    def start_fanout(self) -> None:
        """The F benchmarks' workers and ASGI processes, on the current layout."""
        self.start_workers()
        self.start_asgi()

    def start_workers(self) -> None:
        from django.conf import settings

        from worker import app

        queues = f"turbo_tasks,{settings.NAIVE_QUEUE}"
        for i in range(self.n_workers):
            node = f"{numbered(f'bench-{os.getpid()}', i, self.n_workers)}@%h"
            self.worker_nodes.append(node.replace("%h", platform.node()))
            self.workers.append(
                self.spawn(
                    numbered("worker", i, self.n_workers),
                    [
                        sys.executable,
                        *("-m", "celery", "-A", "worker", "worker", "-Q", queues),
                        *("-c", "1", "--pool", self.pool, "-n", node),
                        *("--without-mingle", "--without-gossip", "-l", "warning"),
                    ],
                )
            )
        for proc, node in zip(self.workers, self.worker_nodes, strict=True):
            self.wait_up(
                proc,
                functools.partial(app.control.ping, destination=[node], timeout=0.5),
                60,
                f"{node} to answer a ping",
            )

    def _control(self, command: str, queue: str) -> None:
        from worker import app

        replies = getattr(app.control, command)(
            queue, destination=self.worker_nodes, reply=True, timeout=5
        )
        if len(replies or ()) < len(self.worker_nodes):
            raise RuntimeError(
                f"{len(replies or ())} of {len(self.worker_nodes)} worker(s) confirmed "
                f"{command}({queue!r})"
            )

    def pause_queue(self, queue: str) -> None:
        """Stop every worker consuming ``queue`` (messages wait in Redis)."""
        self._control("cancel_consumer", queue)

    def resume_queue(self, queue: str) -> None:
        self._control("add_consumer", queue)

    def start_asgi(self) -> None:
        """Start the uvicorn processes, each on its own port (the same ports on a restart)."""
        while len(self.asgi_ports) < self.n_asgi:
            self.asgi_ports.append(free_port())
        ports = self.asgi_ports[: self.n_asgi]
        self.asgis = [
            self.spawn(
                numbered("uvicorn", i, self.n_asgi),
                [
                    sys.executable,
                    *("-m", "uvicorn", "bench.asgi:application", "--host", "127.0.0.1"),
                    # uvicorn's default websocket implementation (``--ws auto``:
                    # websockets-sansio since uvicorn 0.50), as the Procfile, the compose
                    # file and the docs run it.
                    *("--port", str(port), "--lifespan", "off"),
                    *("--log-level", "warning", "--no-access-log"),
                    # e.g. BENCH_UVICORN_ARGS="--ws websockets" (the legacy implementation)
                    # or "--ws-per-message-deflate false"
                    *os.environ.get("BENCH_UVICORN_ARGS", "").split(),
                ],
            )
            for i, port in enumerate(ports)
        ]
        for proc, port in zip(self.asgis, ports, strict=True):
            self.wait_up(proc, functools.partial(accepts, port), 30, f"uvicorn on {port}")
        self.ws_urls = [f"ws://127.0.0.1:{port}/ws/turbo/" for port in ports]

    def stop_asgi(self) -> None:
        """SIGTERM, as a deploy does (uvicorn closes the websockets, then exits)."""
        self._stop(self.asgis)

    def _stop(self, procs: list[Process]) -> None:
        """SIGTERM all of ``procs`` at once, wait for each (then Process.stop() kills what is
        left of its group), and forget them. Empties ``procs``."""
        for proc in procs:
            proc.signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(15)
            proc.stop()
            self.processes.remove(proc)
        if procs is self.workers:
            self.worker_nodes.clear()
        procs.clear()

    def restart(self) -> None:
        """Stop the workers and the ASGI processes, and start them again (with ``env``)."""
        self._stop(self.workers)
        self._stop(self.asgis)
        self.start_fanout()

    def set_history(self, on: bool) -> None:
        """Run the workers and the ASGI servers with catch-up on (the default) or off
        (``HISTORY_LENGTH`` 0): all are restarted when it changes."""
        if on == self.history:
            return
        from django.conf import settings

        self.history = on
        self.history_switches += 1
        turbo = {} if on else {"HISTORY_LENGTH": 0}
        self.env["BENCH_TURBO_TASKS"] = json.dumps(turbo)
        settings.TURBO_TASKS = dict(turbo)  # this process too (it renders no page, though)
        self.restart()
        # Freshly started processes are slow for a moment (imports, first connections, the
        # other one still starting): in the first full run, F2's first round after a switch
        # had a p95 of 261 ms against 8-16 ms in the others.
        time.sleep(3)

    def configure(self, workers: int, asgi: int, shards: int) -> None:
        """Switch the layout (--scale-out): stop the workers and ASGI processes, empty the
        channel layer's redis-servers, point everything at the first ``shards`` of them
        (this process too) and start ``workers`` workers and ``asgi`` ASGI processes."""
        import redis
        from django.conf import settings
        from django.core.signals import setting_changed

        from bench.settings import channel_layers

        if shards > len(self.channel_redis):
            raise ValueError(f"{shards} shards, but only {len(self.channel_redis)} started")
        self._stop(self.workers)
        self._stop(self.asgis)
        for url, _ in self.channel_redis:
            redis.Redis.from_url(url).flushall()
        self.n_workers, self.n_asgi, self.n_shards = workers, asgi, shards
        urls = [url for url, _ in self.channel_redis[:shards]]
        self.env["BENCH_CHANNEL_REDIS_URL"] = os.environ["BENCH_CHANNEL_REDIS_URL"] = ",".join(urls)
        settings.CHANNEL_REDIS_URLS, settings.CHANNEL_REDIS_URL = urls, urls[0]
        settings.CHANNEL_LAYERS = channel_layers(urls)
        # channels keeps its layers until told the setting changed (as override_settings does).
        setting_changed.send(
            sender=type(self), setting="CHANNEL_LAYERS", value=settings.CHANNEL_LAYERS, enter=True
        )
        self.start_fanout()

    def check_alive(self) -> None:
        for proc in self.workers + self.asgis:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} died:\n{proc.log()}")

    def usage(self) -> dict[str, Any]:
        """A snapshot for bench.fanout.spent(): CPU seconds used so far by each role's
        processes, by the whole machine, and the calls per command of the broker and of the
        channel layer's redis-servers in use (INFO commandstats; commands run by Lua
        scripts count too)."""
        shards = self.channel_redis[: self.n_shards]
        roles = {
            "worker": self.workers,
            "asgi": self.asgis,
            "channels_redis": [server for _, server in shards],
            "broker_redis": [self.broker_redis] if self.broker_redis else [],
        }
        cpu = group_cpu_seconds()
        return {
            "at": time.monotonic(),
            "busy": busy_seconds(),
            "cpu": {role: sum(cpu.get(p.pid, 0.0) for p in procs) for role, procs in roles.items()},
            "calls": {
                "channels": redis_calls([url for url, _ in shards]),
                "broker": redis_calls([self.env["BENCH_REDIS_URL"]]),
            },
        }

    def close(self) -> None:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    child.wait(5)
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small N (under 2 minutes)")
    parser.add_argument(
        "--only", help=f"comma-separated subset of {','.join(BENCHES)} (default: all)"
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--pool", default="solo", choices=("solo", "prefork"), help="Celery pool (-c 1)"
    )
    parser.add_argument(
        "--layer",
        default="core",
        choices=tuple(LAYERS),
        help="channels_redis layer for F1-F4: RedisChannelLayer (core, the default) or "
        "RedisPubSubChannelLayer (pubsub)",
    )
    for option, what in (
        ("--workers", "Celery worker processes for F1-F4 (each -c 1, its own node name)"),
        ("--asgi", "uvicorn processes for F1-F4, each on its own port (sockets round-robin)"),
        ("--shards", "redis-servers in the channel layer's hosts (its shards)"),
    ):
        parser.add_argument(option, type=int, default=1, metavar="N", help=f"{what}; default 1")
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="run F1-F4 on the layouts baseline (1 worker/1 ASGI/1 shard), workers=2, asgi=2 "
        "and shards=2, alternating per round, and report ratios to the baseline -> "
        "bench/results/scaleout.json, scaleout.md (see bench/scaleout.py)",
    )
    parser.add_argument("--db-dir", help="directory for the SQLite file (default: /dev/shm)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile the write path and the worker's delivery "
        "-> bench/results/profile_write.txt, profile_fanout.txt",
    )
    args = parser.parse_args(argv)
    only = args.only or ",".join(BENCHES if not args.scale_out else F_BENCHES)
    args.only = [b.strip().upper() for b in only.split(",") if b.strip()]
    unknown = set(args.only) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {BENCHES}")
    if args.layer != "core" and not set(args.only) <= set(F_BENCHES):
        parser.error("--layer pubsub applies to F1-F4 only (add --only F1,F2,F3,F4)")
    if min(args.workers, args.asgi, args.shards) < 1:
        parser.error("--workers, --asgi and --shards take a number ≥ 1")
    if args.scale_out:
        if not set(args.only) <= set(F_BENCHES):
            parser.error("--scale-out runs F1-F4 only")
        if (args.workers, args.asgi, args.shards) != (1, 1, 1):
            parser.error("--scale-out chooses the layouts itself (no --workers/--asgi/--shards)")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    config = QUICK if args.quick else FULL
    config = {k: dict(v) for k, v in config.items()}
    if args.rounds and not args.scale_out:  # --scale-out: rounds of the whole alternation
        for k in config:
            if "rounds" in config[k]:
                config[k]["rounds"] = args.rounds
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    m = machine()
    load_before = os.getloadavg()
    log(
        f"turbo_tasks benchmarks ({'quick' if args.quick else 'full'}"
        f"{', scale-out' if args.scale_out else ''}): {', '.join(args.only)}"
    )
    log(f"machine: {machine_line(m)}")
    ctx = Context(args)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}

    def bench(name: str, fn: Any, *fn_args: Any) -> None:
        """Run one benchmark; a failure is recorded and the others still run."""
        log(f"{name}…")
        t = time.monotonic()
        try:
            results[name] = fn(*fn_args, config[name], log)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} FAILED:\n{traceback.format_exc()}")
        timings[name] = time.monotonic() - t

    try:
        if args.scale_out:
            from bench import scaleout

            ctx.start(shards=scaleout.MAX_SHARDS)
            outcome = scaleout.run(ctx, config, args, log)
        else:
            ctx.start()
            run_benches(ctx, args, bench)
    finally:
        ctx.close()

    def doc_of(**specific: Any) -> dict[str, Any]:
        wall = time.monotonic() - started
        return {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "mode": "quick" if args.quick else "full",
            "wall_seconds": round(wall, 1),
            "machine": m,
            "source": source_state(),
            # Other processes on the machine skew everything: recorded so a reader can tell.
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "celery_pool": args.pool,
            "channel_layer": LAYERS[args.layer],
            "sqlite_on_tmpfs": str(ctx.tmp).startswith("/dev/shm"),
            **specific,
        }

    if args.scale_out:
        return scaleout.write(doc_of(**outcome), RESULTS, log, machine_line)

    from bench import report

    doc = doc_of(
        bench_seconds={k: round(v, 1) for k, v in timings.items()},
        config={k: config[k] for k in args.only},
        layout={"workers": args.workers, "asgi": args.asgi, "shards": args.shards},
        targets=report.evaluate_targets(results),
        errors=errors,
        results=results,
    )
    (RESULTS / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    md = render_markdown(doc)
    (RESULTS / "results.md").write_text(md)
    report.chart(results, RESULTS / "chart.png")
    log("")
    log(md)
    log(f"wrote {RESULTS / 'results.json'}, results.md, chart.png ({doc['wall_seconds']:.0f}s)")
    if errors:
        log(f"FAILED: {', '.join(errors)} (logs in {ctx.log_dir})")
        return 1
    return 0


def run_benches(ctx: Context, args: argparse.Namespace, bench: Any) -> None:
    """The benchmarks of --only, on the layout of --workers/--asgi/--shards."""
    from bench import write

    for name, fn in (("W1", write.w1), ("W2", write.w2)):
        if name in args.only:
            bench(name, fn)
    if args.profile:
        (RESULTS / "profile_write.txt").write_text(write.profile_write_path(3000))
        (RESULTS / "profile_fanout.txt").write_text(
            write.profile_fanout(1, 300) + "\n\n" + write.profile_fanout(100, 20)
        )
        log(f"profiles: {RESULTS / 'profile_write.txt'}, profile_fanout.txt")
    f_benches = [b for b in F_BENCHES if b in args.only]
    if f_benches:
        if args.layer == "core":
            write.Queues().flush()
        ctx.start_fanout()
        from bench import fanout

        for name in f_benches:
            bench(name, getattr(fanout, name.lower()), ctx)


def layout_line(doc: dict[str, Any]) -> str:
    """Who ran the F benchmarks: workers, ASGI processes, channel-layer shards."""
    layout = doc.get("layout") or {"workers": 1, "asgi": 1, "shards": 1}

    def count(n: int, one: str, many: str) -> str:
        return one if n == 1 else f"{n} {many}"

    return (
        f"Celery worker: {count(layout['workers'], 'one process,', 'processes, each')} `--pool "
        f"{doc['celery_pool']} -c 1`. ASGI: "
        f"{count(layout['asgi'], 'one uvicorn process', 'uvicorn processes')}. Channel layer: "
        f"`{doc.get('channel_layer', LAYERS['core'])}` on "
        f"{count(layout['shards'], 'one redis-server', 'redis-servers (shards)')}."
    )


def render_markdown(doc: dict[str, Any]) -> str:
    from bench import report

    timings = ", ".join(f"{k} {v:.0f}s" for k, v in doc["bench_seconds"].items())
    return "\n".join(
        [
            f"## turbo_tasks benchmarks — {doc['date']} ({doc['mode']}, `{doc['command']}`)",
            "",
            f"Machine: {machine_line(doc['machine'])}.",
            f"Code measured: {doc.get('source', 'unknown')}.",
            f"{layout_line(doc)} SQLite on tmpfs: "
            f"{'yes' if doc['sqlite_on_tmpfs'] else 'no'}. Wall time {doc['wall_seconds']:.0f}s "
            f"({timings}). Load average (1/5/15 min) before: "
            f"{'/'.join(str(x) for x in doc['load_average_before'])}, after: "
            f"{'/'.join(str(x) for x in doc['load_average_after'])} (background load skews "
            "everything; the variants alternate, so ratios suffer less than absolute times).",
            "",
            *(
                ["### Errors", "", *(f"- {k}: {v}" for k, v in doc["errors"].items()), ""]
                if doc["errors"]
                else []
            ),
            "### Targets",
            "",
            report.targets_table(doc["targets"]),
            "",
            "### All measurements (min / median / max over rounds)",
            "",
            report.results_table(doc["results"]),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
