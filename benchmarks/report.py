"""The Markdown report: the tables (medians over runs, the ratio to the proxy), the targets, the failures.

:func:`report` turns the JSON records of every run into the Markdown that goes to stdout and to
``--markdown``; the records themselves are what ``--json`` keeps.
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.brokers import BROKERS, BrokerKind
from benchmarks.fleet import Json
from benchmarks.scenarios import Scenario


def _median(runs: list[Json], *path: str) -> float:
    values = []
    for r in runs:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, int | float) and not math.isnan(v):
            values.append(float(v))
    return statistics.median(values) if values else math.nan


def _fmt(x: float, digits: int = 0) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:,.{digits}f}".replace(",", " ")


def _ms(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _lost(runs: list[Json]) -> str:
    """Median lost, and the worst run when it differs."""
    values = [int(r["lost"]) for r in runs]
    if not values:
        return "–"
    med, worst = statistics.median(values), max(values)
    return _fmt(med) if worst == med else f"{_fmt(med)} (max {_fmt(worst)})"


def report(records: list[Json], scenarios: list[Scenario], kinds: list[BrokerKind], header: list[str]) -> str:
    def runs(sc: Scenario, kind: BrokerKind) -> list[Json]:
        return [
            r
            for r in records
            if r["scenario"] == sc.key and r["broker"] == kind.key and r["ok"] and not r.get("discarded")
        ]

    lines = [*header, ""]
    thr = [s for s in scenarios if s.kind == "throughput"]
    if thr:
        lines += [
            "## Throughput",
            "",
            "| scenario | N | broker | msgs/s per subscriber (median) | ÷ proxy | delivered msgs/s (all subs)"
            " | pushed msgs/s | broker CPU s | broker CPU % | peak RSS MB | lost | other CPU % |",
            "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for sc in thr:
            base = _median(runs(sc, BROKERS[0]), "per_sub_msgs_per_s")
            for kind in kinds:
                rs = runs(sc, kind)
                rate = _median(rs, "per_sub_msgs_per_s")
                ratio = "–" if kind.key == "proxy" or math.isnan(base) else f"{rate / base:.2f}"
                lines.append(
                    f"| {sc.label} | {_fmt(sc.messages)} | {kind.label} | {_fmt(rate)} | {ratio}"
                    f" | {_fmt(_median(rs, 'delivered_msgs_per_s'))} | {_fmt(_median(rs, 'pushed_msgs_per_s'))}"
                    f" | {_fmt(_median(rs, 'broker_cpu_s'), 2)} | {_fmt(_median(rs, 'broker_cpu_pct'))}"
                    f" | {_fmt(_median(rs, 'peak_rss_mb'), 1)} | {_lost(rs)}"
                    f" | {_fmt(_median(rs, 'background_cpu_pct'))} |"
                )
        lines += [
            "",
            "Lost messages are drops at the feed's high-water mark (10 000 per subscriber), where a subscriber"
            " falls behind: ZeroMQ's design, which zchat clients repair from history. Where the proxy loses"
            " messages, the publisher outran the Python subscribers, and they, not the proxy, set its"
            " msgs/s per subscriber.",
            "",
        ]
    lat = [s for s in scenarios if s.kind == "latency"]
    if lat:
        lines += [
            "## Latency (1 publisher → 1 subscriber, paced)",
            "",
            "| rate | seconds | broker | p50 ms | p99 ms | p99.9 ms | max ms | lost | broker CPU % | peak RSS MB"
            " | other CPU % |",
            "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for sc in lat:
            for kind in kinds:
                rs = runs(sc, kind)
                q = [_ms(_median(rs, "latency_ms", k)) for k in ("p50", "p99", "p99.9", "max")]
                lines.append(
                    f"| {_fmt(sc.rate)} msg/s | {sc.seconds:g} | {kind.label} | {' | '.join(q)} | {_lost(rs)}"
                    f" | {_fmt(_median(rs, 'broker_cpu_pct'))} | {_fmt(_median(rs, 'peak_rss_mb'), 1)}"
                    f" | {_fmt(_median(rs, 'background_cpu_pct'))} |"
                )
        lines.append("")
    idle = [s for s in scenarios if s.kind == "idle"]
    if idle:
        sc = idle[0]
        lines += [
            f"## {_fmt(sc.clients)} idle clients + one pair at {_fmt(sc.rate)} msg/s",
            "",
            "| broker | clients | broker RSS MB (clients connected) | peak RSS MB | pair p50 ms | p99 ms"
            " | p99.9 ms | lost | broker CPU % | heartbeats ok / failed | other CPU % |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for kind in kinds:
            rs = runs(sc, kind)
            q = [_ms(_median(rs, "latency_ms", k)) for k in ("p50", "p99", "p99.9")]
            hb = f"{_fmt(_median(rs, 'idle', 'hb_ok'))} / {_fmt(_median(rs, 'idle', 'hb_errors'))}"
            lines.append(
                f"| {kind.label} | {_fmt(_median(rs, 'idle', 'clients'))}"
                f" | {_fmt(_median(rs, 'idle', 'rss_mb_after_pair'), 1)} | {_fmt(_median(rs, 'peak_rss_mb'), 1)}"
                f" | {' | '.join(q)} | {_lost(rs)} | {_fmt(_median(rs, 'broker_cpu_pct'))}"
                f" | {hb if kind.zchat else '–'} | {_fmt(_median(rs, 'background_cpu_pct'))} |"
            )
        lines.append("")
    lines += _targets(records, scenarios, kinds, runs)
    failed = [r for r in records if not r["ok"] and not r.get("discarded")]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['scenario']} / {r['broker']} / repeat {r['repeat']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _targets(
    records: list[Json], scenarios: list[Scenario], kinds: list[BrokerKind], runs: Callable[..., list[Json]]
) -> list[str]:
    by_key = {s.key: s for s in scenarios}
    rows: list[str] = []

    def row(target: str, measured: str, met: bool | None) -> None:
        rows.append(f"| {target} | {measured} | {'–' if met is None else 'met' if met else '**missed**'} |")

    zchat = [k for k in kinds if k.zchat]
    proxy = BROKERS[0]
    if "k10" in by_key and proxy in kinds:
        base = _median(runs(by_key["k10"], proxy), "per_sub_msgs_per_s")
        for kind in zchat:
            ratio = _median(runs(by_key["k10"], kind), "per_sub_msgs_per_s") / base
            row(f"{kind.label} ≥ 0.7 × proxy throughput at K = 10", f"{ratio:.2f} ×", ratio >= 0.7)
    if "lat5000" in by_key:
        for kind in zchat:
            p99 = _median(runs(by_key["lat5000"], kind), "latency_ms", "p99")
            row(f"{kind.label}: p99 latency at 5 000 msg/s ≤ 2 ms", f"{_ms(p99)} ms", p99 <= 2.0)
    if "k10" in by_key:
        for kind in zchat:
            lost = [int(r["lost"]) for r in runs(by_key["k10"], kind)]
            worst = max(lost, default=-1)
            row(f"{kind.label}: no accepted message lost at K = 10", f"{worst} lost (worst run)", worst == 0)
    if "idle" in by_key:
        sc = by_key["idle"]
        for kind in zchat:
            rs = runs(sc, kind)
            rss, peak = _median(rs, "idle", "rss_mb_after_pair"), _median(rs, "peak_rss_mb")
            note = "" if sc.clients == 1000 else f" (only {sc.clients} clients: not the target's 1 000)"
            row(
                f"{kind.label}: broker RSS ≤ 150 MB with 1 000 clients",
                f"{_fmt(rss, 1)} MB now, {_fmt(peak, 1)} MB peak{note}",
                None if sc.clients != 1000 else peak <= 150,
            )
    if not rows:
        return []
    return ["## Targets", "", "| target | measured (median of runs) | |", "|---|---|---|", *rows]


# === lines of the header =========================================================================


def background_line(records: list[Json], max_background: float) -> str:
    """How much CPU processes outside the bench took during the measured windows."""
    kept = [r for r in records if not r.get("discarded")]
    values = [float(r["background_cpu_pct"]) for r in kept if r.get("background_cpu_pct") is not None]
    redone = len(records) - len(kept)
    if not values:
        return "- background load: not measured"
    noisy = sum(v > 25 for v in values)
    return (
        f"- CPU used by processes outside the bench during the measured windows: median"
        f" {statistics.median(values):.0f} %, max {max(values):.0f} % of one CPU;"
        f" {noisy} of {len(values)} runs above 25 %; {redone} noisier run(s) (above {max_background:g} %) done"
        f" again, kept in the JSON marked discarded"
    )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()
