"""The load: publisher, subscriber and idle-client worker processes.

Each worker is a process of its own, started by the coordinator with a JSON config (its role,
the broker's endpoints, its share of the load) and driven over its :class:`~benchmarks.fleet.Link`:
it reports ``up``, waits for commands (``warm``, ``stopwarm``, ``go``, ``stop``) and reports what
it saw. What the messages say is :mod:`benchmarks.wire`'s business; the C-speed source and sink
are :mod:`benchmarks.devices`'.

The clock starts only once the stream is clean: publishers send warm-up messages until every
subscriber socket has seen one (so every subscription is live), then each publisher session
sends a fence; a subscriber is ``ready`` once each of its sockets has seen every session's
fence, so nothing from before the clock can still be on its way.
"""

from __future__ import annotations

import time
import traceback
from array import array
from collections.abc import Callable, Iterator

import zmq

from benchmarks import wire
from benchmarks.devices import Counter, Replay
from benchmarks.fleet import QUIET_END, SETUP_TIMEOUT, BenchError, Ctx, Json, Link, Sock
from benchmarks.metrics import finish_ns

# --- bounds: every loop and every wait ends by itself (and see fleet.SETUP_TIMEOUT, QUIET_END) ----

#: Messages taken from one socket before looking at the others.
BATCH = 256
#: A push that cannot be queued for this long means the broker is gone.
PUSH_TIMEOUT_MS = 10_000
#: Seconds between two warm-up messages of a publisher session.
WARM_INTERVAL = 0.005
#: Seconds between two readings of the devices' counters (subscribers) and of the replays'
#: (publishers): when a stream ended is interpolated between two readings (metrics.finish_ns).
COUNT_EVERY = 0.01
REPLAY_EVERY = 0.002
#: Seconds between two heartbeats of a publisher session while it waits.
HEARTBEAT_EVERY = 1.0
#: Rooms the idle clients are spread over.
IDLE_ROOMS = 10

#: Flags as plain ints: pyzmq converts enum flags on every call, which costs as much as a send.
NOBLOCK, SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


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


class Inspected:
    """A SUB socket read in Python: before the clock (warm-ups and fences), and after it when it
    is one of the latency probes (distinct seqs, duplicates, publisher → here latency)."""

    __slots__ = ("count", "dups", "fences", "last_ns", "lat", "seen", "warm")

    def __init__(self) -> None:
        self.warm = False
        self.fences = 0
        self.count = 0  # distinct measured seqs
        self.dups = 0
        self.last_ns = 0
        self.seen = bytearray(65_536)  # seen[seq] == 1: that measured seq arrived
        self.lat = array("q")  # ns

    def drain(self, sock: Sock) -> bool:
        """Take up to BATCH waiting messages. Returns whether a measured one came."""
        measured = False
        for _ in range(BATCH):
            try:
                payload = sock.recv_multipart(NOBLOCK)[-1]
            except zmq.Again:
                break
            now = time.monotonic_ns()
            mark, seq, stamp = wire.parse(payload)
            if mark != wire.MEASURED:
                self.warm |= mark == wire.WARMUP
                self.fences += mark == wire.FENCE
                continue
            measured = True
            if seq >= len(self.seen):
                self.seen.extend(bytes(seq + 1 - len(self.seen) + 65_536))
            if self.seen[seq]:
                self.dups += 1
                continue
            self.seen[seq] = 1
            self.count += 1
            self.last_ns = now
            if stamp:
                self.lat.append(now - stamp)
        return measured


def _poller(sockets: list[Sock]) -> zmq.Poller:
    poller = zmq.Poller()
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    return poller


def subscriber(cfg: Json, link: Link, ctx: Ctx) -> None:
    """SUB sockets on the feed, each a subscriber. Before the clock every socket is read here,
    until it has seen a warm-up (then ``warm`` is reported, once for all) and every publisher
    session's fence (then ``ready``). After it, the sockets listed in ``probes`` go on being
    read here (latency); each of the others is handed to a :class:`~benchmarks.devices.Counter`.
    Reports ``result`` when every socket has every measured message, when the stream went
    quiet for QUIET_END seconds after ``go``, or at the deadline."""
    expected, fences = int(cfg["expected"]), int(cfg["fences"])
    deadline = time.monotonic() + cfg["deadline"]
    socks: list[Sock] = []
    for _ in range(cfg["sockets"]):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(cfg["endpoints"]["feed"])
        s.setsockopt(zmq.SUBSCRIBE, wire.TOPIC)
        socks.append(s)
    seen = {s: Inspected() for s in socks}
    link.send("up")
    warm_told = False
    setup_by = min(deadline, time.monotonic() + SETUP_TIMEOUT * 2)
    poller = _poller(socks)
    while not all(st.fences >= fences for st in seen.values()):
        if time.monotonic() > setup_by:
            raise BenchError("the warm-up and the fences did not all arrive")
        for sock, _ in poller.poll(100):
            seen[sock].drain(sock)
        if not warm_told and all(st.warm for st in seen.values()):
            link.send("warm")
            warm_told = True
    probes = [socks[i] for i in cfg["probes"]]
    counters = [Counter(ctx, s, wire.FEED_FRAMES[cfg["shape"]]) for s in socks if s not in probes]
    for c in counters:
        c.start()
    link.send("ready")
    # (monotonic ns, count) readings of each counter from the go on.
    readings: list[list[tuple[int, int]]] = [[] for _ in counters]
    go = timed_out = False
    last_progress = next_reading = 0.0
    poller = _poller([*probes, link.sock])
    while True:
        now = time.monotonic()
        if now > deadline:
            timed_out = True
            break
        complete = all(seen[s].count >= expected for s in probes) and all(r and r[-1][1] >= expected for r in readings)
        if go and (complete or now - last_progress > QUIET_END):
            break
        for sock, _ in poller.poll(int(COUNT_EVERY * 1000)):
            if sock is link.sock:
                cmd = link.recv(0)
                if cmd is not None and cmd["type"] == "go":
                    go, last_progress = True, time.monotonic()
            elif seen[sock].drain(sock):
                last_progress = time.monotonic()
        if go and time.monotonic() >= next_reading:
            next_reading = time.monotonic() + COUNT_EVERY
            t = time.monotonic_ns()
            for c, r in zip(counters, readings, strict=True):
                n = c.received()
                if r and n > r[-1][1]:
                    last_progress = time.monotonic()
                r.append((t, n))
    for c in counters:
        c.stop()
    results = [
        {"mode": "probe", "count": seen[s].count, "dups": seen[s].dups, "last_ns": seen[s].last_ns} for s in probes
    ]
    for r in readings:
        final = r[-1][1] if r else 0
        results.append({"mode": "count", "count": final, "dups": 0, "last_ns": finish_ns(r, final) if final else 0})
    link.send("result", timed_out=timed_out, sockets=results, latencies_ns=[list(seen[s].lat) for s in probes])


# --- publisher -----------------------------------------------------------------------------------


class Session:
    """One publisher: a PUSH to ingest and, for zchat, a session (hello, heartbeats, token).
    Once a :class:`~benchmarks.devices.Replay` has taken its PUSH, only the replay uses it."""

    def __init__(self, ctx: Ctx, cfg: Json, index: int, per_session: int) -> None:
        shape: wire.Shape = cfg["shape"]
        self.poster = wire.Poster(shape, f"pub{index}".encode(), seq_base=index * per_session)
        self.text_bytes = int(cfg["text_bytes"])
        self.push = ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDTIMEO, PUSH_TIMEOUT_MS)
        self.push.connect(cfg["endpoints"]["ingest"])
        self.rpc = wire.rpc_dealer(ctx, cfg["endpoints"]["rpc"]) if shape == "post" else None
        self._next_beat = 0.0

    def hello(self, timeout: float) -> None:
        if self.rpc is None:
            return
        nick = self.poster.nick.decode()
        reply = wire.call(self.rpc, wire.hello(nick, [wire.ROOM], wire.new_inbox(nick)), timeout)
        self.poster.token = wire.token_of(reply).encode()
        self._next_beat = time.monotonic() + HEARTBEAT_EVERY

    def keepalive(self) -> None:
        """Heartbeat about once a second (while not posting) and drop the replies."""
        if self.rpc is None:
            return
        while self.rpc.poll(0):
            self.rpc.recv_multipart()
        if time.monotonic() >= self._next_beat:
            wire.send_request(self.rpc, wire.heartbeat(self.poster.token.decode()))
            self._next_beat = time.monotonic() + HEARTBEAT_EVERY

    def message(self, mark: bytes, stamp_ns: int = 0) -> list[bytes]:
        return self.poster.frames(mark, wire.text(mark, stamp_ns, self.text_bytes))

    def send(self, mark: bytes) -> None:
        """Build the next message, stamped now, and push it (frame by frame with plain-int
        flags: send_multipart costs a few µs more per message in pyzmq)."""
        *first, last = self.message(mark, time.monotonic_ns())
        for frame in first:
            self.push.send(frame, SNDMORE)
        self.push.send(last)


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
    """Sessions in one process. Commands: warm (send warm-ups until stopwarm, then a fence per
    session), go (send the load, report done), stop (exit). With the ``replay`` engine every
    measured message is built and queued before the clock and a device per session sends them;
    with ``loop`` Python builds and sends each one, stamped (the latency scenarios), paced at
    ``rate`` messages a second or as fast as the broker takes them. Sending stops after
    ``bound`` seconds in any case."""
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
            s.send(wire.WARMUP)
        warm += 1
        cmd = link.recv(WARM_INTERVAL)
        if cmd is not None and cmd["type"] == "stopwarm":
            break
    for s in sessions:
        s.send(wire.FENCE)
    replays = []
    if cfg["engine"] == "replay":
        for s in sessions:
            replay = Replay(ctx, s.push, wire.INGEST_FRAMES[cfg["shape"]])
            for _ in range(per_session):
                replay.queue(s.message(wire.MEASURED))
            replays.append(replay)
    link.send("stopped", warm=warm * len(sessions))
    _wait_for(link, sessions, "go", deadline)
    total = per_session * len(sessions)
    t_start = time.monotonic_ns()
    send_by = min(deadline, time.monotonic() + float(cfg["bound"]))
    error = None
    try:
        if replays:
            sent, t_end = _replay(replays, sessions, total, send_by)
        else:
            sent = _paced(sessions, total, rate, send_by) if rate > 0 else _flood(sessions, per_session, send_by)
            t_end = time.monotonic_ns()
    except (zmq.Again, BenchError) as exc:
        sent, t_end = -1, time.monotonic_ns()
        error = f"a push blocked for {PUSH_TIMEOUT_MS} ms" if isinstance(exc, zmq.Again) else str(exc)
    for replay in replays:
        replay.stop()
    link.send("done", sent=sent, t_start=t_start, t_end=t_end, error=error)
    _wait_for(link, sessions, "stop", deadline + QUIET_END + 30)


def _replay(replays: list[Replay], sessions: list[Session], total: int, deadline: float) -> tuple[int, int]:
    """Start the replays; return how many messages they sent and when they finished (when the
    last one was handed to its PUSH socket, interpolated between two readings)."""
    readings = [(time.monotonic_ns(), 0)]
    for replay in replays:
        replay.start()
    sent = 0
    while sent < total and time.monotonic() < deadline:
        time.sleep(REPLAY_EVERY)
        if any(not r.running for r in replays):
            raise BenchError(f"a replay stopped: {next(r.error for r in replays if not r.running)}")
        sent = sum(r.sent() for r in replays)
        readings.append((time.monotonic_ns(), sent))
        for s in sessions:
            s.keepalive()
    return sent, finish_ns(readings, sent)


def _flood(sessions: list[Session], per_session: int, deadline: float) -> int:
    """Every session's messages, round robin, as fast as the broker takes them."""
    for n in range(per_session):
        for s in sessions:
            s.send(wire.MEASURED)
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
            sessions[i % len(sessions)].send(wire.MEASURED)
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
        inbox = wire.new_inbox(nick)
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
            dealer = wire.rpc_dealer(ctx, ends["rpc"])
            wire.send_request(dealer, wire.hello(nick, [room], inbox))
            dealers.append(dealer)
    poller = _poller([*subs, *dealers])
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
            tokens[sock] = wire.token_of(wire.read_reply(sock))
    link.send("up", clients=len(subs), connections=len(subs) + len(pushes) + len(dealers))
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
                    counts["hb_ok" if wire.heartbeat_ok(frames[-1]) else "hb_errors"] += 1
            else:
                _drain_idle(sock, counts, "feed_msgs")
        for dealer in dealers[tick % slices :: slices]:
            wire.send_request(dealer, wire.heartbeat(tokens[dealer]))
            counts["heartbeats"] += 1
        tick += 1
    raise BenchError("idle clients: no stop before the deadline")


def _recv_all(sock: Sock) -> Iterator[list[bytes]]:
    while True:
        try:
            yield sock.recv_multipart(NOBLOCK)
        except zmq.Again:
            return


def _drain_idle(sock: Sock, counts: dict[str, int], key: str) -> None:
    for _ in _recv_all(sock):
        counts[key] += 1
