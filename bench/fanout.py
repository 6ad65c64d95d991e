# ruff: noqa: RUF001, RUF003  (×, − and – are meant: the output is Markdown)
"""F1 (throughput), F2 (latency) and F3 (breadth): commit in this process, a real Celery
worker renders and pushes, uvicorn serves the turbo_tasks consumer, and bench/client.py
(a subprocess) holds the websockets and timestamps every item it receives."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import transaction

from bench.benchapp.models import Message, NaiveMessage, Room
from bench.benchapp.templatetags.bench_tags import RENDERS_KEY
from bench.report import percentile, summary
from bench.write import checkpoint
from scripts.procs import ROOT
from turbo_tasks import conf

CLIENT = ROOT / "bench" / "client.py"


class Client:
    """One bench/client.py subprocess: subscribed on construction, result() when done."""

    def __init__(
        self,
        ctx: Any,
        stream: str,
        *,
        sockets: int,
        expect: int,
        timeout: float,
        name: str,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.timeout = timeout
        log_path: Path = ctx.log_dir / f"client-{name}.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(CLIENT),
                    *(arg for url in ctx.ws_urls for arg in ("--url", url)),
                    "--stream",
                    stream,
                    "--sockets",
                    str(sockets),
                    "--expect",
                    str(expect),
                    "--timeout",
                    str(timeout),
                    *extra,
                ],
                cwd=ROOT,
                env=ctx.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        ctx.track(self.proc)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = json.loads(self._line("READY", 120 + sockets * 0.1))
        self.ready = ready
        self.open_seconds = ready["open_seconds"]
        self.open_errors = ready["open_error_count"]
        if self.open_errors:
            ctx.log(
                f"  ({self.open_errors} websocket(s) failed to connect/subscribe and were "
                f"retried, e.g. {ready['open_errors'][0]}; see logs/uvicorn.log)"
            )

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise TimeoutError(f"websocket client sent no {prefix} within {timeout}s") from None
            if line is None:
                raise RuntimeError(f"websocket client exited before {prefix} (see its log)")
            if line.startswith(prefix + " "):
                return line[len(prefix) + 1 :]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_done(self) -> None:
        """Until every socket has its items (or the timeout), before the sockets close."""
        self._line("DONE", self.timeout + 30)

    def result(self) -> dict[str, Any]:
        try:
            return json.loads(self._line("RESULT", self.timeout + 30))
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("STOP\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def backlog(broker: redis.Redis) -> int:
    """Broker messages not yet done: queued in either queue, or taken by the worker and not
    yet acknowledged (kombu's ``unacked`` hash)."""
    return int(
        broker.llen(conf.get("QUEUE")) + broker.llen(settings.NAIVE_QUEUE) + broker.hlen("unacked")
    )


def wait_idle(broker: redis.Redis, timeout: float = 60) -> float:
    """Wait until both queues are empty and the worker holds no unacknowledged message;
    return how long that took."""
    start = time.monotonic()
    while backlog(broker):
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"the worker did not drain its queues within {timeout:.0f}s "
                f"({backlog(broker)} messages left)"
            )
        time.sleep(0.05)
    return time.monotonic() - start


def spent(
    ctx: Any, before: dict[str, Any], per: float, unit: str
) -> tuple[dict[str, float], dict[str, Counter[str]]]:
    """What the run used since ``before`` (``ctx.usage()``): CPU ms per ``unit`` (``per`` of
    them) of each role's processes (all of them: two workers count twice), the machine's
    busy cores meanwhile (1.0 = one core busy on average, other sessions' load included),
    and the calls per command on the broker and the channel layer's redis-servers (totals,
    by server role)."""
    after = ctx.usage()
    used = {
        f"{role}_cpu_ms_per_{unit}": (after["cpu"][role] - before["cpu"][role]) * 1e3 / per
        for role in after["cpu"]
    }
    used["busy_cores"] = (after["busy"] - before["busy"]) / (after["at"] - before["at"])
    calls = {
        server: Counter(
            {k: n - before["calls"][server].get(k, 0) for k, n in counts.items() if k != "info"}
        )
        for server, counts in after["calls"].items()
    }
    return used, calls


def per_unit(calls: dict[str, Counter[str]], units: float) -> dict[str, dict[str, float]]:
    """Calls per command per unit, by server role, the most frequent first."""
    return {
        server: {k: round(n / units, 3) for k, n in counts.most_common() if n > 0}
        for server, counts in calls.items()
    }


def history_groups(keys: list[Any], r: int, off: Callable[[Any], bool]) -> list[Any]:
    """``keys`` ordered so that the worker and ASGI server restart once per round: the
    history-on variants first in even rounds, the history-off ones first in odd rounds."""
    on = [k for k in keys if not off(k)]
    offs = [k for k in keys if off(k)]
    return on + offs if r % 2 == 0 else offs + on


def produce(model: Any, room: Room, count: int, batch: int) -> None:
    if batch <= 1:
        for i in range(count):
            model.objects.create(room=room, text=str(i))
        return
    for start in range(0, count, batch):
        with transaction.atomic():
            for i in range(start, min(count, start + batch)):
                model.objects.create(room=room, text=str(i))


# -- F1 ----------------------------------------------------------------------------------

F1_VARIANTS = {
    "turbo_tasks": "turbo_tasks, transactions of {batch} saves",
    "turbo_tasks_nohistory": "turbo_tasks with catch-up off (HISTORY_LENGTH 0), "
    "transactions of {batch} saves",
    "naive": "naive Celery task per save, transactions of {batch} saves",
    "turbo_tasks_autocommit": "turbo_tasks, one save per transaction (autocommit)",
}
F1_MODES = {
    "live": "producer and worker at the same time: first commit → last item received",
    "drain": "worker's consumer paused while the producer commits everything, then "
    "resumed: items after the first one / (last item − first item), the worker's own rate",
}


def f1(ctx: Any, cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    broker = redis.Redis.from_url(settings.REDIS_URL)
    batch = cfg["batch"]
    plan = {
        "turbo_tasks": (Message, cfg["changes"], batch, conf.get("QUEUE")),
        "turbo_tasks_nohistory": (Message, cfg["changes"], batch, conf.get("QUEUE")),
        "naive": (NaiveMessage, cfg["naive_changes"], batch, settings.NAIVE_QUEUE),
        "turbo_tasks_autocommit": (Message, cfg["autocommit_changes"], 1, conf.get("QUEUE")),
    }
    plan = {name: plan[name] for name in cfg.get("variants", plan)}
    keys = [(name, mode) for name in plan for mode in F1_MODES]
    values: dict[tuple[str, str], dict[str, list[float]]] = {key: {} for key in keys}
    complete: dict[tuple[str, str], int] = dict.fromkeys(keys, 0)
    calls: dict[tuple[str, str], dict[str, Counter[str]]] = {key: {} for key in keys}
    delivered_total: dict[tuple[str, str], int] = dict.fromkeys(keys, 0)
    for r in range(cfg["rounds"]):
        for name, mode in history_groups(keys, r, lambda k: k[0].endswith("_nohistory")):
            model, count, size, queue_name = plan[name]
            wait_idle(broker)
            ctx.set_history(not name.endswith("_nohistory"))
            ctx.check_alive()
            checkpoint()
            room = Room.objects.create(name=f"f1-{name}-{mode}-{r}")
            client = Client(
                ctx,
                room.stream.signed_name,
                sockets=1,
                expect=count,
                timeout=cfg["timeout"],
                name=f"f1-{name}-{mode}",
            )
            if mode == "drain":
                ctx.pause_queue(queue_name)
            before = ctx.usage()
            start = produce_start = time.time()
            produce(model, room, count, size)
            produced = time.time()
            if mode == "drain":
                start = time.time()
                ctx.resume_queue(queue_name)
            res = client.result()
            items = res["items"]
            delivered = len(items)
            used, round_calls = spent(ctx, before, max(delivered, 1), "change")
            for server, counts in round_calls.items():
                calls[(name, mode)].setdefault(server, Counter()).update(counts)
            delivered_total[(name, mode)] += delivered
            times = sorted(i["first"] for i in items.values()) or [res["finished_at"]]
            end = times[-1] if res["complete"] else res["finished_at"]
            complete[(name, mode)] += bool(res["complete"])
            if mode == "drain":
                # Celery takes a moment (a few hundred ms) to start consuming again after
                # add_consumer; time the steady drain from the first item to the last.
                first = times[0]
                counted = sum(1 for t in times if t > first)
                throughput = counted / (end - first) if end > first else 0.0
                extra = {
                    "resume_to_first_item_seconds": first - start,
                    # The worker is paused: what this process alone can commit.
                    "producer_alone_rate": count / (produced - produce_start),
                }
            else:
                throughput = delivered / (end - start)
                extra = {"producer_seconds": produced - start}
            metrics = {
                "throughput": throughput,
                "seconds": end - start,
                **extra,
                "delivered": float(delivered),
                "ws_frames": float(res["frames"]),
                # From the first commit to the last item (the drain mode's pause included).
                **used,
            }
            for key, value in metrics.items():
                values[(name, mode)].setdefault(key, []).append(value)
            log(
                f"  F1 round {r + 1}/{cfg['rounds']} {name} {mode}: {delivered}/{count} in "
                f"{end - start:.2f}s = {metrics['throughput']:,.0f}/s"
                + (f" (producer {produced - start:.2f}s)" if mode == "live" else "")
                + f", {res['frames']} ws frames"
            )
    return {
        "unit": "changes/s delivered to a websocket",
        "variants": {k: F1_VARIANTS[k].format(batch=batch) for k in plan},
        "modes": F1_MODES,
        "changes": {name: plan[name][1] for name in plan},
        "config": {**cfg, "pool": ctx.pool, "worker_concurrency": 1},
        "values": {
            f"{name}/{mode}": {
                **{key: summary(vals) for key, vals in values[(name, mode)].items()},
                "runs": cfg["rounds"],
                "complete_runs": complete[(name, mode)],
                "redis_calls_per_change": per_unit(
                    calls[(name, mode)], max(delivered_total[(name, mode)], 1)
                ),
            }
            for name, mode in keys
        },
    }


# -- F2 ----------------------------------------------------------------------------------

F2_VARIANTS = {
    "turbo_tasks": "turbo_tasks, autocommit saves",
    "turbo_tasks_nohistory": "turbo_tasks with catch-up off (HISTORY_LENGTH 0), autocommit saves",
    "naive": "naive Celery task per save, autocommit saves",
}


def f2(ctx: Any, cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    broker = redis.Redis.from_url(settings.REDIS_URL)
    rate = cfg["rate"]
    count = int(cfg["seconds"] * rate)
    models = {
        "turbo_tasks": Message,
        "turbo_tasks_nohistory": Message,
        "naive": NaiveMessage,
    }
    models = {name: models[name] for name in cfg.get("variants", models)}
    per_round: dict[str, dict[str, list[float]]] = {v: {} for v in models}
    pooled: dict[str, list[float]] = {v: [] for v in models}
    save_ms: dict[str, list[float]] = {v: [] for v in models}
    # Where the time goes: before the save → the worker starts the task (save, broker,
    # Celery), → it renders the row's template (reload, hook), → the frame reaches the client
    # (channel layer, ASGI server, websocket). Stamped by {% task_started_at %}/{% rendered_at %}.
    to_start_ms: dict[str, list[float]] = {v: [] for v in models}
    to_render_ms: dict[str, list[float]] = {v: [] for v in models}
    to_socket_ms: dict[str, list[float]] = {v: [] for v in models}
    lost: dict[str, int] = dict.fromkeys(models, 0)
    # Start on an idle worker: a backlog F1 left (e.g. an incomplete round) would otherwise
    # be delivered ahead of F2's first round and land in its latencies.
    left = backlog(broker)
    waited = wait_idle(broker, cfg.get("idle_timeout", 300))
    log(f"  F2: broker backlog {left} message(s) at the start, drained in {waited:.1f}s")
    for r in range(cfg["rounds"]):
        for name in history_groups(list(models), r, lambda k: k.endswith("_nohistory")):
            model = models[name]
            wait_idle(broker)
            ctx.set_history(not name.endswith("_nohistory"))
            ctx.check_alive()
            room = Room.objects.create(name=f"f2-{name}-{r}", stamped=True)
            warm = int(cfg["warmup_seconds"] * rate)
            client = Client(
                ctx,
                room.stream.signed_name,
                sockets=1,
                expect=warm + count,
                timeout=cfg["warmup_seconds"] + cfg["seconds"] + 30,
                name=f"f2-{name}",
            )
            checkpoint()
            time.sleep(0.2)
            start = time.time() + 0.05
            for i in range(warm + count):
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                # The timestamp is taken just before the save, so the latency includes the
                # INSERT and the commit themselves (reported as save_ms). Warm-up rows
                # (the first warmup_seconds) are marked "w" and not counted.
                ts = time.time()
                model.objects.create(room=room, text=f"{ts:.6f}" if i >= warm else "w")
                if i >= warm:
                    save_ms[name].append((time.time() - ts) * 1e3)
            res = client.result()
            measured = [i for i in res["items"].values() if i["text"] != "w"]
            latencies = [(i["first"] - float(i["text"])) * 1e3 for i in measured]
            for i in measured:
                to_start_ms[name].append((i["started"] - float(i["text"])) * 1e3)
                to_render_ms[name].append((i["rendered"] - i["started"]) * 1e3)
                to_socket_ms[name].append((i["first"] - i["rendered"]) * 1e3)
            lost[name] += count - len(latencies)
            pooled[name].extend(latencies)
            for p in (50, 95, 99):
                per_round[name].setdefault(f"p{p}", []).append(percentile(latencies, p))
            per_round[name].setdefault("max", []).append(max(latencies))
            log(
                f"  F2 round {r + 1}/{cfg['rounds']} {name}: {len(latencies)}/{count} frames, "
                f"p50 {percentile(latencies, 50):.2f} ms, p95 {percentile(latencies, 95):.2f} ms, "
                f"p99 {percentile(latencies, 99):.2f} ms"
            )
    return {
        "unit": "ms, time.time() before the save → frame received by the websocket client",
        "rate": rate,
        "variants": {name: F2_VARIANTS[name] for name in models},
        "config": {**cfg, "changes_per_round": count, "pool": ctx.pool},
        "backlog_at_start": left,
        "backlog_drain_seconds": waited,
        "values": {
            name: {
                **{key: summary(vals) for key, vals in per_round[name].items()},
                "pooled": {
                    "n": len(pooled[name]),
                    "p50": percentile(pooled[name], 50),
                    "p95": percentile(pooled[name], 95),
                    "p99": percentile(pooled[name], 99),
                    "max": max(pooled[name]),
                },
                "save_ms_p50": percentile(save_ms[name], 50),
                "to_start_ms_p50": percentile(to_start_ms[name], 50),
                "to_render_ms_p50": percentile(to_render_ms[name], 50),
                "to_socket_ms_p50": percentile(to_socket_ms[name], 50),
                "lost": lost[name],
            }
            for name in models
        },
    }


# -- F3 ----------------------------------------------------------------------------------


def f3(ctx: Any, cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    broker = redis.Redis.from_url(settings.REDIS_URL)
    ctx.set_history(True)
    actions = cfg["actions"]
    out: dict[str, Any] = {}
    for n in cfg["sockets"]:
        ctx.check_alive()
        wait_idle(broker)
        checkpoint()
        room = Room.objects.create(name=f"f3-{n}", counted=True)
        opening = ctx.usage()
        client = Client(
            ctx,
            room.stream.signed_name,
            sockets=n,
            expect=actions,
            timeout=actions * cfg["gap"] + 60,
            name=f"f3-{n}",
        )
        opened, open_calls = spent(ctx, opening, n, "socket")
        broker.delete(RENDERS_KEY)
        time.sleep(0.5)
        before = ctx.usage()
        for _i in range(actions):
            ts = time.time()
            Message.objects.create(room=room, text=f"{ts:.6f}")
            time.sleep(cfg["gap"])
        client.wait_done()
        # Per socket and frame (each action is one frame to each of the n sockets), before
        # the sockets close.
        used, calls = spent(ctx, before, actions * n, "socket_frame")
        res = client.result()
        time.sleep(0.2)
        renders = int(broker.get(RENDERS_KEY) or 0)
        items = res["items"].values()
        all_ms = [(i["last"] - float(i["text"])) * 1e3 for i in items if i["n"] == n]
        median_ms = [(i["median"] - float(i["text"])) * 1e3 for i in items]
        complete = res["complete"] and len(all_ms) == actions
        out[str(n)] = {
            "all_ms": summary(all_ms),
            "median_socket_ms": summary(median_ms),
            "first_socket_ms": summary([(i["first"] - float(i["text"])) * 1e3 for i in items]),
            "renders": renders,
            "actions": actions,
            "renders_per_action": renders / actions,
            "complete": complete,
            "open_seconds": client.open_seconds,
            "open_errors_retried": client.open_errors,
            # Opening and subscribing the sockets (client process start included).
            "open": {**opened, "redis_calls_per_socket": per_unit(open_calls, n)},
            # The actions (and the gaps between them, idle but for the gap check).
            "fanout": {
                **used,
                "redis_calls_per_action": per_unit(calls, actions),
            },
        }
        log(
            f"  F3 N={n}: opened in {client.open_seconds:.1f}s; all sockets in "
            f"{', '.join(f'{v:.1f}' for v in all_ms)} ms; {renders} renders for "
            f"{actions} actions; complete={complete}"
        )
    return {
        "unit": "ms, time.time() before the save → frame at all / the median socket",
        "config": {**cfg, "pool": ctx.pool},
        "per_sockets": out,
    }


# -- F4 ----------------------------------------------------------------------------------


def stream_seq(group: str) -> int:
    """The stream's sequence number: frames appended to its history so far (on the shard
    of the channel layer that holds it)."""
    from channels.layers import get_channel_layer

    from turbo_tasks import _compat, history

    layer = get_channel_layer()
    meta, _ = history._keys(layer, group)
    return int(_compat.sync_client(layer, _compat.shard_index(layer, group)).hget(meta, "seq") or 0)


def spy(ctx: Any, pids: dict[str, int], label: str) -> list[subprocess.Popen[bytes]]:
    """With --profile and py-spy installed: sample each process for 15 s into
    bench/results/profile_<label>-<name>.txt (collapsed stacks, for flame graphs)."""
    import shutil

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not ctx.args.profile or not Path(exe).exists():
        return []
    out = ctx.log_dir.parent
    return [
        subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                "15",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out / f"profile_{label}-{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def f4(ctx: Any, cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Catch-up after a server restart: N sockets on one stream, the ASGI server restarts,
    ``frames`` changes are committed and pushed while it is down, then every socket
    reconnects at once with its ``since``: time until each has all frames and
    ``subscribed``."""
    broker = redis.Redis.from_url(settings.REDIS_URL)
    n, frames = cfg["sockets"], cfg["frames"]
    per_round: dict[str, list[float]] = {}
    rounds = []
    for r in range(cfg["rounds"]):
        wait_idle(broker)
        ctx.set_history(True)
        ctx.check_alive()
        checkpoint()
        room = Room.objects.create(name=f"f4-{r}")
        group = room.stream.group_name
        client = Client(
            ctx,
            room.stream.signed_name,
            sockets=n,
            expect=frames,
            timeout=cfg["timeout"],
            name="f4",
            extra=("--catch-up",),
        )
        before = stream_seq(group)
        ctx.stop_asgi()
        down_at = time.monotonic()
        for i in range(frames):
            Message.objects.create(room=room, text=f"f4 {i}")
        wait_idle(broker)
        pushed = stream_seq(group) - before
        if pushed != frames:
            log(f"  F4: {pushed} frames in the history while the server was down, not {frames}")
        ctx.start_asgi()
        down_s = time.monotonic() - down_at
        pids = {proc.name.replace("uvicorn", "asgi"): proc.pid for proc in ctx.asgis}
        spies = spy(ctx, {**pids, "client": client.proc.pid}, f"f4-{r}")
        time.sleep(0.2)
        catching_up = ctx.usage()
        client.send("GO")
        res = client.result()
        # Per socket: its reconnect, subscribe with since, the replay and its close.
        used, calls = spent(ctx, catching_up, n, "socket")
        for key, value in used.items():
            per_round.setdefault(key, []).append(value)
        for proc in spies:
            proc.wait(60)
        for key in ("all_seconds", "p50_seconds", "first_seconds"):
            if res[key] is not None:
                per_round.setdefault(key, []).append(res[key])
        rounds.append(
            {
                **res,
                "frames_in_history": pushed,
                "server_down_seconds": down_s,
                "redis_calls_per_socket": per_unit(calls, n),
            }
        )
        all_s = res["all_seconds"]
        log(
            f"  F4 round {r + 1}/{cfg['rounds']}: {res['caught_up']}/{n} sockets caught up "
            f"on {pushed} frames; all in "
            + (f"{all_s:.2f}s" if all_s is not None else "— (incomplete)")
            + f", median socket {res['p50_seconds'] or 0:.2f}s; "
            f"{res['error_count']} reconnect errors, {res['resets']} resets; "
            f"subscribed in {client.open_seconds:.1f}s, server down {down_s:.1f}s"
        )
    return {
        "unit": "s from the reconnect to every socket having all frames and `subscribed`",
        "config": {**cfg, "pool": ctx.pool},
        "values": {key: summary(vals) for key, vals in per_round.items()},
        "complete": all(r["complete"] for r in rounds),
        "rounds": rounds,
    }
