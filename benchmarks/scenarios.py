"""The scenarios, and running one: a fresh broker, its workers, the handshake, the raw numbers.

A scenario is a shape of load (1 → K throughput, 20 → 10, paced latency, idle clients plus a
pair). :func:`run_one` runs one scenario against one fresh broker and returns a JSON record of
everything measured; it never raises, a failed run is a record with ``ok`` false.
"""

from __future__ import annotations

import math
import signal
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import zmq

from benchmarks.brokers import Broker, BrokerKind, start_broker, zchat_request
from benchmarks.fleet import QUIET_END, SETUP_TIMEOUT, Bench, BenchError, Json, Proc
from benchmarks.metrics import (
    LATENCY_PERCENTILES,
    cpu_seconds,
    machine_busy_seconds,
    memory_mb,
    own_cpu,
    percentile,
    proc_cpu,
    wait_quiet,
)

# --- how the load is spread over worker processes ------------------------------------------------

#: Idle clients per worker process (3 sockets each: well under libzmq's 1 023 per context).
IDLE_PER_PROC = 250
#: Subscriber sockets per subscriber process (at most; at least 2 processes past K = 1).
SUBS_PER_PROC = 25
MAX_SUB_PROCS = 4
#: Publisher sessions per publisher process.
SESSIONS_PER_PROC = 5


# === the scenarios ===============================================================================


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    kind: Literal["throughput", "latency", "idle"]
    pubs: int = 1
    subs: int = 1
    messages: int = 0  # throughput: messages in all (split over the publishers)
    rate: int = 0  # latency and idle: messages per second
    seconds: float = 0.0
    clients: int = 0  # idle


def scenarios_for(messages: int, messages_k100: int, seconds: float, clients: int) -> list[Scenario]:
    return [
        Scenario("k1", "1 → 1", "throughput", 1, 1, messages),
        Scenario("k10", "1 → 10", "throughput", 1, 10, messages),
        Scenario("k100", "1 → 100", "throughput", 1, 100, messages_k100),
        Scenario("p20k10", "20 → 10", "throughput", 20, 10, messages),
        *(Scenario(f"lat{r}", f"latency {r}/s", "latency", rate=r, seconds=seconds) for r in (1000, 5000, 20_000)),
        Scenario("idle", "idle clients", "idle", rate=1000, seconds=seconds, clients=clients),
    ]


# === running one =================================================================================


def _split(items: Sequence[int], parts: int) -> list[list[int]]:
    return [list(items[k::parts]) for k in range(parts) if items[k::parts]]


def run_stream(
    bench: Bench, broker: Broker, sc: Scenario, run: int, *, prefix: str = "", others: Sequence[Proc] = ()
) -> Json:
    """Publishers → broker → subscribers, with the warm-up handshake; the raw numbers.

    ``others`` are more bench processes running meanwhile (the idle clients): their CPU is the
    bench's own, not background load."""
    latency = sc.rate > 0
    per_session = (round(sc.rate * sc.seconds) if latency else sc.messages) // sc.pubs
    expected = per_session * sc.pubs
    budget = SETUP_TIMEOUT + (sc.seconds * 3 if latency else 30 + expected * sc.subs / 20_000)
    common = {"endpoints": broker.endpoints, "zchat": broker.kind.zchat, "deadline": budget + SETUP_TIMEOUT * 2}
    # Subscribers first, so that they are connected by the time the warm-up starts.
    sub_procs = 1 if sc.subs == 1 else min(MAX_SUB_PROCS, max(2, math.ceil(sc.subs / SUBS_PER_PROC)))
    sub_names, workers = [], []
    for k, part in enumerate(_split(range(sc.subs), sub_procs)):
        name = f"r{run}-{prefix}sub{k}"
        cfg = {**common, "role": "sub", "sockets": len(part), "expected": expected, "latency": latency}
        workers.append(bench.spawn_worker(name, {**cfg, "capacity": expected + 1}))
        sub_names.append(name)
    bench.control.expect("up", sub_names, SETUP_TIMEOUT)
    pub_names = []
    sessions = list(range(sc.pubs))
    for k, part in enumerate(_split(sessions, math.ceil(sc.pubs / SESSIONS_PER_PROC))):
        name = f"r{run}-{prefix}pub{k}"
        rate = sc.rate * len(part) / sc.pubs
        cfg = {**common, "role": "pub", "sessions": part, "per_session": per_session, "rate": rate}
        workers.append(bench.spawn_worker(name, cfg))
        pub_names.append(name)
    ctl = bench.control
    try:
        ctl.expect("up", pub_names, SETUP_TIMEOUT * 2)
        ctl.send(pub_names, "warm")
        ctl.expect("warm", sub_names, SETUP_TIMEOUT)
        ctl.send(pub_names, "stopwarm")
        stopped = ctl.expect("stopped", pub_names, SETUP_TIMEOUT)
        watched = [*workers, *others]
        before = {w.name: proc_cpu(w.popen.pid) or 0.0 for w in watched}
        busy0, own0 = machine_busy_seconds(), own_cpu()
        cpu0, t0 = cpu_seconds(broker.pid), time.monotonic()
        ctl.send(sub_names, "go")
        ctl.send(pub_names, "go")
        done = ctl.expect("done", pub_names, budget)
        results = ctl.expect("result", sub_names, budget + QUIET_END + 10)
        cpu1, t1 = cpu_seconds(broker.pid), time.monotonic()
        busy1, own1 = machine_busy_seconds(), own_cpu()
        reported = {**done, **results}
        after = {w.name: proc_cpu(w.popen.pid) or float(reported.get(w.name, {}).get("cpu_s", 0)) for w in watched}
        ctl.send(pub_names, "stop")
    finally:
        bench.fleet.reap(workers, 5.0)
    workers_cpu = {"pub": 0.0, "sub": 0.0, "idle": 0.0}
    for name, start in before.items():  # names end in <role><number>
        workers_cpu[name.rsplit("-", 1)[-1].rstrip("0123456789")] += after[name] - start
    bench_cpu = (cpu1 - cpu0) + sum(after[n] - before[n] for n in before) + (own1 - own0)
    errors = [str(d["error"]) for d in done.values() if d.get("error")]
    if errors:
        raise BenchError(f"publisher: {errors[0]}")
    sent = sum(int(d["sent"]) for d in done.values())
    t_start = min(int(d["t_start"]) for d in done.values())
    t_sent = max(int(d["t_end"]) for d in done.values())
    socks = [s for r in results.values() for s in r["sockets"]]
    for s in socks:
        s["lost"] = sent - s["count"]
        span = (s["last_ns"] - t_start) / 1e9
        s["msgs_per_s"] = s["count"] / span if s["count"] and span > 0 else 0.0
    last = max((s["last_ns"] for s in socks), default=t_start)
    out: Json = {
        "expected": sent,
        "warmup_msgs": sum(int(s["warm"]) for s in stopped.values()),
        "per_sub_msgs_per_s": statistics.median(s["msgs_per_s"] for s in socks),
        "delivered_msgs_per_s": sum(s["count"] for s in socks) / max(1e-9, (last - t_start) / 1e9),
        "pushed_msgs_per_s": sent / max(1e-9, (t_sent - t_start) / 1e9),
        "lost": sum(s["lost"] for s in socks),
        "lost_max_per_sub": max(s["lost"] for s in socks),
        "dups": sum(s["dups"] for s in socks),
        "subs_timed_out": sum(bool(r["timed_out"]) for r in results.values()),
        "broker_cpu_s": cpu1 - cpu0,
        "window_s": t1 - t0,
        "broker_cpu_pct": 100 * (cpu1 - cpu0) / max(1e-9, t1 - t0),
        "workers_cpu_s": workers_cpu,
        # CPU that processes outside the bench took from it (% of one CPU): noise to watch.
        "background_cpu_pct": 100 * max(0.0, busy1 - busy0 - bench_cpu) / max(1e-9, t1 - t0),
        "subscribers": socks,
    }
    if latency:
        lat = sorted(x for r in results.values() for per in r["latencies_ns"] for x in per)
        out["latency_ms"] = {
            "count": len(lat),
            **{name: percentile(lat, q) / 1e6 for name, q in LATENCY_PERCENTILES.items()},
            "max": (lat[-1] / 1e6) if lat else math.nan,
        }
    return out


def run_idle(bench: Bench, broker: Broker, sc: Scenario, run: int) -> Json:
    """``sc.clients`` idle clients, then one pair at ``sc.rate`` while they stay connected."""
    names, workers = [], []
    clients = list(range(sc.clients))
    for k, part in enumerate(_split(clients, math.ceil(sc.clients / IDLE_PER_PROC))):
        name = f"r{run}-idle{k}"
        cfg = {"role": "idle", "clients": part, "endpoints": broker.endpoints, "zchat": broker.kind.zchat}
        cfg["deadline"] = SETUP_TIMEOUT * 6 + sc.seconds * 3
        workers.append(bench.spawn_worker(name, cfg))
        names.append(name)
    try:
        bench.control.expect("up", names, SETUP_TIMEOUT * 2)
        connected = memory_mb(broker.pid)
        pair = run_stream(bench, broker, sc, run, prefix="pair-", others=workers)
        after = memory_mb(broker.pid)
        bench.control.send(names, "stop")
        idle = bench.control.expect("result", names, SETUP_TIMEOUT)
    finally:
        bench.fleet.reap(workers, 5.0)
    pair["idle"] = {
        "clients": sum(int(r["clients"]) for r in idle.values()),
        "rss_mb_connected": connected["rss_mb"],
        "rss_mb_after_pair": after["rss_mb"],
        **{key: sum(int(r[key]) for r in idle.values()) for key in ("feed_msgs", "heartbeats", "hb_ok", "hb_errors")},
    }
    return pair


def run_one(bench: Bench, sc: Scenario, kind: BrokerKind, repeat: int, settle: float) -> Json:
    """One scenario against one fresh broker; never raises (a failure is recorded)."""
    bench.runs += 1
    run = bench.runs
    record: Json = {"scenario": sc.key, "broker": kind.key, "repeat": repeat, "ok": False, "error": None}
    record["busy_before_pct"] = wait_quiet(settle) if settle > 0 else math.nan
    started = time.monotonic()
    broker = None
    try:
        broker = start_broker(bench, kind, run)
        record.update(run_idle(bench, broker, sc, run) if sc.kind == "idle" else run_stream(bench, broker, sc, run))
        record.update(memory_mb(broker.pid))
        if kind.zchat:
            stats = zchat_request(bench.ctx, broker.endpoints["rpc"], {"type": "stats"}, 10.0)
            keep = ("received", "published", "rejected", "rate_limited", "dropped_malformed", "dropped_unknown_session")
            record["broker_stats"] = {k: stats.get(k) for k in (*keep, "sessions", "store_bytes")}
        record["ok"] = True
    except (BenchError, zmq.ZMQError, OSError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if broker is not None:
            status = bench.fleet.stop(broker.proc)
            if status not in (0, -signal.SIGTERM) and record["ok"]:
                record["broker_exit"] = status
        bench.fleet.stop_all()  # anything a failed run left behind
        for leftover in bench.db_dir.glob(f"history-{run}.sqlite3*"):
            leftover.unlink()
    record["run_s"] = time.monotonic() - started
    return record
