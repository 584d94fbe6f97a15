"""The processes the bench starts and how it talks to them: the fleet, the control channel, the Bench.

A coordinator (the ``bench.py`` process) starts every broker and worker through a :class:`Fleet`,
which watches them and always stops and reaps them. Workers report over a control channel:
:class:`Control` is the coordinator's end, :class:`Link` a worker's. :class:`Bench` is what every
run shares (temp dir, fleet, control channel, options) and spawns the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from benchmarks.metrics import memory_mb, own_cpu
from benchmarks.postgres import Databases

Json = dict[str, Any]
Ctx = zmq.Context[zmq.Socket[bytes]]
Sock = zmq.Socket[bytes]

# --- bounds that the coordinator and the workers share: every wait ends by itself ---------------

#: Starting a broker, setting up workers, the warm-up handshake: each may take this long.
SETUP_TIMEOUT = 30.0
#: A stream is over when no measured message arrived for this long after the go.
QUIET_END = 5.0
#: Seconds between two calls of a waiting coordinator's ``tick`` (see Control.expect).
TICK = 0.01


class BenchError(Exception):
    """A run that could not be completed: a worker died or something did not answer in time."""


# === control channel ==========================================================================
# The coordinator binds a ROUTER; each worker connects a DEALER whose routing id is its name.
# Messages are JSON objects with a "type".


def send_json(sock: Sock, frames: Sequence[bytes], msg: Json) -> None:
    sock.send_multipart([*frames, json.dumps(msg, separators=(",", ":")).encode()])


class Link:
    """A worker's end of the control channel."""

    def __init__(self, ctx: Ctx, endpoint: str, name: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)  # the last report must get out
        self.sock.connect(endpoint)

    def send(self, kind: str, **fields: Any) -> None:
        peak = memory_mb(os.getpid())["peak_rss_mb"]
        send_json(self.sock, [], {"type": kind, "cpu_s": own_cpu(), "peak_rss_mb": peak, **fields})

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
                send_json(self.sock, [name.encode()], {"type": kind, **fields})
            except zmq.ZMQError as exc:
                raise BenchError(f"cannot reach worker {name}: {exc}") from None

    def expect(
        self, kind: str, names: Sequence[str], timeout: float, tick: Callable[[], object] | None = None
    ) -> dict[str, Json]:
        """One ``kind`` report from each of ``names``; a worker's error or death raises.
        ``tick`` is called at least every TICK seconds meanwhile (it keeps its own pace)."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [n for n in names if (n, kind) not in self._inbox]
            if not missing:
                return {n: self._inbox.pop((n, kind)) for n in names}
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no {kind!r} from {', '.join(missing[:5])} within {timeout:.0f} s")
            if tick is not None:
                tick()
            if not self.sock.poll(int(min(left, TICK if tick else 0.25) * 1000) + 1):
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
                raise BenchError(f"{proc.name} exited with status {rc}: {log_tail(proc.log)}")

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


def log_tail(log: Path, lines: int = 6) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# === what every run shares ====================================================================

#: Workers are the entry script run again as ``bench.py _worker '<json config>'`` (see
#: benchmarks.cli.entry): by its path, because a worker's cwd is outside the checkout, where
#: ``python -m benchmarks`` would not find the package.
ENTRY = os.path.abspath(Path(__file__).with_name("bench.py"))


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
    postgres: Databases  # the pgstore broker's databases
    control: Control = field(init=False)
    runs: int = 0

    def __post_init__(self) -> None:
        self.control = Control(self.ctx, f"ipc://{self.tmp}/control", self.fleet)

    def spawn_worker(self, name: str, cfg: Json) -> Proc:
        cfg = {**cfg, "name": name, "ctl": self.control.endpoint, "text_bytes": self.text_bytes}
        return self.fleet.spawn(name, [sys.executable, ENTRY, "_worker", json.dumps(cfg)])
