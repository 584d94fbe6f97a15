"""What the attack and abuse tests share: raw ZMTP peers, raw ZeroMQ sockets, `zchat broker`
processes that can be killed with SIGKILL and started again on the same endpoints and store, keys
for them, their memory, and bounded waits that keep clients alive.

Nothing here sleeps: every wait ends on a condition or a bounded timeout.
"""

from __future__ import annotations

import select
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import zmq
from conftest import LOOPBACK_ANY, BrokerProcess, start_broker_process

from zchat import keys
from zchat.client.shell import Client
from zchat.protocol import Endpoints, Event
from zchat.transport import Curve

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]

#: Bound on every wait for the network or a child process.
WAIT = 10.0


# --- raw ZMTP 3.0 over TCP: a peer that sends frames no libzmq socket would ----------------------


def zmtp_greeting(mechanism: bytes = b"NULL", major: int = 3, minor: int = 0) -> bytes:
    signature = b"\xff" + bytes(8) + b"\x7f"
    return signature + bytes([major, minor]) + mechanism.ljust(20, b"\x00") + b"\x00" + bytes(31)


def zmtp_ready(socket_type: bytes, routing_id: bytes = b"") -> bytes:
    props = b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    if routing_id:
        props += b"\x08Identity" + len(routing_id).to_bytes(4, "big") + routing_id
    body = b"\x05READY" + props
    return bytes([0x04, len(body)]) + body  # a short command frame


def zmtp_frame(body: bytes, more: bool = False) -> bytes:
    flags = 0x01 if more else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def tcp_port(endpoint: str) -> int:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    assert host == "127.0.0.1", endpoint
    return int(port)


class RawPeer:
    """A TCP connection that has done a ZMTP 3.0 NULL handshake as ``socket_type`` and then sends
    whatever frames it is told to: a subscription (``\\x01topic``) and a cancel (``\\x00topic``)
    are plain messages in ZMTP 3.0, so it can cancel what it never subscribed."""

    def __init__(self, endpoint: str, socket_type: bytes = b"SUB", routing_id: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", tcp_port(endpoint)), timeout=WAIT)
        self.sock.sendall(zmtp_greeting() + zmtp_ready(socket_type, routing_id))
        answer = b""
        deadline = time.monotonic() + WAIT
        while len(answer) < 66 or len(answer) < 66 + answer[65]:  # the greeting, then READY
            assert time.monotonic() < deadline, f"no ZMTP handshake from {endpoint}: {answer!r}"
            chunk = self.sock.recv(4096)
            assert chunk, f"{endpoint} hung up on a proper handshake: {answer!r}"
            answer += chunk
        assert answer[64] == 0x04 and b"READY" in answer[64:]
        self.received = answer[66 + answer[65] :]

    def send(self, *frames: bytes) -> None:
        data = b"".join(zmtp_frame(f, more=i < len(frames) - 1) for i, f in enumerate(frames))
        self.sock.sendall(data)

    def read(self) -> bytes:
        """Whatever arrived by now (raw bytes, frames not parsed)."""
        while select.select([self.sock], [], [], 0)[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.received += chunk
        return self.received

    def close(self) -> None:
        self.sock.close()


# --- raw ZeroMQ sockets -----------------------------------------------------------------------


def raw(ctx: Context, kind: int, endpoint: str, curve: Curve | None = None, **options: int | bytes) -> Socket:
    """A bare ZeroMQ socket, LINGER 0 and sends that never hang, CURVE client if asked; connected."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, int(WAIT * 1000))
    if curve is not None:
        sock.curve_serverkey = curve.server_key.encode("ascii")
        sock.curve_publickey = curve.public.encode("ascii")
        sock.curve_secretkey = curve.secret.encode("ascii")
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    return sock


class Crowd:
    """Clients kept alive together: :meth:`pump` polls each (heartbeats, reconnects, deliveries)
    and keeps every event it delivered in ``heard[nick]``."""

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.heard: dict[str, list[Event]] = {}

    def add(self, name: str, client: Client) -> Client:
        self.clients[name] = client
        self.heard[name] = []
        return client

    def pump(self, timeout: float = 0.005) -> None:
        for name, client in self.clients.items():
            if client.state != "closed":
                self.heard[name] += client.poll(timeout)

    def until(self, cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.pump()

    def texts(self, name: str, kind: str = "private") -> list[str]:
        return [e.text for e in self.heard[name] if e.kind == kind]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


# --- `zchat broker` processes -----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Site:
    """Where `zchat broker` processes of one test live: a temp dir with ipc:// endpoints (or
    loopback TCP), a store file that outlives each process, and, in secure mode, keys for the
    server and each cast member (allowed each under their own nick)."""

    def __init__(self, secure: bool, cast: Iterable[str] = (), *, ipc: bool = True, heartbeat: float = 2.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="zc-"))  # short: ipc paths are at most 107 bytes
        self.secure = secure
        self.heartbeat = heartbeat
        if ipc:
            d = self.dir
            self.endpoints = Endpoints(f"ipc://{d}/ingest", f"ipc://{d}/feed", f"ipc://{d}/rpc")
        else:
            self.endpoints = LOOPBACK_ANY
        self.db = str(self.dir / "history.sqlite3")
        self.keys: dict[str, tuple[str, str]] = {}
        self.args: list[str] = []
        if secure:
            keydir = self.dir / "keys"
            allow = []
            for name in ("server", *cast):
                _, secret_file, public = keys.keygen(name, keydir)
                self.keys[name] = keys.load_keypair(secret_file)
                if name != "server":
                    allow.append(f"{public} {name}\n")
            (self.dir / "allow").write_text("".join(allow))
            self.args = ["--secure", "--key", str(keydir / "server.key_secret"), "--allow", str(self.dir / "allow")]
        self.proc: BrokerProcess | None = None

    def start(self, *extra: str) -> BrokerProcess:
        assert self.proc is None or self.proc.proc.poll() is not None
        self.proc = start_broker_process(
            *self.args, *extra, heartbeat=self.heartbeat, endpoints=self.endpoints, db=self.db
        )
        self.endpoints = self.proc.endpoints
        return self.proc

    def kill9(self) -> None:
        """SIGKILL: no shutdown notice, no leave, no last commit beyond what was committed."""
        assert self.proc is not None
        self.proc.proc.kill()
        self.proc.stop()

    def curve(self, name: str) -> Curve | None:
        if not self.secure:
            return None
        public, secret = self.keys[name]
        return Curve(self.keys["server"][0], public, secret)

    def client(self, nick: str | None, key: str | None = None) -> Client:
        """A client of this site's broker (not connected); ``key`` names whose key it uses."""
        curve = self.curve(key or nick or "") if self.secure else None
        return Client(nick, endpoints=self.endpoints, timeout=WAIT, curve=curve)

    def close(self) -> None:
        """Stop the broker and remove the directory (its store, sockets and keys)."""
        if self.proc is not None:
            self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
