"""The Markdown report: the tables (medians over runs, the ratio to the proxy, which stage was the
limit), the targets, the failures, and the header lines that describe the machine.

:func:`report` turns the JSON records of every run into the Markdown that goes to stdout and to
``--markdown``; the records themselves are what ``--json`` keeps. :func:`median` is shared with
the plot.
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
from pathlib import Path
from typing import Any

from benchmarks.brokers import BROKERS, PROXY, BrokerKind
from benchmarks.fleet import Json
from benchmarks.scenarios import Scenario

#: The publisher may have been the limit when the broker forwarded at least this share of what
#: the same load generator pushes through a proxy with no subscriber (the source table).
SOURCE_SHARE = 0.8
#: Subscribers were the limit when they lost more than this share of the messages.
LOSS_SHARE = 0.01


def median(runs: list[Json], *path: str) -> float:
    """The median over runs of the number at ``path`` (nan if no run has one)."""
    values = []
    for r in runs:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, int | float) and not math.isnan(v):
            values.append(float(v))
    return statistics.median(values) if values else math.nan


def kept(records: list[Json], sc: Scenario, kind: BrokerKind) -> list[Json]:
    """The runs of ``sc`` on ``kind`` that count: done, and not discarded as noisy."""
    return [
        r for r in records if r["scenario"] == sc.key and r["broker"] == kind.key and r["ok"] and not r.get("discarded")
    ]


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


def _cpu(runs: list[Json]) -> str:
    """CPU % of one core over the measured window: publishers / broker / subscribers (the broker
    on PostgreSQL: its own + the database server's)."""
    pub, broker, sub = (_fmt(median(runs, "cpu_pct", role)) for role in ("pub", "broker", "sub"))
    if not math.isnan(db := median(runs, "db_cpu_pct")):
        broker = f"{broker} + {_fmt(db)} db"
    return f"{pub} / {broker} / {sub}"


def report(records: list[Json], scenarios: list[Scenario], kinds: list[BrokerKind], header: list[str]) -> str:
    lines = [*header, ""]
    by_family: dict[str, list[Scenario]] = {}
    for sc in scenarios:
        by_family.setdefault(sc.family, []).append(sc)
    source_rate = _source_rates(records, by_family.get("source", []))
    if "source" in by_family:
        lines += _source_table(records, by_family["source"], kinds)
    stream = by_family.get("throughput", []) + by_family.get("many", [])
    if stream:
        lines += _throughput_table(records, stream, kinds, source_rate)
    if "latency" in by_family:
        lines += _latency_table(records, by_family["latency"], kinds)
    if "idle" in by_family:
        lines += _idle_table(records, by_family["idle"][0], kinds)
    if "sustained" in by_family:
        lines += _sustained_table(records, by_family["sustained"][0], kinds)
    lines += _targets(records, scenarios, kinds)
    failed = [r for r in records if not r["ok"] and not r.get("discarded")]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['scenario']} / {r['broker']} / repeat {r['repeat']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _source_rates(records: list[Json], sources: list[Scenario]) -> dict[int, float]:
    """What the replay source gets through a proxy with no subscriber, by frames per message."""
    rates: dict[int, float] = {}
    for sc in sources:
        if sc.engine == "replay":
            for kind in BROKERS[:2]:
                rates[_frames(kind)] = median(kept(records, sc, kind), "forwarded_msgs_per_s")
    return rates


def _frames(kind: BrokerKind) -> int:
    return 2 if kind.shape == "event2" else 1


def _source_table(records: list[Json], sources: list[Scenario], kinds: list[BrokerKind]) -> list[str]:
    lines = [
        "## Load generator: 1 publisher → zmq.proxy with no subscriber",
        "",
        "| engine | frames per message | N | published msgs/s | forwarded by the proxy msgs/s"
        " | publisher CPU µs per message | proxy CPU % | other CPU % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for sc in sources:
        for kind in kinds:
            if not sc.runs_on(kind):
                continue
            rs = kept(records, sc, kind)
            lines.append(
                f"| {sc.label} | {_frames(kind)} | {_fmt(sc.messages)} | {_fmt(median(rs, 'published_msgs_per_s'))}"
                f" | {_fmt(median(rs, 'forwarded_msgs_per_s'))} | {_fmt(median(rs, 'pub_cpu_us_per_msg'), 2)}"
                f" | {_fmt(median(rs, 'broker_cpu_pct'))} | {_fmt(median(rs, 'background_cpu_pct'))} |"
            )
    return [
        *lines,
        "",
        "Published: until the publisher handed its last message to its PUSH socket (a high-water mark and the"
        " kernel's socket buffers from the proxy). Forwarded: libzmq's own count of what the proxy sent on.",
        "",
    ]


def _limit(runs: list[Json], kind: BrokerKind, source_rate: dict[int, float], subs: int) -> str:
    """Which stage held the rate (see benchmarks/README.md): the subscribers if they lost
    messages; the publisher if the broker forwarded nearly as fast as the load generator gets
    through a proxy with no subscriber; else the broker."""
    if not runs:
        return "–"
    if median(runs, "lost") > LOSS_SHARE * median(runs, "expected") * subs:
        return "subscribers"
    alone = source_rate.get(_frames(kind), math.nan)
    if math.isnan(alone):
        return "–"
    return "publisher" if median(runs, "forwarded_msgs_per_s") >= SOURCE_SHARE * alone else "broker"


def _throughput_table(
    records: list[Json], stream: list[Scenario], kinds: list[BrokerKind], source_rate: dict[int, float]
) -> list[str]:
    lines = [
        "## Throughput: N messages as fast as they go",
        "",
        "| scenario | broker | msgs/s per subscriber (median) | ÷ proxy | published msgs/s | forwarded msgs/s"
        " | lost (all subscribers) | limit | CPU % pub / broker / subs | broker µs per message | broker peak RSS MB"
        " | other CPU % |",
        "|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|",
    ]
    for sc in stream:
        base = median(kept(records, sc, PROXY), "per_sub_msgs_per_s")
        for kind in kinds:
            if not sc.runs_on(kind):
                continue
            rs = kept(records, sc, kind)
            rate = median(rs, "per_sub_msgs_per_s")
            ratio = "–" if kind == PROXY or math.isnan(base) else f"{rate / base:.2f}"
            lines.append(
                f"| {sc.label} (N = {_fmt(sc.messages)}) | {kind.label} | {_fmt(rate)} | {ratio}"
                f" | {_fmt(median(rs, 'published_msgs_per_s'))} | {_fmt(median(rs, 'forwarded_msgs_per_s'))}"
                f" | {_lost(rs)} | {_limit(rs, kind, source_rate, sc.subs)} | {_cpu(rs)}"
                f" | {_fmt(median(rs, 'broker_cpu_us_per_msg'), 1)} | {_fmt(median(rs, 'peak_rss_mb'), 1)}"
                f" | {_fmt(median(rs, 'background_cpu_pct'))} |"
            )
    return [
        *lines,
        "",
        "Per subscriber: its distinct messages ÷ (its last receive − the publishers' start), the median over"
        " subscribers. Published, forwarded: the same for the publishers (all handed to their sockets) and"
        " for the broker (libzmq's counter of the proxy, zchat's `received`). Lost: sent − received, summed"
        " over subscribers: drops at a subscriber's high-water mark (10 000) when it falls behind. Limit:"
        f" subscribers if they lost more than {LOSS_SHARE:.0%} of the messages; publisher if the broker"
        f" forwarded ≥ {SOURCE_SHARE:.0%} of what the same publisher gets through a proxy with no subscriber"
        " (the table above); else the broker."
        " CPU: % of one core over the measured window, all processes of each stage together.",
        "",
    ]


def _latency_table(records: list[Json], lat: list[Scenario], kinds: list[BrokerKind]) -> list[str]:
    lines = [
        "## Latency: 1 publisher paced, K subscribers",
        "",
        "| scenario | seconds | broker | p50 ms | p99 ms | p99.9 ms | max ms | timed subscribers | lost"
        " | broker CPU µs per message | broker CPU % | other CPU % |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for sc in lat:
        for kind in kinds:
            if not sc.runs_on(kind):
                continue
            rs = kept(records, sc, kind)
            q = [_ms(median(rs, "latency_ms", k)) for k in ("p50", "p99", "p99.9", "max")]
            probes = median([{"n": sum(s["mode"] == "probe" for s in r["subscribers"])} for r in rs], "n")
            lines.append(
                f"| {sc.label} | {sc.seconds:g} | {kind.label} | {' | '.join(q)} | {_fmt(probes)} | {_lost(rs)}"
                f" | {_fmt(median(rs, 'broker_cpu_us_per_msg'), 1)} | {_fmt(median(rs, 'broker_cpu_pct'))}"
                f" | {_fmt(median(rs, 'background_cpu_pct'))} |"
            )
    return [
        *lines,
        "",
        "Publisher send → subscriber receive (one monotonic clock), nearest-rank percentiles over every message"
        " of the timed subscribers (all of them up to K = 10, about 10 spread over the processes beyond), then"
        " the median over runs. Broker CPU per message: its CPU time over the window ÷ messages it forwarded.",
        "",
    ]


def _idle_table(records: list[Json], sc: Scenario, kinds: list[BrokerKind]) -> list[str]:
    lines = [
        f"## {_fmt(sc.clients)} idle clients + one pair at {_fmt(sc.rate)} msg/s",
        "",
        "| broker | clients | connections | broker RSS MB empty → with clients | KB per client | peak RSS MB"
        " | pair p50 ms | p99 ms | lost | broker CPU % | heartbeats ok / failed | other CPU % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for kind in kinds:
        if not sc.runs_on(kind):
            continue
        rs = kept(records, sc, kind)
        q = [_ms(median(rs, "latency_ms", k)) for k in ("p50", "p99")]
        hb = f"{_fmt(median(rs, 'idle', 'hb_ok'))} / {_fmt(median(rs, 'idle', 'hb_errors'))}" if kind.zchat else "–"
        rss = f"{_fmt(median(rs, 'idle', 'rss_mb_empty'), 1)} → {_fmt(median(rs, 'idle', 'rss_mb_connected'), 1)}"
        lines.append(
            f"| {kind.label} | {_fmt(median(rs, 'idle', 'clients'))} | {_fmt(median(rs, 'idle', 'connections'))}"
            f" | {rss} | {_fmt(median(rs, 'idle', 'kb_per_client'), 1)} | {_fmt(median(rs, 'peak_rss_mb'), 1)}"
            f" | {' | '.join(q)} | {_lost(rs)} | {_fmt(median(rs, 'broker_cpu_pct'))} | {hb}"
            f" | {_fmt(median(rs, 'background_cpu_pct'))} |"
        )
    return [
        *lines,
        "",
        "KB per client: the broker's RSS with every client connected (and, for zchat, said hello) minus its RSS"
        " before the first one, ÷ clients. A zchat client holds 3 connections (SUB, DEALER, PUSH), a proxy"
        " client 2 (SUB, PUSH). The proxy rows with socket options show what those options change.",
        "",
    ]


def _sustained_table(records: list[Json], sc: Scenario, kinds: list[BrokerKind]) -> list[str]:
    lines = [
        f"## Sustained: {_fmt(sc.messages)} messages, 1 → 1 (at most {sc.seconds:g} s)",
        "",
        "| broker | sent | forwarded msgs/s | lost | max RSS MB (1st half / 2nd half)"
        " | max WAL MB (1st half / 2nd half) | DB MB at the end | broker CPU µs per message |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for kind in kinds:
        if not sc.runs_on(kind):
            continue
        rs = kept(records, sc, kind)

        def pair(name: str, runs: list[Json] = rs) -> str:
            first, second = (median(runs, "sustained", f"{name}_{h}_half") for h in ("first", "second"))
            return f"{_fmt(median(runs, 'sustained', name), 1)} ({_fmt(first, 1)} / {_fmt(second, 1)})"

        lines.append(
            f"| {kind.label} | {_fmt(median(rs, 'expected'))} | {_fmt(median(rs, 'forwarded_msgs_per_s'))}"
            f" | {_lost(rs)} | {pair('max_rss_mb')} | {pair('max_wal_mb')}"
            f" | {_fmt(median(rs, 'sustained', 'db_mb_at_end'), 1)} | {_fmt(median(rs, 'broker_cpu_us_per_msg'), 1)} |"
        )
    return [
        *lines,
        "",
        "Sampled every 0.1 s during the run: the broker's VmRSS and the size of `<db>-wal`. Growth is bounded when"
        " the second half's maxima are no higher than the first's. The JSON has every sample.",
        "",
    ]


def _targets(records: list[Json], scenarios: list[Scenario], kinds: list[BrokerKind]) -> list[str]:
    """The issue's targets: throughput against the proxy with zchat's frames at K = 1 and 10, p99
    latency at 5 000 msg/s against the proxy's, nothing lost, the store bounded through the
    sustained run, and memory per idle client."""
    by_key = {s.key: s for s in scenarios}
    rows: list[str] = []

    def row(target: str, measured: str, met: bool | None) -> None:
        rows.append(f"| {target} | {measured} | {'–' if met is None else 'met' if met else '**missed**'} |")

    zchat = [k for k in kinds if k.zchat]
    one_frame = next((k for k in kinds if k.key == "proxy1"), None)
    for key in ("k1", "k10"):
        if key not in by_key or PROXY not in kinds:
            continue
        sc = by_key[key]
        base = median(kept(records, sc, PROXY), "per_sub_msgs_per_s")
        for kind in zchat:
            rate = median(kept(records, sc, kind), "per_sub_msgs_per_s")
            row(
                f"{kind.label} ≥ 0.8 × proxy [topic, event] throughput, {sc.label}",
                f"{rate / base:.2f} × ({_fmt(rate)} vs {_fmt(base)} msgs/s per subscriber)",
                rate >= 0.8 * base,
            )
        if one_frame is not None:
            rate = median(kept(records, sc, one_frame), "per_sub_msgs_per_s")
            row(f"({one_frame.label}, for reference), {sc.label}", f"{rate / base:.2f} × ({_fmt(rate)})", None)
    for k in (1, 10):
        lat = next((s for s in scenarios if s.family == "latency" and s.subs == k and s.rate == 5000), None)
        if lat is None or PROXY not in kinds:
            continue
        base = median(kept(records, lat, PROXY), "latency_ms", "p99")
        for kind in zchat:
            rs = kept(records, lat, kind)
            p99 = median(rs, "latency_ms", "p99")
            cpu = median(rs, "broker_cpu_us_per_msg")
            row(
                f"{kind.label}: p99 at 5 000 msg/s ≤ 2 × the proxy's, K = {k}",
                f"{_ms(p99)} ms vs {_ms(base)} ms ({p99 / base:.1f} ×); broker CPU {_fmt(cpu, 1)} µs per message",
                p99 <= 2 * base,
            )
    for key in ("k1", "k10"):
        if key in by_key:
            for kind in zchat:
                lost = [int(r["lost"]) for r in kept(records, by_key[key], kind)]
                worst = max(lost, default=-1)
                row(f"{kind.label}: nothing lost, {by_key[key].label}", f"{worst} lost (worst run)", worst == 0)
    if "sustained" in by_key:
        sus = by_key["sustained"]
        for kind in zchat:
            runs = kept(records, sus, kind)
            if not runs:
                continue
            wal = median(runs, "sustained", "max_wal_mb")
            rss = [median(runs, "sustained", f"max_rss_mb_{h}_half") for h in ("first", "second")]
            worst_lost = max(int(r["lost"]) for r in runs)
            flat = rss[1] <= rss[0] * 1.05
            row(
                f"{kind.label}: nothing lost, WAL ≤ 32 MB and RSS flat through {_fmt(sus.messages)} messages",
                f"{worst_lost} lost; WAL peak {_fmt(wal, 1)} MB; RSS peak {_fmt(rss[0], 1)} / {_fmt(rss[1], 1)} MB"
                " (1st / 2nd half)",
                worst_lost == 0 and wal <= 33.0 and flat,
            )
    if "idle" in by_key:
        sc = by_key["idle"]
        for kind in zchat:
            rs = kept(records, sc, kind)
            per_client, peak = median(rs, "idle", "kb_per_client"), median(rs, "peak_rss_mb")
            note = "" if sc.clients == 1000 else f" (only {sc.clients} clients: not the target's 1 000)"
            row(
                f"{kind.label}: RSS per idle client, {_fmt(sc.clients)} clients (broker RSS ≤ 150 MB)",
                f"{_fmt(per_client, 1)} KB per client, {_fmt(peak, 1)} MB peak{note}",
                None if sc.clients != 1000 else peak <= 150,
            )
    if not rows:
        return []
    return ["## Targets", "", "| target | measured (median of runs) | |", "|---|---|---|", *rows, ""]


# === lines of the header =========================================================================


def background_line(records: list[Json], max_background: float) -> str:
    """How much CPU processes outside the bench took during the measured windows."""
    kept_runs = [r for r in records if not r.get("discarded")]
    values = [float(r["background_cpu_pct"]) for r in kept_runs if r.get("background_cpu_pct") is not None]
    redone = len(records) - len(kept_runs)
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
