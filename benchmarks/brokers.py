"""What is benchmarked: the brokers, how each is started and watched, and the zchat they run.

``proxy`` is ``zmq.proxy`` (PULL → PUB in C) in a few lines of Python, the limit for zchat's
shape; it runs as ``zmq.proxy_steerable`` so that the bench can read libzmq's own count of what
it forwarded. Its publishers push either zchat's two frames ``[topic, event]`` (``proxy``, the
fair comparison) or one frame per message (``proxy1``). ``store`` and ``nostore`` are
``python -m zchat broker`` with and without its SQLite history, ``pgstore`` the same broker with
its history in PostgreSQL (a fresh database per run, on the server of benchmarks/postgres.py);
their command line is built in one place, :func:`zchat_argv`. Each run gets a fresh broker
process on fresh endpoints; zchat brokers run from a copy of the package taken once when the
bench starts (:func:`snapshot_zchat`). :class:`Watch` samples a running broker: what it forwarded, its RSS, its WAL.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import psycopg
import zmq

from benchmarks import wire
from benchmarks.fleet import SETUP_TIMEOUT, Bench, BenchError, Ctx, Json, Proc, Sock, log_tail
from benchmarks.metrics import file_size, memory_mb

#: zchat's feed high-water mark (zchat.broker.config.FEED_HWM); the proxy's PUB gets the same.
FEED_HWM = 10_000
#: How long a broker may take to answer the bench's counter request.
COUNTER_TIMEOUT = 5.0

# === the brokers =================================================================================


@dataclass(frozen=True)
class BrokerKind:
    key: str
    label: str
    #: What its publishers push (see wire.Shape).
    shape: wire.Shape
    #: Proxy only: socket options for both its sockets, over the defaults (the idle scenario's
    #: variants: which options trade memory per connection down).
    sockopts: tuple[tuple[str, int], ...] = ()

    @property
    def zchat(self) -> bool:
        return self.shape == "post"


PROXY = BrokerKind("proxy", "zmq.proxy [topic, event]", "event2")
BROKERS = (
    PROXY,
    BrokerKind("proxy1", "zmq.proxy, 1 frame", "event1"),
    BrokerKind("store", "zchat, store on", "post"),
    BrokerKind("pgstore", "zchat, store on PostgreSQL", "post"),
    BrokerKind("nostore", "zchat, store off", "post"),
)
#: The PostgreSQL row: run when the machine has a server to start (or when asked for).
PGSTORE = BROKERS[3]
#: The proxy with other socket options, in the idle scenario only: does any of them lower the
#: memory libzmq keeps per connection?
PROXY_VARIANTS = (
    BrokerKind("proxy-hwm100", "zmq.proxy, SNDHWM = RCVHWM = 100", "event2", (("SNDHWM", 100), ("RCVHWM", 100))),
    BrokerKind(
        "proxy-buf16k", "zmq.proxy, SNDBUF = RCVBUF = 16 KiB", "event2", (("SNDBUF", 16_384), ("RCVBUF", 16_384))
    ),
)

#: Every zchat broker of the bench: no limit on posts (the load is the point), quiet logs.
ZCHAT_OPTIONS = ("--rate", "0", "--log-level", "warning")
#: Added when a scenario connects many clients at once (idle): every bench client comes from
#: 127.0.0.1, and the broker bounds hellos (20 a second, bursts of 256) and sessions (512) per
#: address. Each idle client still has a DEALER of its own, within the per-connection bounds.
MANY_CLIENTS_OPTIONS: tuple[str, ...] = (
    "--hello-rate",
    "1000",
    "--hello-burst",
    "10000",
    "--max-sessions-per-address",
    "10000",
)


def zchat_argv(ends: dict[str, str], db: Path | str | None, *, many_clients: bool) -> list[str]:
    """The zchat broker's command line: the one place that says how the bench runs it (``db``: an
    SQLite file, a PostgreSQL URL, or None for no store)."""
    argv = [sys.executable, "-m", "zchat", "broker", "--ingest", ends["ingest"], "--feed", ends["feed"]]
    argv += ["--rpc", ends["rpc"], *ZCHAT_OPTIONS, *(["--no-store"] if db is None else ["--db", str(db)])]
    return argv + list(MANY_CLIENTS_OPTIONS if many_clients else ())


#: The baseline: everything it does per message happens inside libzmq. Its control socket
#: answers libzmq's STATISTICS command (the bench's counter of what it forwarded).
PROXY_CODE = """\
import json, sys, zmq
ingest, feed, control, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
ctx = zmq.Context()
pull, pub, ctl = ctx.socket(zmq.PULL), ctx.socket(zmq.PUB), ctx.socket(zmq.REP)
pub.setsockopt(zmq.SNDHWM, int(sys.argv[5]))
for sock in (pull, pub):
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
pull.bind(ingest)
pub.bind(feed)
ctl.bind(control)
print("ready", flush=True)
zmq.proxy_steerable(pull, pub, None, ctl)
"""


@dataclass
class Broker:
    kind: BrokerKind
    proc: Proc
    endpoints: dict[str, str]
    control: str = ""  # proxy: where it answers STATISTICS
    db: Path | None = None  # store on: its SQLite file

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    @property
    def wal(self) -> Path | None:
        return None if self.db is None else self.db.with_name(self.db.name + "-wal")


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


def start_broker(bench: Bench, kind: BrokerKind, run: int, *, many_clients: bool = False) -> Broker:
    ends = _endpoints(bench.transport, bench.tmp, run)
    if kind.zchat:
        db = bench.db_dir / f"history-{run}.sqlite3" if kind.key == "store" else None
        try:
            url = bench.postgres.fresh(run) if kind is PGSTORE else None
        except (RuntimeError, psycopg.Error) as exc:  # no server binaries, or the server failed
            raise BenchError(f"PostgreSQL: {exc}") from None
        argv = zchat_argv(ends, url or db, many_clients=many_clients)
        # The snapshot of zchat taken at the start: every run measures the same code.
        proc = bench.fleet.spawn(f"r{run}-broker", argv, env={"PYTHONPATH": str(bench.src)})
        broker = Broker(kind, proc, ends, db=db)
        with wire.rpc_dealer(bench.ctx, ends["rpc"]) as rpc:  # answers once bound
            wire.call(rpc, wire.stats(), SETUP_TIMEOUT)
        return broker
    control = f"ipc://{bench.tmp}/proxy-control-{run}"
    argv = [sys.executable, "-c", PROXY_CODE, ends["ingest"], ends["feed"], control]
    argv += [json.dumps(dict(kind.sockopts)), str(FEED_HWM)]
    proc = bench.fleet.spawn(f"r{run}-broker", argv, stdout=subprocess.PIPE)
    assert proc.popen.stdout is not None
    ready, _, _ = select.select([proc.popen.stdout], [], [], SETUP_TIMEOUT)
    if not ready or proc.popen.stdout.readline().strip() != b"ready":
        raise BenchError(f"the proxy did not start: {log_tail(proc.log)}")
    return Broker(kind, proc, ends, control=control)


def zchat_request(ctx: Ctx, rpc: str, request: Json, timeout: float) -> Json:
    """One rpc request to a zchat broker on a throwaway DEALER."""
    with wire.rpc_dealer(ctx, rpc) as sock:
        return wire.call(sock, request, timeout)


# === watching a running broker ===================================================================


@dataclass(frozen=True)
class Sample:
    t_ns: int  # time.monotonic_ns() halfway through the counter request
    forwarded: int  # proxy: messages it sent to its PUB; zchat: posts it published in a room
    rss_mb: float
    wal_bytes: int


@dataclass
class Watch:
    """Samples a running broker at most every ``every`` seconds (:meth:`sample`, called as
    often as one likes): what it forwarded (libzmq's count for the proxy, ``stats`` for
    zchat), its RSS, and its WAL's size (store on)."""

    ctx: Ctx
    broker: Broker
    every: float
    samples: list[Sample] = field(default_factory=list)
    _sock: Sock | None = None
    _next: float = 0.0

    def __post_init__(self) -> None:
        if self.broker.kind.zchat:
            self._sock = wire.rpc_dealer(self.ctx, self.broker.endpoints["rpc"])
        else:
            self._sock = self.ctx.socket(zmq.DEALER)  # to the proxy's REP: [b"", command]
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.broker.control)

    def _forwarded(self) -> int:
        assert self._sock is not None
        if self.broker.kind.zchat:
            return int(wire.call(self._sock, wire.stats(), COUNTER_TIMEOUT)[wire.POSTS_COUNTER])
        self._sock.send_multipart([b"", b"STATISTICS"])
        if not self._sock.poll(int(COUNTER_TIMEOUT * 1000)):
            raise BenchError("the proxy did not answer STATISTICS")
        frames = self._sock.recv_multipart()[1:]
        # Frames out of its backend (devices.Counts: libzmq counts frames) per feed message.
        return int(struct.unpack("=Q", frames[6])[0]) // wire.FEED_FRAMES[self.broker.kind.shape]

    def sample(self, *, now: bool = False) -> Sample | None:
        """A sample if one is due (or ``now``): appended to :attr:`samples` and returned."""
        if not now and time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.every
        t0 = time.monotonic_ns()
        forwarded = self._forwarded()
        t = (t0 + time.monotonic_ns()) // 2
        wal = self.broker.wal
        s = Sample(t, forwarded, memory_mb(self.broker.pid)["rss_mb"], 0 if wal is None else file_size(wal))
        self.samples.append(s)
        return s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


# === the zchat under test =======================================================================


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
