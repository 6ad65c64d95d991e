"""W1 (cost of one committed save) and W2 (1,000 saves in one transaction).

Runs in bench/run.py's process, with Django set up on bench.settings and no Celery worker
consuming: published messages just pile up in their queue and are deleted between batches.
"""

from __future__ import annotations

import asyncio
import base64
import cProfile
import functools
import gc
import io
import json
import pstats
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings

from bench.benchapp.models import Message, NaiveMessage, PlainMessage, Room
from bench.report import paired, summary
from bench.tdapp.models import TDMessage, TDRoom
from turbo_tasks import conf

FLOOR_KEY = "bench:floor"
# Fake subscribers look like the channels of real ASGI server processes
# ("specific.<process>!<socket>"): spread over FAKE_PROCESSES servers, so a group_send
# writes FAKE_PROCESSES channel keys, each message carrying its member names.
FAKE_PROCESSES = 4
_PROCESS_IDS = [uuid.uuid4().hex for _ in range(FAKE_PROCESSES)]


def fake_channels(n: int) -> list[str]:
    return [f"specific.{_PROCESS_IDS[i % FAKE_PROCESSES]}!{uuid.uuid4().hex}" for i in range(n)]


def add_members(group: str, n: int) -> None:
    layer = get_channel_layer()

    async def add_all() -> None:
        limit = asyncio.Semaphore(50)

        async def add(name: str) -> None:
            async with limit:
                await layer.group_add(group, name)

        await asyncio.gather(*(add(name) for name in fake_channels(n)))

    async_to_sync(add_all)()


def load_td_room(name: str) -> TDRoom:
    """A TDRoom as a turbo-django view sees it: loaded from the database. (turbo-django
    binds ``instance.stream`` in ``post_init``, before ``objects.create()`` has a pk, so a
    freshly created room would stream to the group of pk ``None``, shared by all of them.)"""
    return TDRoom.objects.get(pk=TDRoom.objects.create(name=name).pk)


class Queues:
    """The broker queues (and the channel keys of the fake subscribers) we empty between
    batches, outside the timed code."""

    def __init__(self) -> None:
        self.broker = redis.Redis.from_url(settings.REDIS_URL)
        # Every shard: the fake channel keys hash to any of them (bench/run.py --shards).
        self.channels = [redis.Redis.from_url(url) for url in settings.CHANNEL_REDIS_URLS]
        layer = get_channel_layer()
        self.fake_keys = [f"{layer.prefix}specific.{p}!" for p in _PROCESS_IDS]

    @property
    def names(self) -> list[str]:
        return [conf.get("QUEUE"), settings.NAIVE_QUEUE, FLOOR_KEY]

    def lengths(self) -> dict[str, int]:
        return {name: int(self.broker.llen(name)) for name in self.names}

    def flush(self) -> None:
        self.broker.delete(*self.names)
        for shard in self.channels:
            shard.delete(*self.fake_keys)


def checkpoint() -> None:
    """Fold SQLite's WAL back into the database now, so its periodic checkpoint does not
    land in (and add noise to) a random timed batch."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def timed(fn: Callable[[], None]) -> float:
    checkpoint()
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- W1 --------------------------------------------------------------------------------


W1_VARIANTS = {
    "a": "no broadcasting (PlainMessage, no receivers)",
    "a_td": "no broadcasting, turbo-django's table (TDMessage, receivers disconnected)",
    "b": "turbo_tasks (direct mode, Redis broker, no worker; metrics on)",
    "b_off": "turbo_tasks, as b with TURBO_TASKS['METRICS'] False",
    "c": "turbo-django 0.4.4 (sync render + group_send in the save)",
    "d": "naive Celery (post_save -> task.delay(pk))",
    "e": "one raw Redis LPUSH (floor)",
    "e_after": "a plain save, then one raw Redis LPUSH: the floor where turbo_tasks' LPUSH runs",
}


class TurboDjangoOff:
    """Disconnects turbo-django's receivers for TDMessage (variant a_td)."""

    def __init__(self) -> None:
        from django.db.models.signals import post_delete, post_init, post_save
        from turbo.signals import (
            post_delete_broadcast_model,
            post_init_broadcast_model,
            post_save_broadcast_model,
        )

        self.pairs = [
            (post_init, post_init_broadcast_model),
            (post_save, post_save_broadcast_model),
            (post_delete, post_delete_broadcast_model),
        ]

    def __enter__(self) -> None:
        for signal, receiver in self.pairs:
            signal.disconnect(receiver, sender=TDMessage)

    def __exit__(self, *exc: Any) -> None:
        for signal, receiver in self.pairs:
            signal.connect(receiver, sender=TDMessage)


def w1(cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    queues = Queues()
    queues.flush()
    ns: list[int] = cfg["subscribers"]
    rooms: dict[int, tuple[Room, TDRoom]] = {}
    for n in ns:
        room = Room.objects.create(name=f"w1-{n}")
        td_room = load_td_room(f"w1-{n}")
        started = time.perf_counter()
        add_members(room.stream.group_name, n)
        add_members(td_room.stream.broadcastable_stream_name, n)
        log(f"  W1: {n} fake subscribers in each group ({time.perf_counter() - started:.1f}s)")
        rooms[n] = (room, td_room)

    floor = redis.Redis.from_url(settings.REDIS_URL)
    payload = [b"x" * 1000]  # replaced by a real turbo_tasks message after the warm-up
    td_off = TurboDjangoOff()

    def saves(model: Any, room: Any, k: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(k):
                model.objects.create(room=room, text=f"message {i}")

        return run

    def variant(name: str, n: int, k: int) -> float:
        room, td_room = rooms[n]
        if name == "a":
            return timed(saves(PlainMessage, room, k))
        if name == "a_td":
            with td_off:
                return timed(saves(TDMessage, td_room, k))
        if name == "b":
            return timed(saves(Message, room, k))
        if name == "b_off":
            off = {**(getattr(settings, "TURBO_TASKS", None) or {}), "METRICS": False}
            with override_settings(TURBO_TASKS=off):
                return timed(saves(Message, room, k))
        if name == "c":
            return timed(saves(TDMessage, td_room, k))
        if name == "d":
            return timed(saves(NaiveMessage, room, k))
        if name == "e":
            message = payload[0]

            def lpush() -> None:
                for _ in range(k):
                    floor.lpush(FLOOR_KEY, message)

            return timed(lpush)
        if name == "e_after":
            # e in a loop of its own keeps redis-server busy; an LPUSH after each commit,
            # as b makes it, costs more on a VM (the server is woken for each one).
            message = payload[0]

            def save_then_lpush() -> None:
                for i in range(k):
                    PlainMessage.objects.create(room=room, text=f"message {i}")
                    floor.lpush(FLOOR_KEY, message)

            return timed(save_then_lpush)
        raise ValueError(name)

    def batch_size(name: str, n: int) -> int:
        if name == "c":  # turbo-django: bounded by the channel capacity (100) and by time
            return int(cfg["td_saves"].get(n, cfg["td_saves"]["default"]))
        return int(cfg["saves"])

    # Warm-up (not recorded): imports, first connections, kombu's queue declaration.
    for name in W1_VARIANTS:
        variant(name, ns[0], 5)
        if name == "b":
            raw = queues.broker.lindex(conf.get("QUEUE"), 0)
            if raw:
                payload[0] = raw
        queues.flush()
    log(f"  W1: floor payload = one turbo_tasks message, {len(payload[0])} bytes")

    values: dict[int, dict[str, list[float]]] = {n: {v: [] for v in W1_VARIANTS} for n in ns}
    order = list(W1_VARIANTS)
    for r in range(cfg["rounds"]):
        for n in ns:
            for name in order:
                k = batch_size(name, n)
                seconds = variant(name, n, k)
                values[n][name].append(seconds / k * 1e6)  # µs per save
                queues.flush()
        log(
            f"  W1 round {r + 1}/{cfg['rounds']}: "
            + "; ".join(
                f"N={n}: " + " ".join(f"{v}={values[n][v][-1]:.0f}" for v in order) for n in ns
            )
            + " (µs/save)"
        )

    result: dict[str, Any] = {
        "unit": "µs per committed save",
        "operation": "Model.objects.create(room=room, text=...) in autocommit",
        "variants": W1_VARIANTS,
        "config": {
            "rounds": cfg["rounds"],
            "saves_per_batch": cfg["saves"],
            "turbo_django_saves_per_batch": cfg["td_saves"],
            "fake_subscriber_processes": FAKE_PROCESSES,
            "floor_payload_bytes": len(payload[0]),
        },
        "per_subscribers": {},
    }
    for n in ns:
        v = values[n]
        result["per_subscribers"][str(n)] = {
            "values": {name: summary(v[name]) for name in order},
            "added": {
                "b": summary(paired(v["b"], v["a"], lambda x, y: x - y)),
                "b_off": summary(paired(v["b_off"], v["a"], lambda x, y: x - y)),
                "c": summary(paired(v["c"], v["a_td"], lambda x, y: x - y)),
                "d": summary(paired(v["d"], v["a"], lambda x, y: x - y)),
                "e_after": summary(paired(v["e_after"], v["a"], lambda x, y: x - y)),
            },
            # Per-round ratios: (b-a)/(b_off-a) (what metrics add), (b-a)/e, (b-a)/(c-a_td).
            "metrics_on_over_off": summary(
                [(b - a) / (o - a) for b, o, a in zip(v["b"], v["b_off"], v["a"], strict=True)]
            ),
            "b_added_over_e": summary(
                [(b - a) / e for b, a, e in zip(v["b"], v["a"], v["e"], strict=True)]
            ),
            "b_added_over_e_after_added": summary(
                [(b - a) / (ea - a) for b, a, ea in zip(v["b"], v["a"], v["e_after"], strict=True)]
            ),
            "b_added_over_c_added": summary(
                [
                    (b - a) / (c - atd)
                    for b, a, c, atd in zip(v["b"], v["a"], v["c"], v["a_td"], strict=True)
                ]
            ),
        }
    first, last = str(ns[0]), str(ns[-1])
    vb_first = values[ns[0]]["b"]
    vb_last = values[ns[-1]]["b"]
    result["b_flatness"] = {
        "from": first,
        "to": last,
        "per_save": summary([y / x for x, y in zip(vb_first, vb_last, strict=True)]),
        # The same ratio for the baseline, which cannot depend on N: the noise floor.
        "control_a": summary(
            [y / x for x, y in zip(values[ns[0]]["a"], values[ns[-1]]["a"], strict=True)]
        ),
        "added": summary(
            [
                (bl - al) / (bf - af)
                for bf, af, bl, al in zip(
                    vb_first,
                    values[ns[0]]["a"],
                    vb_last,
                    values[ns[-1]]["a"],
                    strict=True,
                )
            ]
        ),
    }
    return result


# -- W2 --------------------------------------------------------------------------------


W2_VARIANTS = {
    "off": "no broadcasting (PlainMessage)",
    "turbo_tasks": "turbo_tasks (direct mode)",
    "naive": "naive Celery (on_commit -> task.delay(pk) per save)",
    "turbo_django": "turbo-django 0.4.4 (sync broadcast per save, 1 subscriber)",
}


class CommitHookTimer:
    """Times ``connection.run_and_clear_commit_hooks`` (the on-commit callbacks Django runs
    in ``atomic().__exit__`` right after COMMIT)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> CommitHookTimer:
        original = connection.run_and_clear_commit_hooks

        def timed_hooks() -> None:
            start = time.perf_counter()
            try:
                original()
            finally:
                self.seconds += time.perf_counter() - start

        connection.run_and_clear_commit_hooks = timed_hooks
        return self

    def __exit__(self, *exc: Any) -> None:
        del connection.run_and_clear_commit_hooks  # back to the class's method


def count_jobs(raw_messages: list[bytes]) -> int:
    jobs = 0
    for raw in raw_messages:
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        jobs += len(body[0][0])
    return jobs


def w2(cfg: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    queues = Queues()
    queues.flush()
    room = Room.objects.create(name="w2")
    td_room = load_td_room("w2")
    add_members(room.stream.group_name, 1)
    add_members(td_room.stream.broadcastable_stream_name, 1)
    models = {
        "off": (PlainMessage, room),
        "turbo_tasks": (Message, room),
        "naive": (NaiveMessage, room),
        "turbo_django": (TDMessage, td_room),
    }
    n = cfg["saves"]

    def run(name: str, saves: int) -> dict[str, float]:
        model, target = models[name]
        queues.flush()
        checkpoint()
        gc.collect()
        with CommitHookTimer() as hooks:
            atomic = transaction.atomic()
            start = time.perf_counter()
            atomic.__enter__()
            for i in range(saves):
                model.objects.create(room=target, text=f"message {i}")
            before_exit = time.perf_counter()
            atomic.__exit__(None, None, None)
            end = time.perf_counter()
        lengths = queues.lengths()
        tt_raw = queues.broker.lrange(conf.get("QUEUE"), 0, -1)
        out = {
            "in_transaction_ms": (before_exit - start) * 1e3,
            "exit_ms": (end - before_exit) * 1e3,
            "commit_hooks_ms": hooks.seconds * 1e3,
            "total_ms": (end - start) * 1e3,
            "messages": float(lengths[conf.get("QUEUE")] + lengths[settings.NAIVE_QUEUE]),
            "jobs": float(count_jobs(tt_raw)) if tt_raw else 0.0,
        }
        queues.flush()
        return out

    variants = {k: v for k, v in W2_VARIANTS.items() if k in cfg["variants"]}
    for name in variants:  # warm-up
        run(name, 5)
    values: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for r in range(cfg["rounds"]):
        for name in variants:
            for key, value in run(name, n).items():
                values[name].setdefault(key, []).append(value)
        log(
            f"  W2 round {r + 1}/{cfg['rounds']}: "
            + "; ".join(
                f"{v}: hooks {values[v]['commit_hooks_ms'][-1]:.1f} ms, "
                f"total {values[v]['total_ms'][-1]:.0f} ms, "
                f"{values[v]['messages'][-1]:.0f} msg"
                for v in variants
            )
        )
    return {
        "unit": "ms per transaction of saves",
        "saves": n,
        "variants": variants,
        "config": {"rounds": cfg["rounds"], "saves": n},
        "values": {
            name: {key: summary(vals) for key, vals in metrics.items()}
            for name, metrics in values.items()
        },
        "after_commit_added_ms": summary(
            paired(
                values["turbo_tasks"]["commit_hooks_ms"],
                values["off"]["commit_hooks_ms"],
                lambda x, y: x - y,
            )
        ),
        "exit_added_ms": summary(
            paired(values["turbo_tasks"]["exit_ms"], values["off"]["exit_ms"], lambda x, y: x - y)
        ),
    }


# -- profile -----------------------------------------------------------------------------


def profile_write_path(saves: int) -> str:
    """cProfile of ``saves`` turbo_tasks saves and as many plain ones, for the report."""
    queues = Queues()
    room = Room.objects.create(name="profile")
    out = io.StringIO()
    for label, model in (
        ("turbo_tasks (Message)", Message),
        ("baseline (PlainMessage)", PlainMessage),
    ):
        for i in range(50):  # warm-up
            model.objects.create(room=room, text=f"warm {i}")
        queues.flush()
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(saves):
            model.objects.create(room=room, text=f"message {i}")
        profiler.disable()
        queues.flush()
        out.write(f"==== {label}: {saves} saves ====\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()


def _stage_cpu(run: Callable[[], Any], calls: int) -> str:
    """Run ``run`` (``calls`` deliveries) once without a profiler, timing the calling
    thread's CPU in each stage of ``delivery.deliver`` (time.thread_time)."""
    from turbo_tasks import delivery, layers

    spent: dict[str, float] = {}
    originals = {
        (delivery, "run_hooks"): "hooks",
        (delivery, "render_frames"): "render",
        (layers, "push"): "push",
    }

    def timed(fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[stage] = spent.get(stage, 0.0) + time.thread_time() - start

        return wrapper

    for (module, name), stage in originals.items():
        setattr(module, name, timed(getattr(module, name), stage))
    start = time.thread_time()
    try:
        run()
    finally:
        for module, name in originals:
            setattr(module, name, getattr(module, name).__wrapped__)
    total = time.thread_time() - start
    parts = ", ".join(
        f"{stage} {spent.get(stage, 0.0) / calls * 1e3:.2f}" for stage in originals.values()
    )
    return f"{total / calls * 1e3:.2f} ms ({parts}; the rest is the subscriber check, debounce)"


def profile_fanout(jobs_per_task: int, tasks: int) -> str:
    """cProfile of ``turbo_tasks.delivery.deliver`` (what the worker runs per message), in
    this process, for a stream with one (fake) subscriber."""
    from turbo_tasks import delivery

    queues = Queues()
    room = Room.objects.create(name="profile-fanout")
    add_members(room.stream.group_name, 1)
    out = io.StringIO()
    all_jobs = []
    for _ in range(tasks + 2):
        pks = [Message.objects.create(room=room, text="hi").pk for _ in range(jobs_per_task)]
        all_jobs.append(
            [
                {"action": "save", "model": "benchapp.message", "pk": pk, "created": True}
                for pk in pks
            ]
        )
    queues.flush()
    for jobs in all_jobs[:2]:  # warm-up: template loading, the loop thread, connections
        delivery.deliver(jobs)
    stages = _stage_cpu(lambda: [delivery.deliver(jobs) for jobs in all_jobs[2:]], tasks)
    queues.flush()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for jobs in all_jobs[2:]:
        delivery.deliver(jobs)
    profiler.disable()
    elapsed = time.perf_counter() - start
    queues.flush()
    out.write(
        f"==== delivery.deliver: {tasks} calls of {jobs_per_task} job(s), "
        f"{elapsed / tasks * 1e3:.2f} ms per call under cProfile ====\n"
        f"Without cProfile, this thread's CPU per call: {stages}\n"
    )
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()
