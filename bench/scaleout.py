# ruff: noqa: RUF001, RUF003  (×, − and – are meant: the output is Markdown)
"""The scale-out table (``bench/run.py --scale-out``, issue #19): F1-F4 on four layouts,
each metric as a ratio to the baseline's.

    .venv/bin/python bench/run.py --quick --scale-out            # 3 rounds, 7-10 minutes here
    .venv/bin/python bench/run.py --scale-out --rounds 3 --only F1,F3

Layouts, one thing doubled at a time (Celery worker processes / uvicorn processes /
channel-layer redis-servers): baseline 1/1/1, workers=2 2/1/1, asgi=2 1/2/1, shards=2
1/1/2. A round runs every layout once, in turn, the order reversed every other round
(ABCD DCBA …). Each layout starts on fresh workers and ASGI processes and an emptied
channel layer (``Context.configure``), settles for 3 s, then runs one round of each
benchmark. A metric's ratio is the median over rounds of its value divided by the same
round's baseline value (so slow drift of the machine's load cancels out, as far as it can).

Sizes (per layout and round): F1 the ``turbo_tasks`` variants only (transactions of 100
saves, and one save per transaction; live and drain; catch-up on), F2 the ``turbo_tasks``
variant at 100 changes/s, F3 1,000 sockets, F4 1,000 sockets and 50 missed frames. Besides
times and rates, each benchmark records the CPU its processes used (per change, per socket,
per socket and frame) and the channel layer's Redis calls (bench/fanout.py ``spent``).

Writes bench/results/scaleout.json (every per-round value, the raw results) and
scaleout.md (the table), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import fmt

LAYOUTS: dict[str, dict[str, int]] = {
    "baseline": {"workers": 1, "asgi": 1, "shards": 1},
    "workers=2": {"workers": 2, "asgi": 1, "shards": 1},
    "asgi=2": {"workers": 1, "asgi": 2, "shards": 1},
    "shards=2": {"workers": 1, "asgi": 1, "shards": 2},
}
MAX_SHARDS = max(layout["shards"] for layout in LAYOUTS.values())
ROUNDS = {"quick": 3, "full": 5}
# Freshly started workers and ASGI processes are slow for a moment (see Context.set_history).
SETTLE_SECONDS = 3


def sizes(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One round of each benchmark, from the quick or full sizes."""
    return {
        "F1": {
            **config["F1"],
            "rounds": 1,
            "variants": ["turbo_tasks", "turbo_tasks_autocommit"],
            # 200 autocommit saves (quick) drain in well under a second: too short to time.
            "autocommit_changes": max(500, config["F1"]["autocommit_changes"]),
        },
        "F2": {**config["F2"], "rounds": 1, "variants": ["turbo_tasks"]},
        "F3": {**config["F3"], "sockets": [1000]},
        "F4": {**config["F4"], "rounds": 1},
    }


Getter = Callable[[dict[str, Any]], float]


def _f1(variant: str, key: str, scale: float = 1) -> Getter:
    return lambda r: r["F1"]["values"][variant][key]["median"] * scale


def _f2(key: str) -> Getter:
    return lambda r: r["F2"]["values"]["turbo_tasks"][key]["median"]


def _f3(part: str | None, key: str, scale: float = 1) -> Getter:
    def get(r: dict[str, Any]) -> float:
        (data,) = r["F3"]["per_sockets"].values()
        value = data[part][key] if part else data[key]["median"]
        return float(value) * scale

    return get


def _f4(key: str, scale: float = 1) -> Getter:
    return lambda r: r["F4"]["values"][key]["median"] * scale


TX, AUTO = "turbo_tasks/drain", "turbo_tasks_autocommit/drain"
# (label, unit, better: "higher", "lower" or "" (neither), the value in one round's results)
METRICS: list[tuple[str, str, str, Getter]] = [
    ("F1 drain, transactions of 100 saves", "changes/s", "higher", _f1(TX, "throughput")),
    (
        "F1 live, transactions of 100 saves",
        "changes/s",
        "higher",
        _f1("turbo_tasks/live", "throughput"),
    ),
    ("F1 drain, one save per transaction", "changes/s", "higher", _f1(AUTO, "throughput")),
    (
        "F1 live, one save per transaction",
        "changes/s",
        "higher",
        _f1("turbo_tasks_autocommit/live", "throughput"),
    ),
    (
        "F1 drain, tx of 100: worker CPU per change (all workers)",
        "µs",
        "lower",
        _f1(TX, "worker_cpu_ms_per_change", 1e3),
    ),
    (
        "F1 drain, tx of 100: ASGI CPU per change (all processes)",
        "µs",
        "lower",
        _f1(TX, "asgi_cpu_ms_per_change", 1e3),
    ),
    (
        "F1 drain, tx of 100: channel-layer Redis CPU per change (all shards)",
        "µs",
        "lower",
        _f1(TX, "channels_redis_cpu_ms_per_change", 1e3),
    ),
    (
        "F1 drain, one save per tx: worker CPU per change",
        "ms",
        "lower",
        _f1(AUTO, "worker_cpu_ms_per_change"),
    ),
    (
        "F1 drain, one save per tx: broker Redis CPU per change",
        "µs",
        "lower",
        _f1(AUTO, "broker_redis_cpu_ms_per_change", 1e3),
    ),
    ("F2 latency p50 at 100 changes/s, save included", "ms", "lower", _f2("p50")),
    ("F2 latency p99 at 100 changes/s", "ms", "lower", _f2("p99")),
    ("F3 one change → all 1,000 sockets", "ms", "lower", _f3(None, "all_ms")),
    ("F3 one change → median socket", "ms", "lower", _f3(None, "median_socket_ms")),
    (
        "F3 ASGI CPU per socket and frame",
        "µs",
        "lower",
        _f3("fanout", "asgi_cpu_ms_per_socket_frame", 1e3),
    ),
    (
        "F3 opening 1,000 sockets: ASGI CPU per socket (connect + subscribe)",
        "ms",
        "lower",
        _f3("open", "asgi_cpu_ms_per_socket"),
    ),
    ("F4 1,000 sockets reconnect: all caught up", "s", "lower", _f4("all_seconds")),
    ("F4 median socket caught up", "s", "lower", _f4("p50_seconds")),
    ("F4 ASGI CPU per socket caught up", "ms", "lower", _f4("asgi_cpu_ms_per_socket")),
    (
        "F4 channel-layer Redis CPU per socket caught up",
        "µs",
        "lower",
        _f4("channels_redis_cpu_ms_per_socket", 1e3),
    ),
    # Whole machine, other sessions' processes included: how close to the 2 cores it ran.
    ("F4 machine busy during the catch-up", "cores of 2", "", _f4("busy_cores")),
]


def run(
    ctx: Any, config: dict[str, dict[str, Any]], args: argparse.Namespace, log: Callable[[str], Any]
) -> dict[str, Any]:
    """Every layout once per round; the fields of scaleout.json besides the machine's."""
    from bench import fanout

    benches = [b for b in ("F1", "F2", "F3", "F4") if b in args.only]
    cfgs = sizes(config)
    rounds = args.rounds or ROUNDS["quick" if args.quick else "full"]
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in LAYOUTS}
    order: list[str] = []
    errors: list[str] = []
    for r in range(rounds):
        for name in list(LAYOUTS) if r % 2 == 0 else list(reversed(LAYOUTS)):
            log(f"round {r + 1}/{rounds}: layout {name} {LAYOUTS[name]}")
            order.append(name)
            results: dict[str, Any] = {}
            raw[name].append(results)
            try:
                ctx.configure(**LAYOUTS[name])
                time.sleep(SETTLE_SECONDS)
            except Exception as exc:
                errors.append(f"round {r + 1}, {name}: start: {type(exc).__name__}: {exc}")
                log(f"{name} did not start:\n{traceback.format_exc()}")
                continue
            for bench in benches:
                log(f"{bench}…")
                try:
                    results[bench] = getattr(fanout, bench.lower())(ctx, cfgs[bench], log)
                except Exception as exc:
                    errors.append(f"round {r + 1}, {name}, {bench}: {type(exc).__name__}: {exc}")
                    log(f"{bench} FAILED:\n{traceback.format_exc()}")
    return {
        "layouts": LAYOUTS,
        "rounds": rounds,
        "order": order,
        "config": {b: cfgs[b] for b in benches},
        "errors": errors,
        "metrics": ratios(raw),
        "raw": raw,
    }


def _value(get: Getter, results: dict[str, Any]) -> float | None:
    try:
        return float(get(results))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # failed, or not run
        return None


def ratios(raw: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per metric and layout: the per-round values, their ratios to the same round's
    baseline, and the medians of both."""
    out = []
    base = raw["baseline"]
    for label, unit, better, get in METRICS:
        row: dict[str, Any] = {"metric": label, "unit": unit, "better": better, "layouts": {}}
        for name, per_round in raw.items():
            values = [_value(get, results) for results in per_round]
            paired = [
                v / b
                for v, b in zip(values, (_value(get, results) for results in base), strict=True)
                if v is not None and b
            ]
            known = [v for v in values if v is not None]
            row["layouts"][name] = {
                "values": values,
                "median": statistics.median(known) if known else None,
                "ratios": [round(x, 4) for x in paired],
                "ratio": statistics.median(paired) if paired else None,
            }
        if any(data["median"] is not None for data in row["layouts"].values()):
            out.append(row)
    return out


def _span(values: list[float]) -> str:
    return f"{fmt(min(values))}–{fmt(max(values))}" if len(values) > 1 else ""


def table(metrics: list[dict[str, Any]]) -> str:
    variants = [name for name in LAYOUTS if name != "baseline"]
    lines = [
        "| metric | better | baseline 1/1/1 | "
        + " | ".join(
            f"{name} {'/'.join(str(v) for v in LAYOUTS[name].values())}" for name in variants
        )
        + " |",
        "|---" * (3 + len(variants)) + "|",
    ]
    for row in metrics:
        base = row["layouts"]["baseline"]
        known = [v for v in base["values"] if v is not None]
        cells = [
            f"{row['metric']} ({row['unit']})",
            row["better"] or "–",
            f"{fmt(base['median'])}" + (f" ({_span(known)})" if _span(known) else ""),
        ]
        for name in variants:
            data = row["layouts"][name]
            if data["ratio"] is None:
                cells.append("–")
                continue
            span = _span(data["ratios"])
            cells.append(
                f"**{data['ratio']:.2f}×**" + (f" ({span})" if span else "")
                if row["better"]
                else f"{data['ratio']:.2f}× ({fmt(data['median'])})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(doc: dict[str, Any], machine_line: Callable[[dict[str, Any]], str]) -> str:
    layouts = ", ".join(
        f"{name} {'/'.join(str(v) for v in layout.values())}"
        for name, layout in doc["layouts"].items()
    )
    load = "/".join(str(x) for x in doc["load_average_before"])
    load_after = "/".join(str(x) for x in doc["load_average_after"])
    return "\n".join(
        [
            f"## Scale-out — {doc['date']} ({doc['mode']}, `{doc['command']}`)",
            "",
            f"Machine: {machine_line(doc['machine'])}.",
            f"Code measured: {doc['source']}.",
            f"Layouts (Celery worker processes / uvicorn processes / channel-layer "
            f"redis-servers): {layouts}; each worker `--pool {doc['celery_pool']} -c 1`; "
            f"channel layer `{doc['channel_layer']}`. {doc['rounds']} rounds, each running "
            f"every layout once, in the order {' → '.join(doc['order'])}. Cells: the median "
            "over rounds of the per-round ratio to the same round's baseline (min–max of the "
            "per-round ratios in brackets; for the rows without a better direction, the "
            "median value). Baseline column: median value (min–max). "
            f"Wall time {doc['wall_seconds']:.0f}s. Load average (1/5/15 min) before: {load}, "
            f"after: {load_after}.",
            "",
            *(["### Errors", "", *(f"- {e}" for e in doc["errors"]), ""] if doc["errors"] else []),
            table(doc["metrics"]),
            "",
        ]
    )


def write(
    doc: dict[str, Any],
    results: Path,
    log: Callable[[str], Any],
    machine_line: Callable[[dict[str, Any]], str],
) -> int:
    (results / "scaleout.json").write_text(json.dumps(doc, indent=2, default=str))
    md = render(doc, machine_line)
    (results / "scaleout.md").write_text(md)
    log("")
    log(md)
    log(f"wrote {results / 'scaleout.json'}, scaleout.md ({doc['wall_seconds']:.0f}s)")
    return 1 if doc["errors"] else 0
