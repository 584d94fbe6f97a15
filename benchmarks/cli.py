#!/usr/bin/env python3
"""zchat's broker against the physical limit for its shape: ``zmq.proxy`` (PULL→PUB in C).

Run from the repository root, in the dev venv::

    python benchmarks/bench.py --quick --repeat 1                 # a fast check, about a minute
    python benchmarks/bench.py --markdown benchmarks/results.md --json benchmarks/results.json  # median of 3

Three brokers are measured side by side, each a separate process started and stopped by this
script for every run: ``proxy`` (a few lines of Python binding PULL and PUB and calling
``zmq.proxy``: libzmq forwards every message with no Python per message), ``zchat (store on)``
(``python -m zchat broker --db <tmp file> --rate 0``) and ``zchat (store off)`` (``--no-store``).

The load is the same for all three: publisher processes push ~100-byte texts (to the proxy a
ready-made ``[b"#bench:", b'{"seq":N,...}']`` event of the same shape and size as the one zchat
publishes; to zchat a ``Post`` after a ``hello`` on the rpc socket), and subscriber processes
each poll many raw SUB sockets subscribed to ``#bench:``. A subscriber parses only the ``seq``
(the digits after ``{"seq":``) and the one-letter mark at the start of the text (``W`` warm-up,
``M`` measured) and, in the latency scenarios, the ``time.monotonic_ns()`` the publisher wrote
into the text just before sending (one clock for every process on Linux).

Before a clock starts, every subscriber has seen a warm-up message (the publishers send them
until each subscriber process reported so on the control channel), so slow joiners cost nothing
and are not counted. Scenarios:

- ``1→K``: one publisher, N messages as fast as the broker takes them, K = 1, 10, 100.
- ``20→10``: 20 publishers (sessions) in 4 processes, N messages in all, 10 subscribers.
- ``latency R/s``: one publisher paced at R msg/s for a few seconds, one subscriber: p50/p99/p99.9.
- ``idle``: 1 000 connected idle clients (zchat: real sessions, hello then heartbeats, each with
  a SUB, a DEALER and a PUSH; proxy: a SUB and a PUSH each) plus one pair at 1 000 msg/s.

Reported per broker: messages/s per subscriber (median over subscribers), the ratio to the
proxy, broker CPU seconds (utime+stime of its process over the measured window) and peak RSS
(VmHWM), messages lost (expected − distinct received, summed over subscribers). Every number is
the median over ``--repeat`` runs; ``--json FILE`` keeps every run's raw numbers. The Markdown
table goes to stdout, progress to stderr. See benchmarks/README.md for what the columns mean.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import secrets
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click
import zmq

Json = dict[str, Any]
Ctx = zmq.Context[zmq.Socket[bytes]]
Sock = zmq.Socket[bytes]

# --- the wire shape shared by publishers and subscribers ------------------------------------

ROOM = "bench"
TOPIC = b"#bench:"
#: Where the text starts in a feed event; the first letter of the text marks what it is.
TEXT_KEY = b'"text":"'
MEASURED, WARMUP = ord("M"), ord("W")
#: The proxy's events carry a fixed timestamp of the length zchat's have.
FAKE_TS = b"2000-01-01T00:00:00.000Z"
#: zchat's feed high-water mark (zchat.broker.shell.FEED_HWM); the proxy's PUB gets the same.
FEED_HWM = 10_000

# --- bounds: every loop and every wait ends by itself ----------------------------------------

#: Messages taken from one socket before looking at the others.
BATCH = 256
#: A push that cannot be queued for this long means the broker is gone.
PUSH_TIMEOUT_MS = 10_000
#: Starting a broker, setting up workers, the warm-up handshake: each may take this long.
SETUP_TIMEOUT = 30.0
#: A stream is over when no measured message arrived for this long after the go.
QUIET_END = 5.0
#: Seconds between two warm-up messages of a publisher session.
WARM_INTERVAL = 0.005
#: Idle clients per worker process (3 sockets each: well under libzmq's 1 023 per context).
IDLE_PER_PROC = 250
#: Rooms the idle clients are spread over.
IDLE_ROOMS = 10
#: Subscriber sockets per subscriber process (at most; at least 2 processes past K = 1).
SUBS_PER_PROC = 25
MAX_SUB_PROCS = 4
#: Publisher sessions per publisher process.
SESSIONS_PER_PROC = 5


class BenchError(Exception):
    """A run that could not be completed: a worker died or something did not answer in time."""


# === control channel ==========================================================================
# The coordinator binds a ROUTER; each worker connects a DEALER whose routing id is its name.
# Messages are JSON objects with a "type".


def _send_json(sock: Sock, frames: Sequence[bytes], msg: Json) -> None:
    sock.send_multipart([*frames, json.dumps(msg, separators=(",", ":")).encode()])


class Link:
    """A worker's end of the control channel."""

    def __init__(self, ctx: Ctx, endpoint: str, name: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)  # the last report must get out
        self.sock.connect(endpoint)

    def send(self, kind: str, **fields: Any) -> None:
        _send_json(self.sock, [], {"type": kind, "cpu_s": own_cpu(), **fields})

    def recv(self, timeout: float) -> Json | None:
        """The next command, or None after ``timeout`` seconds."""
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return None
        msg: Json = json.loads(self.sock.recv())
        return msg


class Control:
    """The coordinator's end: send commands by worker name, wait for reports of a kind."""

    def __init__(self, ctx: Ctx, endpoint: str, fleet: Fleet) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self._fleet = fleet
        self._inbox: dict[tuple[str, str], Json] = {}

    def send(self, names: Sequence[str], kind: str, **fields: Any) -> None:
        for name in names:
            try:
                _send_json(self.sock, [name.encode()], {"type": kind, **fields})
            except zmq.ZMQError as exc:
                raise BenchError(f"cannot reach worker {name}: {exc}") from None

    def expect(self, kind: str, names: Sequence[str], timeout: float) -> dict[str, Json]:
        """One ``kind`` report from each of ``names``; a worker's error or death raises."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [n for n in names if (n, kind) not in self._inbox]
            if not missing:
                return {n: self._inbox.pop((n, kind)) for n in names}
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no {kind!r} from {', '.join(missing[:5])} within {timeout:.0f} s")
            if not self.sock.poll(int(min(left, 0.25) * 1000) + 1):
                self._fleet.check()
                continue
            ident, body = self.sock.recv_multipart()
            name, msg = ident.decode(), json.loads(body)
            if msg.get("type") == "error":
                raise BenchError(f"worker {name} failed: {msg.get('error')}")
            self._inbox[name, str(msg.get("type"))] = msg


# === processes ===============================================================================


#: Runs every child: asks Linux for SIGKILL when the bench dies (PR_SET_PDEATHSIG, which an
#: exec keeps), then becomes the real command. No preexec_fn: the bench has libzmq threads.
DEATH_SHIM = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); os.execv(sys.argv[2], sys.argv[2:])"
)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Fleet:
    """Every process the bench started: checked while waiting, stopped and reaped at the end."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []

    def spawn(
        self, name: str, argv: list[str], *, stdout: int | None = subprocess.DEVNULL, env: dict[str, str] | None = None
    ) -> Proc:
        log = self.logdir / f"{name}.log"
        with log.open("wb") as err:
            shim = [sys.executable, "-c", DEATH_SHIM, str(os.getpid())]
            full_env = None if env is None else {**os.environ, **env}
            # cwd: not the checkout, whose zchat/ would shadow the snapshot for ``python -m``.
            popen = subprocess.Popen(
                [*shim, *argv], stdin=subprocess.DEVNULL, stdout=stdout, stderr=err, env=full_env, cwd=self.logdir
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        """Raise if a process died before it was asked to stop."""
        for proc in self.procs:
            rc = proc.popen.poll()
            if rc is not None and rc != 0:
                self.procs.remove(proc)
                raise BenchError(f"{proc.name} exited with status {rc}: {_tail(proc.log)}")

    def stop(self, proc: Proc, *, grace: float = 5.0) -> int | None:
        """Ask politely (SIGTERM), then SIGKILL; always reaped. Returns the exit status."""
        if proc in self.procs:
            self.procs.remove(proc)
        p = proc.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p.stdout is not None:
            p.stdout.close()
        return p.returncode

    def reap(self, procs: Sequence[Proc], timeout: float) -> None:
        """Wait for processes told to exit; stop whichever does not."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            self.stop(proc, grace=1.0)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(OSError):
                proc.popen.send_signal(signal.SIGTERM)
        for proc in list(self.procs):
            self.stop(proc, grace=2.0)


def _tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# === the broker process and what /proc says about it ============================================


@dataclass(frozen=True)
class BrokerKind:
    key: Literal["proxy", "store", "nostore"]
    label: str

    @property
    def zchat(self) -> bool:
        return self.key != "proxy"


BROKERS = (
    BrokerKind("proxy", "proxy"),
    BrokerKind("store", "zchat (store on)"),
    BrokerKind("nostore", "zchat (store off)"),
)

#: The baseline: everything it does per message happens inside libzmq.
PROXY_CODE = """\
import sys, zmq
ingest, feed, hwm = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL)
pull.bind(ingest)
pub = ctx.socket(zmq.PUB)
pub.setsockopt(zmq.SNDHWM, hwm)
pub.bind(feed)
print("ready", flush=True)
zmq.proxy(pull, pub)
"""


@dataclass
class Broker:
    kind: BrokerKind
    proc: Proc
    endpoints: dict[str, str]

    @property
    def pid(self) -> int:
        return self.proc.popen.pid


def _endpoints(transport: str, tmp: Path, run: int) -> dict[str, str]:
    if transport == "ipc":
        return {k: f"ipc://{tmp}/{k}-{run}" for k in ("ingest", "feed", "rpc")}
    ports = []
    holders = []
    for _ in range(3):  # three free ports, held together so they differ
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        holders.append(s)
        ports.append(s.getsockname()[1])
    for s in holders:
        s.close()
    return {k: f"tcp://127.0.0.1:{port}" for k, port in zip(("ingest", "feed", "rpc"), ports, strict=True)}


def start_broker(bench: Bench, kind: BrokerKind, run: int) -> Broker:
    ends = _endpoints(bench.transport, bench.tmp, run)
    if kind.zchat:
        store = ["--no-store"] if kind.key == "nostore" else ["--db", str(bench.db_dir / f"history-{run}.sqlite3")]
        argv = [sys.executable, "-m", "zchat", "broker", "--ingest", ends["ingest"], "--feed", ends["feed"]]
        argv += ["--rpc", ends["rpc"], "--rate", "0", "--log-level", "warning", *store]
        # The snapshot of zchat taken at the start: every run measures the same code.
        broker = Broker(kind, bench.fleet.spawn(f"r{run}-broker", argv, env={"PYTHONPATH": str(bench.src)}), ends)
        _zchat_request(bench.ctx, ends["rpc"], {"type": "stats"}, SETUP_TIMEOUT)  # answers once bound
    else:
        argv = [sys.executable, "-c", PROXY_CODE, ends["ingest"], ends["feed"], str(FEED_HWM)]
        proc = bench.fleet.spawn(f"r{run}-broker", argv, stdout=subprocess.PIPE)
        broker = Broker(kind, proc, ends)
        assert proc.popen.stdout is not None
        ready, _, _ = select.select([proc.popen.stdout], [], [], SETUP_TIMEOUT)
        if not ready or proc.popen.stdout.readline().strip() != b"ready":
            raise BenchError(f"the proxy did not start: {_tail(proc.log)}")
    return broker


def _zchat_request(ctx: Ctx, rpc: str, request: Json, timeout: float) -> Json:
    """One rpc request to a zchat broker on a throwaway DEALER (queued until it connects)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(rpc)
        _send_json(sock, [b""], {**request, "req": "bench"})
        if not sock.poll(int(timeout * 1000)):
            raise BenchError(f"the zchat broker at {rpc} did not answer {request['type']!r} in {timeout:.0f} s")
        reply: Json = json.loads(sock.recv_multipart()[-1])
        return reply
    finally:
        sock.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float | None:
    """:func:`cpu_seconds`, or None for a process that is gone."""
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) in MB, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out.get("VmRSS", math.nan), "peak_rss_mb": out.get("VmHWM", math.nan)}


# === worker processes ============================================================================
# A worker is this script run as ``bench.py _worker '<json config>'``. It reports on its Link.


def worker_main(cfg: Json) -> int:
    ctx: Ctx = zmq.Context()
    link = Link(ctx, cfg["ctl"], cfg["name"])
    roles: dict[str, Callable[[Json, Link, Ctx], None]] = {
        "sub": subscriber,
        "pub": publisher,
        "idle": idle_clients,
    }
    status = 0
    try:
        roles[cfg["role"]](cfg, link, ctx)
    except Exception as exc:
        traceback.print_exc()
        link.send("error", error=f"{type(exc).__name__}: {exc}")
        status = 1
    finally:
        link.sock.close()  # lingers up to 2 s for the last report
        ctx.destroy(linger=0)
    return status


# --- subscriber --------------------------------------------------------------------------------


class SubStats:
    """What one SUB socket saw of the measured messages."""

    __slots__ = ("count", "dups", "first_ns", "last_ns", "lat", "other", "seen", "warm")

    def __init__(self, capacity: int) -> None:
        self.count = 0  # distinct measured seqs
        self.dups = 0
        self.first_ns = 0
        self.last_ns = 0
        self.other = 0  # events that are not bench messages (joins, ...) and warm-ups
        self.warm = False
        self.seen = bytearray(capacity)  # seen[seq] == 1: that measured seq arrived
        self.lat = array("q")  # ns, latency scenarios only

    def report(self) -> Json:
        return {
            "count": self.count,
            "dups": self.dups,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "other": self.other,
        }


def drain(sock: Sock, st: SubStats, latency: bool) -> bool:
    """Take up to BATCH waiting messages. Returns whether any measured one came."""
    measured = False
    for _ in range(BATCH):
        try:
            sock.recv(zmq.NOBLOCK)  # the topic; feed messages are always [topic, payload]
        except zmq.Again:
            break
        payload = sock.recv()
        now = time.monotonic_ns()
        i = payload.find(TEXT_KEY, 8)
        mark = payload[i + 8] if i > 0 else 0
        if mark != MEASURED:
            if mark == WARMUP:
                st.warm = True
            st.other += 1
            continue
        measured = True
        seq = int(payload[7 : payload.index(b",", 7)])  # {"seq":123,...
        seen = st.seen
        if seq >= len(seen):
            seen.extend(bytes(seq + 1 - len(seen) + 65_536))
        if seen[seq]:
            st.dups += 1
            continue
        seen[seq] = 1
        st.count += 1
        if not st.first_ns:
            st.first_ns = now
        st.last_ns = now
        if latency:  # text: "M <monotonic_ns> padding"
            start = i + 10
            st.lat.append(now - int(payload[start : payload.index(b" ", start)]))
    return measured


def subscriber(cfg: Json, link: Link, ctx: Ctx) -> None:
    """Many SUB sockets on the feed, polled together. Reports ``warm`` once every socket saw a
    warm-up message, then ``result`` when every socket has all ``expected`` messages, the stream
    went quiet for QUIET_END seconds after ``go``, or the deadline passed."""
    expected, latency = int(cfg["expected"]), bool(cfg["latency"])
    deadline = time.monotonic() + cfg["deadline"]
    socks: list[Sock] = []
    for _ in range(cfg["sockets"]):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(cfg["endpoints"]["feed"])
        s.setsockopt(zmq.SUBSCRIBE, TOPIC)
        socks.append(s)
    stats = {s: SubStats(cfg["capacity"]) for s in socks}
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    poller.register(link.sock, zmq.POLLIN)
    link.send("up")
    warm_told = go = timed_out = False
    last = 0.0
    complete = 0
    while complete < len(socks):
        now = time.monotonic()
        if now > deadline:
            timed_out = True
            break
        if go and now - last > QUIET_END:
            break
        for sock, _ in poller.poll(100):
            if sock is link.sock:
                cmd = link.recv(0)
                if cmd is not None and cmd["type"] == "go":
                    go, last = True, time.monotonic()
                continue
            st = stats[sock]
            before = st.count
            if drain(sock, st, latency):
                last = time.monotonic()
            if before < expected <= st.count:
                complete += 1
        if not warm_told and all(st.warm for st in stats.values()):
            link.send("warm")
            warm_told = True
    link.send(
        "result",
        timed_out=timed_out,
        sockets=[st.report() for st in stats.values()],
        latencies_ns=[list(st.lat) for st in stats.values()] if latency else [],
    )


# --- publisher -----------------------------------------------------------------------------------


class Session:
    """One publisher: a PUSH to ingest and, for zchat, a session (hello, heartbeats, token)."""

    def __init__(self, ctx: Ctx, cfg: Json, index: int, per_session: int) -> None:
        self.zchat = bool(cfg["zchat"])
        self.nick = f"pub{index}".encode()
        self.seq_base = index * per_session  # the proxy's seqs: distinct over all publishers
        self.text_bytes = int(cfg["text_bytes"])
        self.push = ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDTIMEO, PUSH_TIMEOUT_MS)
        self.push.connect(cfg["endpoints"]["ingest"])
        self.rpc: Sock | None = None
        self.token = b""
        self._next_beat = 0.0
        if self.zchat:
            self.rpc = ctx.socket(zmq.DEALER)
            self.rpc.setsockopt(zmq.LINGER, 0)
            self.rpc.connect(cfg["endpoints"]["rpc"])

    def hello(self, timeout: float) -> None:
        if self.rpc is None:
            return
        inbox = f"@{self.nick.decode()}:{secrets.token_urlsafe(18)}"
        hello = {"type": "hello", "req": "hello", "nick": self.nick.decode(), "rooms": [ROOM], "inbox": inbox}
        _send_json(self.rpc, [b""], hello)
        if not self.rpc.poll(int(timeout * 1000)):
            raise BenchError("no answer to hello")
        reply = json.loads(self.rpc.recv_multipart()[-1])
        if not reply.get("ok"):
            raise BenchError(f"hello refused: {reply}")
        self.token = str(reply["token"]).encode()
        self._next_beat = time.monotonic() + 1.0

    def keepalive(self) -> None:
        """Heartbeat about once a second (while not posting) and drop the replies."""
        if self.rpc is None:
            return
        while self.rpc.poll(0):
            self.rpc.recv_multipart()
        if time.monotonic() >= self._next_beat:
            _send_json(self.rpc, [b""], {"type": "heartbeat", "req": "hb", "token": self.token.decode()})
            self._next_beat = time.monotonic() + 1.0

    def send(self, n: int, mark: bytes) -> None:
        """Push message ``n`` (from 0) of this session: a Post for zchat, a feed event for the
        proxy. The text is ``<mark> <monotonic_ns> xxx…``, ``text_bytes`` long. (Frame by frame:
        ``send_multipart`` costs a few µs more per message in pyzmq.)"""
        text = b"%s %d " % (mark, time.monotonic_ns())
        text += b"x" * (self.text_bytes - len(text))
        msg_id = b"%s%d" % (mark, n)
        if self.zchat:
            post = b'{"token":"%s","room":"bench","kind":"message","id":"%s","text":"%s"}'
            self.push.send(post % (self.token, msg_id, text))
            return
        seq = self.seq_base + n + 1 if mark == b"M" else 0
        event = b'{"seq":%d,"ts":"%s","room":"bench","kind":"message","nick":"%s","text":"%s","id":"%s"}'
        self.push.send(TOPIC, zmq.SNDMORE)
        self.push.send(event % (seq, FAKE_TS, self.nick, text, msg_id))


def _wait_for(link: Link, sessions: list[Session], want: str, deadline: float) -> Json:
    """Keep the sessions alive until the coordinator says ``want``."""
    while time.monotonic() < deadline:
        cmd = link.recv(0.2)
        if cmd is not None and cmd["type"] == want:
            return cmd
        for s in sessions:
            s.keepalive()
    raise BenchError(f"no {want!r} from the coordinator in time")


def publisher(cfg: Json, link: Link, ctx: Ctx) -> None:
    """Sessions in one process. Commands: warm (send warm-ups until stopwarm), go (send the
    load, report done), stop (exit)."""
    deadline = time.monotonic() + cfg["deadline"]
    per_session, rate = int(cfg["per_session"]), float(cfg["rate"])
    sessions = [Session(ctx, cfg, i, per_session) for i in cfg["sessions"]]
    for s in sessions:
        s.hello(SETUP_TIMEOUT)
    link.send("up")
    _wait_for(link, sessions, "warm", deadline)
    warm = 0
    stop_by = min(deadline, time.monotonic() + SETUP_TIMEOUT)
    while time.monotonic() < stop_by:
        for s in sessions:
            s.send(warm, b"W")
        warm += 1
        cmd = link.recv(WARM_INTERVAL)
        if cmd is not None and cmd["type"] == "stopwarm":
            break
    link.send("stopped", warm=warm * len(sessions))
    _wait_for(link, sessions, "go", deadline)
    total = per_session * len(sessions)
    t_start = time.monotonic_ns()
    error = None
    try:
        sent = _paced(sessions, total, rate, deadline) if rate > 0 else _flood(sessions, per_session, deadline)
    except zmq.Again:
        sent, error = -1, f"a push blocked for {PUSH_TIMEOUT_MS} ms"
    link.send("done", sent=sent, t_start=t_start, t_end=time.monotonic_ns(), error=error)
    _wait_for(link, sessions, "stop", deadline + QUIET_END + 30)


def _flood(sessions: list[Session], per_session: int, deadline: float) -> int:
    """Every session's messages, round robin, as fast as the broker takes them."""
    for n in range(per_session):
        for s in sessions:
            s.send(n, b"M")
        if not n & 1023 and time.monotonic() > deadline:
            return n * len(sessions)
    return per_session * len(sessions)


def _paced(sessions: list[Session], total: int, rate: float, deadline: float) -> int:
    """``total`` messages at ``rate`` per second (all sessions together): message i is due at
    start + i/rate; late ones go out at once, each stamped when it is sent."""
    interval = 1e9 / rate
    start = time.monotonic_ns()
    i = 0
    while i < total:
        now = time.monotonic_ns()
        due = start + int(i * interval)
        if now < due:
            time.sleep((due - now) / 1e9)
            continue
        while i < total and start + int(i * interval) <= now:
            s = sessions[i % len(sessions)]
            s.send(i // len(sessions), b"M")
            i += 1
        if time.monotonic() > deadline:
            break
    return i


# --- idle clients --------------------------------------------------------------------------------


def idle_clients(cfg: Json, link: Link, ctx: Ctx) -> None:
    """Connected clients that say nothing. zchat: a session each (SUB on its room, its inbox and
    the heartbeats; DEALER for hello and a heartbeat a second, as zchat.Client does; an idle
    PUSH). Proxy: a SUB and a PUSH each. Reports ``up``, then ``result`` on ``stop``."""
    deadline = time.monotonic() + cfg["deadline"]
    ends, zchat = cfg["endpoints"], bool(cfg["zchat"])
    subs: list[Sock] = []
    dealers: list[Sock] = []
    pushes: list[Sock] = []
    tokens: dict[Sock, str] = {}
    for i in cfg["clients"]:
        nick = f"idle{i}"
        inbox = f"@{nick}:{secrets.token_urlsafe(18)}"
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(ends["feed"])
        room = f"idle{i % IDLE_ROOMS}"
        for topic in (f"#{room}:", inbox, "!hb:") if zchat else (f"#{room}:",):
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        subs.append(sub)
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(ends["ingest"])
        pushes.append(push)
        if zchat:
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(ends["rpc"])
            _send_json(dealer, [b""], {"type": "hello", "req": "hello", "nick": nick, "rooms": [room], "inbox": inbox})
            dealers.append(dealer)
    poller = zmq.Poller()
    for s in (*subs, *dealers):
        poller.register(s, zmq.POLLIN)
    counts = {"feed_msgs": 0, "heartbeats": 0, "hb_ok": 0, "hb_errors": 0}
    # Hellos were pipelined; now collect every answer.
    setup_by = min(deadline, time.monotonic() + SETUP_TIMEOUT * 2)
    while len(tokens) < len(dealers):
        if time.monotonic() > setup_by:
            raise BenchError(f"only {len(tokens)} of {len(dealers)} hellos answered")
        for sock, _ in poller.poll(100):
            if sock in tokens or sock not in dealers:
                _drain_idle(sock, counts, "feed_msgs")
                continue
            reply = json.loads(sock.recv_multipart()[-1])
            if not reply.get("ok"):
                raise BenchError(f"hello refused: {reply}")
            tokens[sock] = str(reply["token"])
    link.send("up", clients=len(subs))
    # Ten ticks a second; each tick heartbeats a tenth of the sessions (one beat per session
    # per second, as zchat.Client does) and reads what came. Ticks, not a busy poll: this
    # process shares the CPUs with the broker under test and must cost it little.
    tick, slices = 0, 10
    next_tick = time.monotonic()
    while time.monotonic() < deadline:
        cmd = link.recv(max(0.0, next_tick - time.monotonic()))
        if cmd is not None and cmd["type"] == "stop":
            link.send("result", clients=len(subs), **counts)
            return
        if time.monotonic() < next_tick:
            continue
        next_tick += 1.0 / slices
        for sock, _ in poller.poll(0):
            if sock in tokens:
                for frames in _recv_all(sock):
                    counts["hb_ok" if b'"ok":true' in frames[-1] else "hb_errors"] += 1
            else:
                _drain_idle(sock, counts, "feed_msgs")
        for dealer in dealers[tick % slices :: slices]:
            _send_json(dealer, [b""], {"type": "heartbeat", "req": "hb", "token": tokens[dealer]})
            counts["heartbeats"] += 1
        tick += 1
    raise BenchError("idle clients: no stop before the deadline")


def _recv_all(sock: Sock) -> Iterator[list[bytes]]:
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


def _drain_idle(sock: Sock, counts: dict[str, int], key: str) -> None:
    for _ in _recv_all(sock):
        counts[key] += 1


# === the coordinator =============================================================================


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


@dataclass
class Bench:
    """What every run shares: the temp dir, the processes, the control channel, the options."""

    tmp: Path
    ctx: Ctx
    fleet: Fleet
    transport: str
    text_bytes: int
    db_dir: Path
    src: Path  # holds the snapshot of the zchat package the brokers run
    control: Control = field(init=False)
    runs: int = 0

    def __post_init__(self) -> None:
        self.control = Control(self.ctx, f"ipc://{self.tmp}/control", self.fleet)

    def spawn_worker(self, name: str, cfg: Json) -> Proc:
        cfg = {**cfg, "name": name, "ctl": self.control.endpoint, "text_bytes": self.text_bytes}
        return self.fleet.spawn(name, [sys.executable, os.path.abspath(__file__), "_worker", json.dumps(cfg)])


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
            **{name: _percentile(lat, q) / 1e6 for name, q in LATENCY_PERCENTILES.items()},
            "max": (lat[-1] / 1e6) if lat else math.nan,
        }
    return out


LATENCY_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def _percentile(ordered: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted data (nan if empty)."""
    if not ordered:
        return math.nan
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))])


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


def wait_quiet(limit: float, threshold_pct: float = 15.0) -> float:
    """Wait (up to ``limit`` seconds) for half a second in which the machine's CPUs are idle
    but for ``threshold_pct`` % of one CPU: others may be using this machine. Returns the last
    such measurement."""
    deadline = time.monotonic() + limit
    while True:
        busy, t = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        pct = 100 * (machine_busy_seconds() - busy) / (time.monotonic() - t)
        if pct < threshold_pct or time.monotonic() >= deadline:
            return pct


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
            stats = _zchat_request(bench.ctx, broker.endpoints["rpc"], {"type": "stats"}, 10.0)
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


# === the report ==================================================================================


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


# === command line ================================================================================


def scenarios_for(messages: int, messages_k100: int, seconds: float, clients: int) -> list[Scenario]:
    return [
        Scenario("k1", "1 → 1", "throughput", 1, 1, messages),
        Scenario("k10", "1 → 10", "throughput", 1, 10, messages),
        Scenario("k100", "1 → 100", "throughput", 1, 100, messages_k100),
        Scenario("p20k10", "20 → 10", "throughput", 20, 10, messages),
        *(Scenario(f"lat{r}", f"latency {r}/s", "latency", rate=r, seconds=seconds) for r in (1000, 5000, 20_000)),
        Scenario("idle", "idle clients", "idle", rate=1000, seconds=seconds, clients=clients),
    ]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--messages", type=click.IntRange(100), help="N for the throughput scenarios [200 000; --quick 20 000].")
@click.option("--messages-k100", type=click.IntRange(100), help="N for 1 → 100 only [same as --messages].")
@click.option("--repeat", type=click.IntRange(1), default=3, show_default=True, help="Runs per (scenario, broker).")
@click.option("--quick", is_flag=True, help="Smaller N, 1 s latency runs and 200 idle clients: a fast check.")
@click.option("--latency-seconds", type=click.FloatRange(0.2), help="Seconds per latency rate [2; --quick 1].")
@click.option("--idle-clients", type=click.IntRange(1), help="Idle clients [1 000; --quick 200].")
@click.option(
    "--scenario",
    "only",
    multiple=True,
    type=click.Choice(["k1", "k10", "k100", "p20k10", "lat1000", "lat5000", "lat20000", "idle"]),
    help="Run only these scenarios (repeatable).",
)
@click.option(
    "--broker",
    "brokers",
    multiple=True,
    type=click.Choice([k.key for k in BROKERS]),
    help="Run only these brokers (repeatable).",
)
@click.option("--transport", type=click.Choice(["tcp", "ipc"]), default="tcp", show_default=True)
@click.option("--text-bytes", type=click.IntRange(40, 4000), default=100, show_default=True)
@click.option(
    "--settle",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Before each run, wait up to this long for the machine to be idle (0: don't).",
)
@click.option(
    "--max-background",
    type=click.FloatRange(0),
    default=50.0,
    show_default=True,
    help="A run during which other processes took more than this % of one CPU is done again...",
)
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True, help="...at most this many times.")
@click.option(
    "--db-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the store-on broker keeps its SQLite file [a temp dir under $TMPDIR].",
)
@click.option(
    "--markdown",
    "md_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the table to this file.",
)
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Write every raw number.")
def main(
    *,
    messages: int | None,
    messages_k100: int | None,
    repeat: int,
    quick: bool,
    latency_seconds: float | None,
    idle_clients: int | None,
    only: tuple[str, ...],
    brokers: tuple[str, ...],
    transport: str,
    text_bytes: int,
    settle: float,
    max_background: float,
    retries: int,
    db_dir: Path | None,
    md_file: Path | None,
    json_file: Path | None,
) -> None:
    """Benchmark zchat's broker against zmq.proxy (see the module docstring)."""
    n = messages or (20_000 if quick else 200_000)
    chosen = scenarios_for(
        n, messages_k100 or n, latency_seconds or (1.0 if quick else 2.0), idle_clients or (200 if quick else 1000)
    )
    chosen = [s for s in chosen if not only or s.key in only]
    kinds = [k for k in BROKERS if not brokers or k.key in brokers]
    command = "python benchmarks/bench.py " + shlex.join(sys.argv[1:])
    plan = [(r, sc, k) for r in range(1, repeat + 1) for sc in chosen for k in kinds]
    records: list[Json] = []
    began = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory(prefix="zchat-bench-") as tmpdir, zmq.Context() as ctx:
        tmp = Path(tmpdir)
        (tmp / "logs").mkdir()
        version = snapshot_zchat(tmp / "src")
        fleet = Fleet(tmp / "logs")
        try:
            bench = Bench(tmp, ctx, fleet, transport, text_bytes, db_dir or tmp, tmp / "src")

            def show(item: tuple[int, Scenario, BrokerKind] | None) -> str:
                return "" if item is None else f"run {item[0]}/{repeat}: {item[1].label} · {item[2].label}"

            with click.progressbar(plan, label="benchmark", file=sys.stderr, item_show_func=show) as bar:
                for r, sc, kind in bar:
                    for attempt in range(1 + retries):
                        record = run_one(bench, sc, kind, r, settle)
                        records.append(record)
                        noisy = record.get("background_cpu_pct", 0.0) > max_background
                        if not (record["ok"] and noisy and attempt < retries):
                            break
                        record["discarded"] = "other processes took too much CPU; run again"
                    if not record["ok"]:
                        click.echo(f"\n{sc.label} / {kind.label}: {record['error']}", err=True)
        finally:
            fleet.stop_all()
            bench.control.sock.close()
    elapsed = time.monotonic() - began
    header = [
        "# zchat broker benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs ({_cpu_model()}), Python"
        f" {platform.python_version()}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, {transport} on"
        f" loopback, {text_bytes}-byte texts",
        f"- zchat {version}; the store-on broker's SQLite file in {db_dir or '$TMPDIR'}",
        f"- every number is the median of {repeat} run(s); total time {elapsed / 60:.1f} min",
        "- broker, publishers and subscribers share the same CPUs: see benchmarks/README.md",
        _background_line(records, max_background),
    ]
    table = report(records, chosen, kinds, header)
    click.echo(table)
    if md_file is not None:
        md_file.write_text(table)
    if json_file is not None:
        meta = {"command": command, "elapsed_s": elapsed, "cpus": os.cpu_count(), "cpu": _cpu_model()}
        meta |= {"python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
        meta |= {"transport": transport, "text_bytes": text_bytes, "repeat": repeat, "zchat": version}
        meta |= {"db_dir": str(db_dir) if db_dir else None, "settle_s": settle}
        meta |= {"max_background_pct": max_background, "retries": retries}
        meta["scenarios"] = [vars(s) for s in chosen]
        json_file.write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    if any(not r["ok"] for r in records if not r.get("discarded")):
        sys.exit(1)


def snapshot_zchat(dest: Path) -> str:
    """Copy the zchat package that ``python -m zchat`` would run into ``dest`` (the brokers run
    the copy: a checkout edited during a long run must not mix two versions in one table).
    Returns where it came from: its git commit, and a hash of the copied sources."""
    spec = importlib.util.find_spec("zchat")
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException("cannot find the zchat package: pip install -e . first")
    package = Path(next(iter(spec.submodule_search_locations)))
    shutil.copytree(package, dest / "zchat", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted((dest / "zchat").rglob("*.py")):
        digest.update(path.relative_to(dest).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{_zchat_commit(package.parent)} (sources sha256 {digest.hexdigest()[:12]})"


def _zchat_commit(repo: Path) -> str:
    """The commit of the zchat under test, and whether zchat/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "zchat"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "(version unknown)"
    if head.returncode != 0:
        return "(not a git checkout)"
    changed = " + uncommitted changes in zchat/" if dirty.stdout.strip() else ""
    return f"at commit {head.stdout.decode().strip()}{changed}"


def _background_line(records: list[Json], max_background: float) -> str:
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


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        sys.exit(worker_main(json.loads(sys.argv[2])))
    main()
