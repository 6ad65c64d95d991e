#!/usr/bin/env python
"""Side-by-side benchmarks of turbo_tasks (``make bench``; see docs/topics/performance.md).

    .venv/bin/python bench/run.py                 # everything (~5-8 minutes here)
    .venv/bin/python bench/run.py --quick         # small N, under 2 minutes
    .venv/bin/python bench/run.py --only W1,F2    # a subset (W1,W2,F1,F2,F3,F4)
    make bench BENCH_ARGS="--quick --only F3"

It starts everything it needs on free loopback ports and stops it at the end, on failure
too: two redis-servers (Celery broker; channel layer), a SQLite file in a temp dir (on
tmpfs when /dev/shm is writable), and for the F benchmarks one Celery worker process
(``celery -A worker worker -Q turbo_tasks,bench_naive -c 1 --pool solo``) and uvicorn
serving bench/asgi.py. Variants of one comparison alternate within each round (ABC ABC …);
the catch-up-off variants of F1 and F2 restart the worker and the ASGI server with
``HISTORY_LENGTH`` 0 (once per round), and F4 restarts the ASGI server on purpose.

Writes bench/results/results.json, results.md and chart.png; logs go to
bench/results/logs/. Prints the Markdown tables and the machine at the end.
"""

from __future__ import annotations

import argparse
import contextlib
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


class Context:
    """Everything a run started, stopped in ``close()``."""

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
        self.worker: Process | None = None
        self.asgi: Process | None = None
        self.ws_url = ""
        self.env: dict[str, str] = {}
        self.history = True  # catch-up (TURBO_TASKS["HISTORY_LENGTH"]) in worker and ASGI
        self.history_switches = 0

    def log(self, message: str) -> None:
        log(message)

    def track(self, proc: subprocess.Popen[Any]) -> None:
        self.children.append(proc)

    def start_redis(self, name: str) -> str:
        port = free_port()
        server = Process(
            f"{name}-redis",
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.tmp)),
            ],
            dict(os.environ),
            self.log_dir,
        )
        self.processes.append(server)
        import redis

        def ping() -> bool:
            try:
                return bool(redis.Redis(port=port).ping())
            except redis.ConnectionError:
                return False

        wait_for(ping, 20, f"redis-server on port {port}")
        return f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        if not shutil.which("redis-server"):
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        broker_url = self.start_redis("broker")
        channel_url = self.start_redis("channels")
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
            BENCH_CHANNEL_REDIS_URL=channel_url,
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

    def start_worker(self) -> None:
        from django.conf import settings

        from worker import app

        node = f"bench-{os.getpid()}@%h"
        self.worker_node = node.replace("%h", platform.node())
        queues = f"turbo_tasks,{settings.NAIVE_QUEUE}"
        self.worker = Process(
            "worker",
            [
                sys.executable,
                *("-m", "celery", "-A", "worker", "worker", "-Q", queues),
                *("-c", "1", "--pool", self.pool, "-n", node),
                *("--without-mingle", "--without-gossip", "-l", "warning"),
            ],
            self.env,
            self.log_dir,
        )
        self.processes.append(self.worker)
        try:
            wait_for(
                lambda: self.worker.alive() and app.control.ping(timeout=0.5),
                60,
                "the Celery worker to answer a ping",
            )
        except TimeoutError:
            raise RuntimeError("the worker did not start:\n" + self.worker.log()) from None

    def pause_queue(self, queue: str) -> None:
        """Stop the worker consuming ``queue`` (messages wait in Redis)."""
        from worker import app

        replies = app.control.cancel_consumer(
            queue, destination=[self.worker_node], reply=True, timeout=5
        )
        if not replies:
            raise RuntimeError(f"the worker did not confirm cancel_consumer({queue!r})")

    def resume_queue(self, queue: str) -> None:
        from worker import app

        replies = app.control.add_consumer(
            queue, destination=[self.worker_node], reply=True, timeout=5
        )
        if not replies:
            raise RuntimeError(f"the worker did not confirm add_consumer({queue!r})")

    def start_asgi(self) -> None:
        # A restart keeps the port: the clients of F4 reconnect to the same URL.
        port = self.asgi_port = getattr(self, "asgi_port", None) or free_port()
        self.asgi = Process(
            "uvicorn",
            [
                sys.executable,
                *("-m", "uvicorn", "bench.asgi:application", "--host", "127.0.0.1"),
                *("--port", str(port), "--ws", "websockets", "--lifespan", "off"),
                *("--log-level", "warning", "--no-access-log"),
            ],
            self.env,
            self.log_dir,
        )
        self.processes.append(self.asgi)
        try:
            wait_for(lambda: self.asgi.alive() and accepts(port), 30, f"uvicorn on {port}")
        except TimeoutError:
            raise RuntimeError("uvicorn did not start:\n" + self.asgi.log()) from None
        self.ws_url = f"ws://127.0.0.1:{port}/ws/turbo/"

    def stop_asgi(self) -> None:
        """SIGTERM, as a deploy does (uvicorn closes the websockets, then exits)."""
        assert self.asgi is not None
        self.asgi.stop()
        self.processes.remove(self.asgi)
        self.asgi = None

    def set_history(self, on: bool) -> None:
        """Run the worker and the ASGI server with catch-up on (the default) or off
        (``HISTORY_LENGTH`` 0): both are restarted when it changes."""
        if on == self.history:
            return
        from django.conf import settings

        self.history = on
        self.history_switches += 1
        turbo = {} if on else {"HISTORY_LENGTH": 0}
        self.env["BENCH_TURBO_TASKS"] = json.dumps(turbo)
        settings.TURBO_TASKS = dict(turbo)  # this process too (it renders no page, though)
        for proc in (self.worker, self.asgi):
            if proc is not None:
                proc.stop()
                self.processes.remove(proc)
        self.worker = self.asgi = None
        self.start_worker()
        self.start_asgi()
        # Freshly started processes are slow for a moment (imports, first connections, the
        # other one still starting): in the first full run, F2's first round after a switch
        # had a p95 of 261 ms against 8-16 ms in the others.
        time.sleep(3)

    def check_alive(self) -> None:
        for proc in (self.worker, self.asgi):
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} died:\n{proc.log()}")

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
        "--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}"
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
    parser.add_argument("--db-dir", help="directory for the SQLite file (default: /dev/shm)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile the write path and the worker's delivery "
        "-> bench/results/profile_write.txt, profile_fanout.txt",
    )
    args = parser.parse_args(argv)
    args.only = [b.strip().upper() for b in args.only.split(",") if b.strip()]
    unknown = set(args.only) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {BENCHES}")
    if args.layer != "core" and not set(args.only) <= {"F1", "F2", "F3", "F4"}:
        parser.error("--layer pubsub applies to F1-F4 only (add --only F1,F2,F3,F4)")
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
    if args.rounds:
        for k in config:
            if "rounds" in config[k]:
                config[k]["rounds"] = args.rounds
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    m = machine()
    load_before = os.getloadavg()
    log(f"turbo_tasks benchmarks ({'quick' if args.quick else 'full'}): {', '.join(args.only)}")
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
        ctx.start()
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
        f_benches = [b for b in ("F1", "F2", "F3", "F4") if b in args.only]
        if f_benches:
            if args.layer == "core":
                write.Queues().flush()
            ctx.start_worker()
            ctx.start_asgi()
            from bench import fanout

            for name in f_benches:
                bench(name, getattr(fanout, name.lower()), ctx)
    finally:
        ctx.close()

    from bench import report

    targets = report.evaluate_targets(results)
    wall = time.monotonic() - started
    doc = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "quick" if args.quick else "full",
        "wall_seconds": round(wall, 1),
        "bench_seconds": {k: round(v, 1) for k, v in timings.items()},
        "machine": m,
        "source": source_state(),
        # Other processes on the machine skew everything: recorded so a reader can tell.
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "config": {k: config[k] for k in args.only},
        "celery_pool": args.pool,
        "channel_layer": LAYERS[args.layer],
        "sqlite_on_tmpfs": str(ctx.tmp).startswith("/dev/shm"),
        "targets": targets,
        "errors": errors,
        "results": results,
    }
    (RESULTS / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    md = render_markdown(doc)
    (RESULTS / "results.md").write_text(md)
    report.chart(results, RESULTS / "chart.png")
    log("")
    log(md)
    log(f"wrote {RESULTS / 'results.json'}, results.md, chart.png ({wall:.0f}s)")
    if errors:
        log(f"FAILED: {', '.join(errors)} (logs in {ctx.log_dir})")
        return 1
    return 0


def render_markdown(doc: dict[str, Any]) -> str:
    from bench import report

    timings = ", ".join(f"{k} {v:.0f}s" for k, v in doc["bench_seconds"].items())
    return "\n".join(
        [
            f"## turbo_tasks benchmarks — {doc['date']} ({doc['mode']}, `{doc['command']}`)",
            "",
            f"Machine: {machine_line(doc['machine'])}.",
            f"Code measured: {doc.get('source', 'unknown')}.",
            f"Celery worker: one process, `--pool {doc['celery_pool']} -c 1`. Channel layer: "
            f"`{doc.get('channel_layer', LAYERS['core'])}`. SQLite on tmpfs: "
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
