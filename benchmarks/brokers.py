"""What is benchmarked and how it is started: the three brokers, and the zchat they run.

``proxy`` is ``zmq.proxy`` (PULL → PUB in C) in a few lines of Python, the limit for zchat's
shape; ``store`` and ``nostore`` are ``python -m zchat broker`` with and without its SQLite
history. Each run gets a fresh broker process on fresh endpoints. zchat brokers run from a copy
of the package taken once when the bench starts (:func:`snapshot_zchat`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import select
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
import zmq

from benchmarks.fleet import SETUP_TIMEOUT, Bench, BenchError, Ctx, Json, Proc, log_tail, send_json

#: zchat's feed high-water mark (zchat.broker.config.FEED_HWM); the proxy's PUB gets the same.
FEED_HWM = 10_000

# === the broker processes ========================================================================


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
        zchat_request(bench.ctx, ends["rpc"], {"type": "stats"}, SETUP_TIMEOUT)  # answers once bound
    else:
        argv = [sys.executable, "-c", PROXY_CODE, ends["ingest"], ends["feed"], str(FEED_HWM)]
        proc = bench.fleet.spawn(f"r{run}-broker", argv, stdout=subprocess.PIPE)
        broker = Broker(kind, proc, ends)
        assert proc.popen.stdout is not None
        ready, _, _ = select.select([proc.popen.stdout], [], [], SETUP_TIMEOUT)
        if not ready or proc.popen.stdout.readline().strip() != b"ready":
            raise BenchError(f"the proxy did not start: {log_tail(proc.log)}")
    return broker


def zchat_request(ctx: Ctx, rpc: str, request: Json, timeout: float) -> Json:
    """One rpc request to a zchat broker on a throwaway DEALER (queued until it connects)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(rpc)
        send_json(sock, [b""], {**request, "req": "bench"})
        if not sock.poll(int(timeout * 1000)):
            raise BenchError(f"the zchat broker at {rpc} did not answer {request['type']!r} in {timeout:.0f} s")
        reply: Json = json.loads(sock.recv_multipart()[-1])
        return reply
    finally:
        sock.close()


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
