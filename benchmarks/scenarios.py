"""The scenarios, and running one: a fresh broker, its workers, the handshake, the raw numbers.

A scenario is a shape of load: the load generator alone (``source``), 1 → K throughput, 20 → 10,
paced latency with K subscribers, idle clients plus a pair, and the opt-in sustained million.
:func:`run_one` runs one scenario against one fresh broker and returns a JSON record of
everything measured; it never raises, a failed run is a record with ``ok`` false.
"""

from __future__ import annotations

import math
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import zmq

from benchmarks import wire
from benchmarks.brokers import PGSTORE, PROXY_VARIANTS, Broker, BrokerKind, Watch, start_broker, zchat_request
from benchmarks.fleet import QUIET_END, SETUP_TIMEOUT, Bench, BenchError, Json, Proc
from benchmarks.metrics import (
    LATENCY_PERCENTILES,
    cpu_seconds,
    file_size,
    finish_ns,
    machine_busy_seconds,
    memory_mb,
    open_sockets,
    own_cpu,
    percentile,
    proc_cpu,
    wait_quiet,
)

# --- how the load is spread over worker processes ------------------------------------------------

#: Idle clients per worker process (3 sockets each: well under libzmq's 1 023 per context).
IDLE_PER_PROC = 250
#: Subscriber sockets per subscriber process (at most; at least 2 processes past K = 1), each
#: counted by a device thread of its own.
SUBS_PER_PROC = 13
MAX_SUB_PROCS = 4
#: Publisher sessions per publisher process.
SESSIONS_PER_PROC = 5
#: Subscribers whose every message is timed, at most, in a latency scenario (spread over the
#: subscriber processes); the others are counted in C. Reading them all in Python at K = 50
#: would make the subscribers the load on the machine.
LATENCY_PROBES = 10

# --- how often the coordinator samples the broker ------------------------------------------------

#: During a stream: when the broker's count of forwarded messages stopped is interpolated
#: between two samples.
WATCH_EVERY = 0.02
#: During the sustained run: RSS and WAL over time.
SUSTAINED_WATCH_EVERY = 0.1
#: Idle clients: a reading of the broker (open sockets, RSS) counts once the next one, this many
#: seconds later, is the same (RSS: within RSS_TOLERANCE; heartbeats keep it moving a little).
SETTLE = 0.2
RSS_TOLERANCE = 0.01

Family = Literal["source", "throughput", "many", "latency", "idle", "sustained"]


# === the scenarios ===============================================================================


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    family: Family
    pubs: int = 1
    subs: int = 1
    messages: int = 0  # source, throughput, sustained: messages in all (split over the publishers)
    rate: int = 0  # latency and idle: messages per second
    seconds: float = 0.0  # latency and idle: how long; sustained: the bound on the whole run
    clients: int = 0  # idle
    #: How the publishers send: ``replay``, built before the clock and sent by a libzmq device;
    #: ``loop``, built and sent one by one in Python (stamped: latency; and the sustained run,
    #: too long to build before).
    engine: Literal["replay", "loop"] = "replay"

    def __post_init__(self) -> None:
        assert not self.timed or self.engine == "loop", "only a Python loop can stamp and pace"

    @property
    def timed(self) -> bool:
        """Paced, with every message stamped and timed."""
        return self.rate > 0

    def runs_on(self, kind: BrokerKind) -> bool:
        if kind in PROXY_VARIANTS:
            return self.family == "idle"
        if self.family == "source":
            return not kind.zchat
        if self.family == "sustained":
            return kind.zchat
        return True


def scenarios_for(
    *,
    source: int,
    messages: int,
    ks: Sequence[int],
    rate: int,
    seconds: float,
    clients: int,
    sustained: int,
    bound: float,
) -> list[Scenario]:
    return [
        Scenario("source-replay", "replay device", "source", subs=0, messages=source),
        Scenario("source-loop", "Python loop", "source", subs=0, messages=source, engine="loop"),
        *(Scenario(f"k{k}", f"1 → {k}", "throughput", subs=k, messages=messages) for k in ks),
        Scenario("p20k10", "20 → 10", "many", pubs=20, subs=10, messages=messages),
        *(
            Scenario(f"lat{k}", label, "latency", subs=k, rate=rate, seconds=seconds, engine="loop")
            for k in ks
            for label in [f"1 → {k} at {rate:,} msg/s".replace(",", " ")]
        ),
        Scenario("idle", "idle clients", "idle", rate=1000, seconds=seconds, clients=clients, engine="loop"),
        Scenario(
            "sustained",
            f"sustained {sustained:,}".replace(",", " "),
            "sustained",
            messages=sustained,
            seconds=bound,
            engine="loop",
        ),
    ]


# === running one =================================================================================


def _split(items: Sequence[int], parts: int) -> list[list[int]]:
    return [list(items[k::parts]) for k in range(parts) if items[k::parts]]


def _spread(count: int, of: int) -> list[int]:
    """``count`` indices spread evenly over ``range(of)``."""
    return sorted({math.floor(i * of / count) for i in range(count)}) if count else []


def run_stream(
    bench: Bench, broker: Broker, sc: Scenario, run: int, *, prefix: str = "", others: Sequence[Proc] = ()
) -> Json:
    """Publishers → broker → subscribers, with the warm-up handshake; the raw numbers.

    ``others`` are more bench processes running meanwhile (the idle clients): their CPU is the
    bench's own, not background load."""
    per_session = (round(sc.rate * sc.seconds) if sc.timed else sc.messages) // sc.pubs
    expected = per_session * sc.pubs
    if sc.family == "sustained":
        budget = sc.seconds
    elif sc.timed:
        budget = SETUP_TIMEOUT + sc.seconds * 3
    else:
        budget = SETUP_TIMEOUT + 30 + expected * max(1, sc.subs) / 20_000
    common = {"endpoints": broker.endpoints, "deadline": budget + SETUP_TIMEOUT * 3}
    # Subscribers first, so that they are connected by the time the warm-up starts.
    sub_procs = min(sc.subs, MAX_SUB_PROCS, max(2, math.ceil(sc.subs / SUBS_PER_PROC)))
    sub_names, workers = [], []
    for k, part in enumerate(_split(range(sc.subs), sub_procs)):
        name = f"r{run}-{prefix}sub{k}"
        probes = _spread(min(len(part), math.ceil(LATENCY_PROBES * len(part) / sc.subs)), len(part)) if sc.timed else []
        cfg = {**common, "role": "sub", "sockets": len(part), "expected": expected, "fences": sc.pubs}
        cfg |= {"probes": probes, "shape": broker.kind.shape}
        workers.append(bench.spawn_worker(name, cfg))
        sub_names.append(name)
    ctl = bench.control
    watch = None
    finished = False  # on an error or an interrupt, the workers are stopped at once
    try:
        ctl.expect("up", sub_names, SETUP_TIMEOUT)
        pub_names = []
        for k, part in enumerate(_split(range(sc.pubs), math.ceil(sc.pubs / SESSIONS_PER_PROC))):
            name = f"r{run}-{prefix}pub{k}"
            cfg = {**common, "role": "pub", "sessions": part, "per_session": per_session, "shape": broker.kind.shape}
            cfg |= {"rate": sc.rate * len(part) / sc.pubs, "engine": sc.engine, "bound": budget}
            workers.append(bench.spawn_worker(name, cfg))
            pub_names.append(name)
        ctl.expect("up", pub_names, SETUP_TIMEOUT * 2)
        ctl.send(pub_names, "warm")
        ctl.expect("warm", sub_names, SETUP_TIMEOUT)
        ctl.send(pub_names, "stopwarm")
        stopped = ctl.expect("stopped", pub_names, SETUP_TIMEOUT * 2)  # the replays are built
        ctl.expect("ready", sub_names, SETUP_TIMEOUT)
        watch = Watch(bench.ctx, broker, SUSTAINED_WATCH_EVERY if sc.family == "sustained" else WATCH_EVERY)
        watched = [*workers, *others]
        before = {w.name: proc_cpu(w.popen.pid) or 0.0 for w in watched}
        busy0, own0, db0 = machine_busy_seconds(), own_cpu(), bench.postgres.cpu_seconds()
        cpu0, t0 = cpu_seconds(broker.pid), time.monotonic()
        base = watch.sample(now=True)
        assert base is not None
        ctl.send(sub_names, "go")
        ctl.send(pub_names, "go")
        done = ctl.expect("done", pub_names, budget + SETUP_TIMEOUT, tick=watch.sample)
        results = ctl.expect("result", sub_names, budget + QUIET_END + 10, tick=watch.sample)
        sent = sum(int(d["sent"]) for d in done.values())
        _until_forwarded(watch, base.forwarded + sent)
        cpu1, t1 = cpu_seconds(broker.pid), time.monotonic()
        busy1, own1, db1 = machine_busy_seconds(), own_cpu(), bench.postgres.cpu_seconds()
        reported = {**done, **results}
        after = {w.name: proc_cpu(w.popen.pid) or float(reported.get(w.name, {}).get("cpu_s", 0)) for w in watched}
        ctl.send(pub_names, "stop")
        finished = True
    finally:
        if watch is not None:
            watch.close()
        bench.fleet.reap(workers, 5.0 if finished else 0.0)
    errors = [str(d["error"]) for d in done.values() if d.get("error")]
    if errors:
        raise BenchError(f"publisher: {errors[0]}")
    window = max(1e-9, t1 - t0)
    role_cpu = {"pub": 0.0, "sub": 0.0, "idle": 0.0}
    role_rss = {"pub": 0.0, "sub": 0.0}
    for name, start in before.items():  # names end in <role><number>
        role = name.rsplit("-", 1)[-1].rstrip("0123456789")
        role_cpu[role] += after[name] - start
        if role in role_rss:
            role_rss[role] = max(role_rss[role], float(reported[name]["peak_rss_mb"]))
    # The database server's CPU is the pgstore broker's cost, not background load.
    db_cpu = db1 - db0 if broker.kind is PGSTORE else 0.0
    bench_cpu = (cpu1 - cpu0) + sum(after[n] - before[n] for n in before) + (own1 - own0) + db_cpu
    t_start = min(int(d["t_start"]) for d in done.values())
    t_sent = max(int(d["t_end"]) for d in done.values())
    socks = [s for r in results.values() for s in r["sockets"]]
    for s in socks:
        s["lost"] = sent - s["count"]
        span = (s["last_ns"] - t_start) / 1e9
        s["msgs_per_s"] = s["count"] / span if s["count"] and span > 0 else 0.0
    last = max((s["last_ns"] for s in socks), default=t_start)
    counts = [(s.t_ns, s.forwarded - base.forwarded) for s in watch.samples if s.t_ns >= base.t_ns]
    forwarded = counts[-1][1]
    forwarded_ns = finish_ns(counts, forwarded) if forwarded else t_start
    forwarded_span = (forwarded_ns - t_start) / 1e9
    broker_cpu = cpu1 - cpu0
    # CPU % over the active part of the window: from the start until the last message moved
    # (after it, the stages idle; a subscriber that lost messages waits QUIET_END for nothing).
    active = max(1e-9, (max(last, t_sent, forwarded_ns) - t_start) / 1e9)
    out: Json = {
        "expected": sent,
        "warmup_msgs": sum(int(s["warm"]) for s in stopped.values()),
        "published_msgs_per_s": sent / max(1e-9, (t_sent - t_start) / 1e9),
        "forwarded": forwarded,
        "forwarded_msgs_per_s": forwarded / forwarded_span if forwarded_span > 0 else math.nan,
        "per_sub_msgs_per_s": statistics.median(s["msgs_per_s"] for s in socks) if socks else math.nan,
        "delivered_msgs_per_s": sum(s["count"] for s in socks) / max(1e-9, (last - t_start) / 1e9),
        "lost": sum(s["lost"] for s in socks),
        "lost_max_per_sub": max((s["lost"] for s in socks), default=0),
        "dups": sum(s["dups"] for s in socks),
        "subs_timed_out": sum(bool(r["timed_out"]) for r in results.values()),
        "broker_cpu_s": broker_cpu,
        "window_s": window,
        "active_s": active,
        "broker_cpu_pct": 100 * broker_cpu / active,
        "broker_cpu_us_per_msg": 1e6 * broker_cpu / forwarded if forwarded else math.nan,
        "pub_cpu_us_per_msg": 1e6 * role_cpu["pub"] / sent if sent > 0 else math.nan,
        "cpu_pct": {"broker": 100 * broker_cpu / active, **{k: 100 * v / active for k, v in role_cpu.items()}},
        "db_cpu_pct": 100 * db_cpu / active if broker.kind is PGSTORE else math.nan,
        "workers_peak_rss_mb": role_rss,
        # CPU that processes outside the bench took from it (% of one CPU): noise to watch.
        "background_cpu_pct": 100 * max(0.0, busy1 - busy0 - bench_cpu) / window,
        "subscribers": socks,
    }
    if sc.timed:
        lat = sorted(x for r in results.values() for per in r["latencies_ns"] for x in per)
        out["latency_ms"] = {
            "count": len(lat),
            **{name: percentile(lat, q) / 1e6 for name, q in LATENCY_PERCENTILES.items()},
            "max": (lat[-1] / 1e6) if lat else math.nan,
        }
    if sc.family == "sustained":
        out["sustained"] = _growth(watch, broker)
    return out


def _until_forwarded(watch: Watch, count: int) -> None:
    """Sample until the broker has forwarded ``count`` messages, or its count stood still for
    QUIET_END seconds (what it dropped, it will never forward)."""
    last = watch.sample(now=True)
    assert last is not None
    still_since = time.monotonic()
    while last.forwarded < count and time.monotonic() - still_since < QUIET_END:
        time.sleep(WATCH_EVERY)
        s = watch.sample(now=True)
        assert s is not None
        if s.forwarded != last.forwarded:
            still_since = time.monotonic()
        last = s


def _growth(watch: Watch, broker: Broker) -> Json:
    """The broker's RSS and WAL over the sustained run: maxima over each half (bounded growth
    means the second half's are no higher than the first's), and every sample."""
    samples = watch.samples
    half = len(samples) // 2
    first, second = samples[:half] or samples, samples[half:]
    t0 = samples[0].t_ns
    return {
        "max_rss_mb": max(s.rss_mb for s in samples),
        "max_rss_mb_first_half": max(s.rss_mb for s in first),
        "max_rss_mb_second_half": max(s.rss_mb for s in second),
        "max_wal_mb": max(s.wal_bytes for s in samples) / 2**20,
        "max_wal_mb_first_half": max(s.wal_bytes for s in first) / 2**20,
        "max_wal_mb_second_half": max(s.wal_bytes for s in second) / 2**20,
        "db_mb_at_end": file_size(broker.db) / 2**20 if broker.db is not None else 0.0,
        "samples": [[(s.t_ns - t0) / 1e9, s.forwarded, s.rss_mb, s.wal_bytes] for s in samples],
    }


def run_idle(bench: Bench, broker: Broker, sc: Scenario, run: int) -> Json:
    """``sc.clients`` idle clients, then one pair at ``sc.rate`` while they stay connected."""
    # Before any client: its listening sockets and such (the bench's readiness check is gone).
    sockets = int(_settled(lambda: open_sockets(broker.pid), 0.0))
    empty = memory_mb(broker.pid)
    names, workers = [], []
    for k, part in enumerate(_split(range(sc.clients), math.ceil(sc.clients / IDLE_PER_PROC))):
        name = f"r{run}-idle{k}"
        cfg = {"role": "idle", "clients": part, "endpoints": broker.endpoints, "zchat": broker.kind.zchat}
        cfg["deadline"] = SETUP_TIMEOUT * 6 + sc.seconds * 3
        workers.append(bench.spawn_worker(name, cfg))
        names.append(name)
    finished = False
    try:
        up = bench.control.expect("up", names, SETUP_TIMEOUT * 2)
        _until_connected(broker, sockets + sum(int(r["connections"]) for r in up.values()))
        connected = memory_mb(broker.pid)
        pair = run_stream(bench, broker, sc, run, prefix="pair-", others=workers)
        after = memory_mb(broker.pid)
        bench.control.send(names, "stop")
        idle = bench.control.expect("result", names, SETUP_TIMEOUT)
        finished = True
    finally:
        bench.fleet.reap(workers, 5.0 if finished else 0.0)
    clients = sum(int(r["clients"]) for r in idle.values())
    pair["idle"] = {
        "clients": clients,
        "connections": sum(int(r["connections"]) for r in up.values()),
        "rss_mb_empty": empty["rss_mb"],
        "rss_mb_connected": connected["rss_mb"],
        "rss_mb_after_pair": after["rss_mb"],
        "kb_per_client": (connected["rss_mb"] - empty["rss_mb"]) * 1024 / max(1, clients),
        **{key: sum(int(r[key]) for r in idle.values()) for key in ("feed_msgs", "heartbeats", "hb_ok", "hb_errors")},
    }
    return pair


def _settled(read: Callable[[], float], tolerance: float, timeout: float = SETUP_TIMEOUT) -> float:
    """A reading once two in a row, SETTLE apart, differ by at most ``tolerance`` (relative);
    the last one after ``timeout`` seconds in any case."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(SETTLE)
        now = read()
        if abs(now - value) <= tolerance * abs(value):
            return now
        value = now
    return value


def _until_connected(broker: Broker, sockets: int) -> None:
    """Wait until the broker has ``sockets`` sockets open (connecting is asynchronous: a
    client's "up" does not mean that its connections are there), then until its RSS settles
    (the ZMTP handshakes allocate the buffers of each connection)."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while open_sockets(broker.pid) < sockets:
        if time.monotonic() > deadline:
            raise BenchError(f"the broker has {open_sockets(broker.pid)} sockets open, not {sockets}")
        time.sleep(0.05)
    _settled(lambda: memory_mb(broker.pid)["rss_mb"], RSS_TOLERANCE)


def run_one(bench: Bench, sc: Scenario, kind: BrokerKind, repeat: int, settle: float) -> Json:
    """One scenario against one fresh broker; never raises (a failure is recorded)."""
    bench.runs += 1
    run = bench.runs
    record: Json = {"scenario": sc.key, "broker": kind.key, "repeat": repeat, "ok": False, "error": None}
    record["busy_before_pct"] = wait_quiet(settle) if settle > 0 else math.nan
    started = time.monotonic()
    broker = None
    try:
        broker = start_broker(bench, kind, run, many_clients=sc.family == "idle")
        record.update(run_idle(bench, broker, sc, run) if sc.family == "idle" else run_stream(bench, broker, sc, run))
        record.update(memory_mb(broker.pid))
        if kind.zchat:
            reply = zchat_request(bench.ctx, broker.endpoints["rpc"], wire.stats(), 10.0)
            keep = ("received", "published", "rejected", "rate_limited", "dropped_malformed", "dropped_unknown_session")
            record["broker_stats"] = {k: reply.get(k) for k in (*keep, "sessions", "store_bytes")}
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
        if kind is PGSTORE:
            bench.postgres.drop(run)
    record["run_s"] = time.monotonic() - started
    return record
