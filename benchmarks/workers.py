"""The load: publisher, subscriber and idle-client worker processes, and the wire shape they share.

Each worker is a process of its own, started by the coordinator with a JSON config (its role,
the broker's endpoints, its share of the load) and driven over its :class:`~benchmarks.fleet.Link`:
it reports ``up``, waits for commands (``warm``, ``go``, ``stop``...) and reports what it saw.
"""

from __future__ import annotations

import json
import secrets
import time
import traceback
from array import array
from collections.abc import Callable, Iterator

import zmq

from benchmarks.fleet import QUIET_END, SETUP_TIMEOUT, BenchError, Ctx, Json, Link, Sock, send_json

# --- the wire shape shared by publishers and subscribers ------------------------------------

ROOM = "bench"
TOPIC = b"#bench:"
#: Where the text starts in a feed event; the first letter of the text marks what it is.
TEXT_KEY = b'"text":"'
MEASURED, WARMUP = ord("M"), ord("W")
#: The proxy's events carry a fixed timestamp of the length zchat's have.
FAKE_TS = b"2000-01-01T00:00:00.000Z"

# --- bounds: every loop and every wait ends by itself (and see fleet.SETUP_TIMEOUT, QUIET_END) ----

#: Messages taken from one socket before looking at the others.
BATCH = 256
#: A push that cannot be queued for this long means the broker is gone.
PUSH_TIMEOUT_MS = 10_000
#: Seconds between two warm-up messages of a publisher session.
WARM_INTERVAL = 0.005
#: Rooms the idle clients are spread over.
IDLE_ROOMS = 10


# === worker processes ============================================================================
# A worker is the entry script run again as ``bench.py _worker '<json config>'`` (fleet.ENTRY).
# It reports on its Link.


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
        send_json(self.rpc, [b""], hello)
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
            send_json(self.rpc, [b""], {"type": "heartbeat", "req": "hb", "token": self.token.decode()})
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
            send_json(dealer, [b""], {"type": "hello", "req": "hello", "nick": nick, "rooms": [room], "inbox": inbox})
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
            send_json(dealer, [b""], {"type": "heartbeat", "req": "hb", "token": tokens[dealer]})
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
