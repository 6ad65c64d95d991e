# ruff: noqa: RUF001, RUF003  (×, − and – are meant: the output is Markdown)
"""Statistics, the Markdown tables and the chart of a benchmark run."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any


def summary(values: list[float]) -> dict[str, Any]:
    """min/median/max of per-round values (the values themselves are kept for the JSON)."""
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None, "values": []}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "values": [round(v, 6) for v in values],
    }


def paired(xs: list[float], ys: list[float], op: Callable[[float, float], float]) -> list[float]:
    """Per-round combination of two variants measured side by side."""
    return [op(x, y) for x, y in zip(xs, ys, strict=True)]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    value = float(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}f}"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in cells) + " |"


def _ratio(x: float | None, ref: float | None) -> str:
    if x is None or ref in (None, 0):
        return "–"
    return f"{x / ref:.2f}×"


# -- tables ------------------------------------------------------------------------------


def results_table(results: dict[str, Any]) -> str:
    lines = [
        "| bench | variant | N | metric | min | median | max | median vs ref |",
        "|---|---|---|---|---|---|---|---|",
    ]
    w1 = results.get("W1")
    if w1:
        for n, data in w1["per_subscribers"].items():
            values = data["values"]
            ref = values["a"]["median"]
            for name, s in values.items():
                lines.append(
                    _row(
                        [
                            "W1",
                            f"{name}: {w1['variants'][name]}",
                            n,
                            "µs/save",
                            s["min"],
                            s["median"],
                            s["max"],
                            _ratio(s["median"], ref),
                        ]
                    )
                )
            for name, s in data["added"].items():
                lines.append(
                    _row(
                        [
                            "W1",
                            f"{name} added cost ({name} − {'a_td' if name == 'c' else 'a'})",
                            n,
                            "µs/save",
                            s["min"],
                            s["median"],
                            s["max"],
                            _ratio(s["median"], values["e"]["median"]) + " of LPUSH",
                        ]
                    )
                )
    w2 = results.get("W2")
    if w2:
        ref = w2["values"]["off"]["total_ms"]["median"]
        for name, metrics in w2["values"].items():
            label = f"{name}: {w2['variants'][name]}"
            for metric, unit in (
                ("in_transaction_ms", "ms in the block"),
                ("commit_hooks_ms", "ms in on-commit hooks"),
                ("total_ms", "ms total"),
                ("messages", "broker messages"),
            ):
                s = metrics[metric]
                lines.append(
                    _row(
                        [
                            "W2",
                            label,
                            w2["saves"],
                            unit,
                            s["min"],
                            s["median"],
                            s["max"],
                            _ratio(s["median"], ref) if metric == "total_ms" else "",
                        ]
                    )
                )
    f1 = results.get("F1")
    if f1:
        for key, metrics in f1["values"].items():
            name, mode = key.split("/")
            ref = f1["values"][f"naive/{mode}"]["throughput"]["median"]
            s = metrics["throughput"]
            lines.append(
                _row(
                    [
                        "F1",
                        f"{name}, {mode}: {f1['variants'][name]}",
                        f1["changes"][name],
                        "changes/s",
                        s["min"],
                        s["median"],
                        s["max"],
                        _ratio(s["median"], ref),
                    ]
                )
            )
    f2 = results.get("F2")
    if f2:
        for name, metrics in f2["values"].items():
            for p in ("p50", "p95", "p99"):
                s = metrics[p]
                lines.append(
                    _row(
                        [
                            "F2",
                            f"{name}: {f2['variants'][name]}",
                            f"{f2['rate']}/s",
                            f"{p} ms (per round; pooled {fmt(metrics['pooled'][p])})",
                            s["min"],
                            s["median"],
                            s["max"],
                            _ratio(s["median"], f2["values"]["naive"][p]["median"])
                            if "naive" in f2["values"]
                            else "",
                        ]
                    )
                )
    if f2:
        stages = (
            ("save_ms_p50", "ms of the save itself (p50, included above)"),
            ("to_start_ms_p50", "ms before the save → task starts in the worker (p50)"),
            ("to_render_ms_p50", "ms task starts → frame rendered (p50)"),
            ("to_socket_ms_p50", "ms worker renders → frame at the socket (p50)"),
        )
        for name, metrics in f2["values"].items():
            for key, label in stages:
                if key in metrics:
                    value = metrics[key]
                    lines.append(
                        _row(
                            [
                                "F2",
                                f"{name}: {f2['variants'][name]}",
                                f"{f2['rate']}/s",
                                label,
                                value,
                                value,
                                value,
                                "",
                            ]
                        )
                    )
    f3 = results.get("F3")
    if f3:
        for n, data in f3["per_sockets"].items():
            for metric, unit in (
                ("all_ms", "ms commit → all sockets"),
                ("median_socket_ms", "ms commit → median socket"),
                ("first_socket_ms", "ms commit → first socket"),
            ):
                s = data[metric]
                lines.append(
                    _row(["F3", "turbo_tasks", n, unit, s["min"], s["median"], s["max"], ""])
                )
            lines.append(
                _row(
                    [
                        "F3",
                        "turbo_tasks",
                        n,
                        "renders per action",
                        data["renders_per_action"],
                        data["renders_per_action"],
                        data["renders_per_action"],
                        "",
                    ]
                )
            )
    f4 = results.get("F4")
    if f4:
        cfg = f4["config"]
        for metric, unit in (
            ("all_seconds", "s reconnect → every socket caught up"),
            ("p50_seconds", "s reconnect → median socket caught up"),
            ("first_seconds", "s reconnect → first socket caught up"),
        ):
            s = f4["values"].get(metric)
            if s and s["n"]:
                lines.append(
                    _row(
                        [
                            "F4",
                            f"turbo_tasks, {cfg['frames']} frames missed during a server restart",
                            cfg["sockets"],
                            unit,
                            s["min"],
                            s["median"],
                            s["max"],
                            "",
                        ]
                    )
                )
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | limit | result |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['measured']} | {t['limit']} | **{t['result']}** |")
    return "\n".join(lines)


def _check(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    w1 = results.get("W1")
    if w1:
        per = w1["per_subscribers"]

        def over_lpush(d: dict[str, Any]) -> float:
            # Ratio of medians: the median of the per-round (b − a) differences over the
            # median LPUSH time (a 200-LPUSH batch alone is too noisy to divide by).
            return float(d["added"]["b"]["median"] / d["values"]["e"]["median"])

        worst = max(per, key=lambda n: over_lpush(per[n]))
        r = over_lpush(per[worst])
        targets.append(
            {
                "target": "W1 turbo_tasks added cost per save (b − a) ≤ 2× one LPUSH (e), every N",
                "measured": f"{r:.2f}× at N={worst} (worst N; "
                + ", ".join(
                    f"N={n}: {fmt(d['added']['b']['median'])} µs vs LPUSH "
                    f"{fmt(d['values']['e']['median'])} µs = {over_lpush(d):.2f}×"
                    for n, d in per.items()
                )
                + ")",
                "limit": "≤ 2×",
                "result": _check(r <= 2),
            }
        )
        targets.append(
            {
                "target": "W1 turbo_tasks added cost (b − a) ÷ one LPUSH made right after a "
                "save (e_after − a), every N: the floor where turbo_tasks' LPUSH runs",
                "measured": ", ".join(
                    f"N={n}: {fmt(d['added']['b']['median'])} µs vs "
                    f"{fmt(d['added']['e_after']['median'])} µs = "
                    f"{d['added']['b']['median'] / d['added']['e_after']['median']:.2f}×"
                    for n, d in per.items()
                ),
                "limit": "(the 2× goal is judged against e)",
                "result": "info",
            }
        )
        for n, d in per.items():
            ratio = d["metrics_on_over_off"]["median"]
            targets.append(
                {
                    "target": f"W1 metrics cost nothing measurable: added cost with metrics on "
                    f"over off (b − a)/(b_off − a), N={n}",
                    "measured": f"{ratio:.2f}× (on {fmt(d['added']['b']['median'])} µs, "
                    f"off {fmt(d['added']['b_off']['median'])} µs)",
                    "limit": "≈ 1× (within the noise)",
                    "result": "info",
                }
            )
        first = next(iter(per))
        b_added = per[first]["added"]["b"]["median"]
        c_added = per[first]["added"]["c"]["median"]
        r = b_added / c_added
        targets.append(
            {
                "target": f"W1 turbo_tasks added cost ≤ 0.25× turbo-django's (c − a_td), N={first}",
                "measured": f"{r:.3f}× ({fmt(b_added)} µs vs {fmt(c_added)} µs)",
                "limit": "≤ 0.25×",
                "result": _check(r <= 0.25),
            }
        )
        flat = w1["b_flatness"]
        r = flat["per_save"]["median"]
        targets.append(
            {
                "target": f"W1 turbo_tasks flat from N={flat['from']} to N={flat['to']} "
                "subscribers (per-save time ratio)",
                "measured": f"{r:.3f}× (median of per-round ratios; added-cost ratio "
                f"{flat['added']['median']:.2f}×; control, baseline a: "
                f"{flat['control_a']['median']:.3f}×)",
                "limit": "≤ 1.1×",
                "result": _check(r <= 1.1),
            }
        )
    w2 = results.get("W2")
    if w2:
        tt = w2["values"]["turbo_tasks"]
        messages = tt["messages"]["max"]
        per500 = messages / (w2["saves"] / 500)
        targets.append(
            {
                "target": f"W2 broker messages for {w2['saves']} saves in one transaction",
                "measured": f"{messages:.0f} message(s) = {per500:.2f} per 500 jobs "
                f"(jobs carried: {tt['jobs']['median']:.0f})",
                "limit": "≤ 1 per 500 jobs",
                "result": _check(per500 <= 1 and tt["jobs"]["min"] == w2["saves"]),
            }
        )
        added = w2["after_commit_added_ms"]["median"]
        targets.append(
            {
                "target": f"W2 after-commit cost of {w2['saves']} saves (on-commit hooks, "
                "turbo_tasks − off)",
                "measured": f"{added:.2f} ms "
                f"(median; max {w2['after_commit_added_ms']['max']:.2f})",
                "limit": "≤ 10 ms",
                "result": _check(added <= 10),
            }
        )
    f1 = results.get("F1")
    if f1:
        complete = all(v["complete_runs"] == v["runs"] for v in f1["values"].values())
        for mode in f1["modes"]:
            tt = f1["values"][f"turbo_tasks/{mode}"]["throughput"]["median"]
            naive = f1["values"][f"naive/{mode}"]["throughput"]["median"]
            label = "live (producer running)" if mode == "live" else "drain (worker alone)"
            producer = f1["values"]["turbo_tasks/drain"].get("producer_alone_rate")
            bound = (
                f"; the producer alone commits {producer['median']:,.0f}/s"
                if mode == "live" and producer
                else ""
            )
            targets.append(
                {
                    "target": f"F1 throughput with one worker process, {label}",
                    "measured": f"{tt:,.0f} changes/s (median{bound})"
                    + ("" if complete else "; some runs incomplete"),
                    "limit": "≥ 10,000/s",
                    "result": _check(tt >= 10_000 and complete),
                }
            )
            targets.append(
                {
                    "target": f"F1 throughput vs naive one-task-per-save, {label}",
                    "measured": f"{tt / naive:.1f}× ({tt:,.0f} vs {naive:,.0f} changes/s)",
                    "limit": "≥ 20×",
                    "result": _check(tt / naive >= 20),
                }
            )
        if "turbo_tasks_nohistory/live" in f1["values"]:
            for mode in f1["modes"]:
                on = f1["values"][f"turbo_tasks/{mode}"]["throughput"]
                off = f1["values"][f"turbo_tasks_nohistory/{mode}"]["throughput"]
                ratios = paired(on["values"], off["values"], lambda a, b: a / b if b else 0.0)
                ratio = statistics.median(ratios)
                cost = 1 - ratio
                targets.append(
                    {
                        "target": f"F1 cost of catch-up (history on vs HISTORY_LENGTH 0), {mode}",
                        "measured": f"on/off = {ratio:.3f}× (median of per-round ratios "
                        f"{', '.join(f'{x:.2f}' for x in ratios)}; medians "
                        f"{on['median']:,.0f} vs {off['median']:,.0f}/s): costs {cost:.1%}",
                        "limit": "≤ 10% of throughput",
                        "result": _check(cost <= 0.10),
                    }
                )
    f2 = results.get("F2")
    if f2:
        pooled = f2["values"]["turbo_tasks"]["pooled"]
        off = f2["values"].get("turbo_tasks_nohistory")
        if off:
            on_p50 = f2["values"]["turbo_tasks"]["p50"]["values"]
            deltas = paired(on_p50, off["p50"]["values"], lambda a, b: a - b)
            delta = pooled["p50"] - off["pooled"]["p50"]
            targets.append(
                {
                    "target": "F2 cost of catch-up on p50 latency (history on − off, pooled)",
                    "measured": f"{delta:+.2f} ms ({pooled['p50']:.2f} vs "
                    f"{off['pooled']['p50']:.2f} ms; ratio "
                    f"{pooled['p50'] / off['pooled']['p50']:.2f}×; per round "
                    f"{', '.join(f'{d:+.2f}' for d in deltas)} ms)",
                    "limit": "≤ 1 ms",
                    "result": _check(delta <= 1),
                }
            )
        targets.append(
            {
                "target": f"F2 latency p50 at {f2['rate']} changes/s (pooled over rounds)",
                "measured": f"{pooled['p50']:.2f} ms",
                "limit": "≤ 3 ms",
                "result": _check(pooled["p50"] <= 3),
            }
        )
        targets.append(
            {
                "target": f"F2 latency p99 at {f2['rate']} changes/s (pooled over rounds)",
                "measured": f"{pooled['p99']:.2f} ms",
                "limit": "≤ 15 ms",
                "result": _check(pooled["p99"] <= 15),
            }
        )
    f3 = results.get("F3")
    if f3:
        per = f3["per_sockets"]
        biggest = max(per, key=int)
        data = per[biggest]
        targets.append(
            {
                "target": f"F3 one change → all {biggest} sockets (median over actions)",
                "measured": f"{data['all_ms']['median']:.1f} ms (worst action "
                f"{data['all_ms']['max']:.1f} ms; every socket got every frame: "
                f"{'yes' if data['complete'] else 'NO'})",
                "limit": "≤ 200 ms",
                "result": _check(data["all_ms"]["median"] <= 200 and data["complete"]),
            }
        )
        renders = {n: d["renders_per_action"] for n, d in per.items()}
        targets.append(
            {
                "target": "F3 renders per action, regardless of N",
                "measured": ", ".join(f"N={n}: {r:g}" for n, r in renders.items()),
                "limit": "exactly 1",
                "result": _check(all(r == 1 for r in renders.values())),
            }
        )
    f4 = results.get("F4")
    if f4:
        cfg = f4["config"]
        all_s = f4["values"].get("all_seconds") or {"n": 0}
        worst = all_s["max"] if all_s["n"] else None
        targets.append(
            {
                "target": f"F4 catch-up: {cfg['sockets']} sockets reconnect at once after a "
                f"server restart, {cfg['frames']} frames missed → all caught up",
                "measured": (
                    f"{all_s['median']:.2f} s (median of {all_s['n']} rounds; worst "
                    f"{worst:.2f} s; median socket "
                    f"{f4['values']['p50_seconds']['median']:.2f} s)"
                    if all_s["n"]
                    else "never complete"
                )
                + ("" if f4["complete"] else "; some rounds incomplete"),
                "limit": "≤ 2 s",
                "result": _check(bool(all_s["n"]) and all_s["median"] <= 2 and f4["complete"]),
            }
        )
    return targets


# -- chart ---------------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("W1", "W1+", "W2", "F1", "F2", "F3") if k.rstrip("+") in results]
    if not panels:
        return
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.axis("off")
    short = {
        "a": "a: no broadcast",
        "a_td": "a_td: no broadcast (td table)",
        "b": "b: turbo_tasks",
        "b_off": "b_off: turbo_tasks, metrics off",
        "c": "c: turbo-django",
        "d": "d: naive Celery",
        "e": "e: Redis LPUSH",
        "e_after": "e_after: save, then LPUSH",
    }
    colors = {
        "a": "C0",
        "a_td": "C1",
        "b": "C2",
        "b_off": "C6",
        "c": "C3",
        "d": "C4",
        "e": "C5",
        "e_after": "C7",
    }
    for ax, key in zip(flat, panels, strict=False):
        data = results[key.rstrip("+")]
        if key == "W1+":
            ns = list(data["per_subscribers"])
            names = ["b", "c", "d"]
            width = 0.8 / (len(names) + 1)
            for i, name in enumerate([*names, "e"]):
                if name == "e":
                    med = [data["per_subscribers"][n]["values"]["e"]["median"] for n in ns]
                else:
                    med = [data["per_subscribers"][n]["added"][name]["median"] for n in ns]
                xs = [j + i * width for j in range(len(ns))]
                label = short[name] + (" (added)" if name != "e" else " (floor)")
                ax.bar(xs, [max(m, 1) for m in med], width, label=label, color=colors[name])
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ns))], [f"N={n}" for n in ns])
            ax.set_yscale("log")
            ax.set_ylabel("added µs per save (median of per-round differences)")
            ax.set_title("W1 cost added to a save, vs one LPUSH")
            ax.legend(fontsize=7)
        elif key == "W1":
            ns = list(data["per_subscribers"])
            names = list(data["variants"])
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                med = [data["per_subscribers"][n]["values"][name]["median"] for n in ns]
                lo = [
                    m - data["per_subscribers"][n]["values"][name]["min"]
                    for n, m in zip(ns, med, strict=False)
                ]
                hi = [
                    data["per_subscribers"][n]["values"][name]["max"] - m
                    for n, m in zip(ns, med, strict=False)
                ]
                xs = [j + i * width for j in range(len(ns))]
                ax.bar(
                    xs, med, width, yerr=[lo, hi], label=short[name], capsize=2, color=colors[name]
                )
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ns))], [f"N={n}" for n in ns])
            ax.set_yscale("log")
            ax.set_ylabel("µs per committed save (median, min–max)")
            ax.set_title("W1 write path")
            ax.legend(fontsize=7)
        elif key == "W2":
            names = list(data["values"])
            hooks = [data["values"][n]["commit_hooks_ms"]["median"] for n in names]
            total = [data["values"][n]["total_ms"]["median"] for n in names]
            xs = range(len(names))
            ax.bar([x - 0.2 for x in xs], total, 0.4, label="total")
            ax.bar(
                [x + 0.2 for x in xs], [max(h, 1e-3) for h in hooks], 0.4, label="on-commit hooks"
            )
            for x, n in zip(xs, names, strict=True):
                msgs = data["values"][n]["messages"]["median"]
                ax.text(
                    x, max(total[x], 1e-3), f"{msgs:.0f} msg", ha="center", va="bottom", fontsize=7
                )
            ax.set_xticks(list(xs), names, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel(f"ms for {data['saves']} saves in one transaction")
            ax.set_title("W2 bulk")
            ax.legend(fontsize=7)
        elif key == "F1":
            names = list(data["values"])
            med = [data["values"][n]["throughput"]["median"] for n in names]
            names = [
                n.replace("turbo_tasks", "tt").replace("autocommit", "auto").replace("/", "\n")
                for n in names
            ]
            ax.bar(names, med)
            for x, m in enumerate(med):
                ax.text(x, m, f"{m:,.0f}", ha="center", va="bottom", fontsize=8)
            ax.axhline(10_000, color="red", linestyle="--", linewidth=1, label="target 10,000/s")
            ax.set_yscale("log")
            ax.set_ylabel("changes/s delivered to the websocket")
            ax.set_title("F1 throughput, one worker")
            ax.tick_params(axis="x", labelsize=8)
            ax.legend(fontsize=7)
        elif key == "F2":
            names = list(data["values"])
            ps = ["p50", "p95", "p99"]
            for i, name in enumerate(names):
                vals = [data["values"][name]["pooled"][p] for p in ps]
                ax.bar([j + i * 0.4 for j in range(3)], vals, 0.4, label=name)
            ax.set_xticks([j + 0.2 for j in range(3)], ps)
            ax.axhline(3, color="green", linestyle=":", linewidth=1, label="p50 target")
            ax.axhline(15, color="red", linestyle="--", linewidth=1, label="p99 target")
            ax.set_yscale("log")
            ax.set_ylabel(f"ms commit → frame at {data['rate']}/s")
            ax.set_title("F2 latency")
            ax.legend(fontsize=7)
        elif key == "F3":
            ns = list(data["per_sockets"])
            allv = [data["per_sockets"][n]["all_ms"]["median"] for n in ns]
            medv = [data["per_sockets"][n]["median_socket_ms"]["median"] for n in ns]
            ax.plot([int(n) for n in ns], allv, marker="o", label="all sockets")
            ax.plot([int(n) for n in ns], medv, marker="s", label="median socket")
            ax.axhline(200, color="red", linestyle="--", linewidth=1, label="target 200 ms")
            ax.set_xscale("log")
            ax.set_ylabel("ms commit → frame")
            ax.set_xlabel("subscribed websockets")
            ax.set_title("F3 breadth")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
