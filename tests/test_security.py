"""Security end to end, on real sockets on 127.0.0.1: CURVE identities, private messages that
stay private, a sender that cannot be impersonated, the rate limit, inert hostile text, and the
command line's key and exposure rules.

The cast: ``bob`` (the one attacked), ``carol`` (a bystander who writes to bob), ``eve`` (an
allowed key that tries to read or speak for bob) and ``mallory`` (a key nobody allowed). Every
wait ends on a condition (a marker, a counter, a pattern, a process exit) and is bounded;
nothing sleeps. Privacy is always shown the same way: after the private message, the sender
says a room marker; a spy that sees the marker is demonstrably live, and whatever the broker
would have leaked to it would have come before the marker.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import (
    LOOPBACK_ANY,
    ZCHAT,
    BrokerProcess,
    Lines,
    ThreadBroker,
    child_env,
    collect,
    free_base_port,
    start_broker_process,
    wait_for,
)
from pty_screen import ready, spawn_join

from zchat import keys
from zchat import protocol as p
from zchat.broker.config import BrokerConfig
from zchat.broker.shell import Broker
from zchat.broker.store import SQLiteStore, Store
from zchat.client.shell import Client
from zchat.errors import Refused, Unreachable
from zchat.protocol import Endpoints, Event
from zchat.term import render
from zchat.transport import Curve

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]
KeyPair = tuple[str, str]  # (public, secret), z85

#: Broker heartbeat in these tests: a 6 s lease, so a client the test is not polling while it
#: waits on another one (or on a child process) keeps its session.
HEARTBEAT = 2.0
#: Bound on every wait for the network or a child process.
WAIT = 10.0
#: The repository root: children run from there so ``-m zchat`` always finds the package.
ROOT = Path(__file__).resolve().parent.parent

#: Terminal-hostile text: clear screen (CSI), set the window title (OSC ... BEL), and a
#: right-to-left override that would make what follows read backwards.
HOSTILE = "clear\x1b[2J title\x1b]0;title\x07 rtl\u202eevil"


def keypair() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


# --- raw sockets ----------------------------------------------------------------------------------


def raw_socket(ctx: Context, kind: int, endpoint: str, key: KeyPair | None, server: str | None) -> Socket:
    """A bare ZeroMQ socket, LINGER 0, CURVE as a client when ``key`` is given; connected."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if key is not None:
        assert server is not None
        sock.curve_serverkey = server.encode("ascii")
        sock.curve_publickey = key[0].encode("ascii")
        sock.curve_secretkey = key[1].encode("ascii")
    sock.connect(endpoint)
    return sock


class Spy:
    """A raw SUB on the feed recording everything it receives (topic, decoded JSON)."""

    def __init__(
        self, ctx: Context, endpoint: str, topics: list[bytes], key: KeyPair | None = None, server: str | None = None
    ) -> None:
        self.sock = raw_socket(ctx, zmq.SUB, endpoint, key, server)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.seen: list[tuple[bytes, dict[str, Any]]] = []
        # Subscriptions travel in order: once the broker answers a probe subscribed last, every
        # earlier subscription has been vetted and applied.
        probe = p.probe_topic(secrets.token_hex(8))
        self.sock.setsockopt(zmq.SUBSCRIBE, probe)
        self.until(lambda topic, _: topic == probe, "the probe answer")
        self.sock.setsockopt(zmq.UNSUBSCRIBE, probe)

    def until(self, pred: Callable[[bytes, dict[str, Any]], bool], what: str, timeout: float = WAIT) -> None:
        """Receive until a message matches ``pred`` (kept in ``seen``, like everything else)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            topic, payload = self.sock.recv_multipart()
            event = json.loads(payload)
            self.seen.append((topic, event))
            if pred(topic, event):
                return
        raise AssertionError(f"spy: no {what} in {timeout} s; saw {self.seen}")

    def until_text(self, text: str) -> None:
        self.until(lambda _, ev: ev.get("text") == text, repr(text))

    def texts(self) -> list[str]:
        return [str(ev.get("text")) for _, ev in self.seen]

    def close(self) -> None:
        self.sock.close()


def token(n: int = 4) -> str:
    return secrets.token_hex(n)


def counter(client: Client, name: str) -> int:
    value = client.stats()[name]
    assert isinstance(value, int)
    return value


def until_counter(client: Client, name: str, at_least: int, timeout: float = WAIT) -> int:
    """Poll the broker's counter (over rpc) until it reaches ``at_least``."""
    deadline = time.monotonic() + timeout
    while (value := counter(client, name)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"counter {name} stayed at {value} (< {at_least}) for {timeout} s")
        client.poll(0.02)
    return value


def until_marker(client: Client, marker: str) -> list[Event]:
    """Every event ``client`` gets up to and including the one whose text is ``marker``."""
    heard: list[Event] = []
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0 and (event := client.recv(left)) is not None:
        heard.append(event)
        if event.text == marker:
            return heard
    raise AssertionError(f"no {marker!r} in {WAIT} s; heard {heard}")


def send_private_then_marker(sender: Client, bob: Client) -> tuple[str, str]:
    """``sender`` writes to bob privately (bob must get it), then says a room marker."""
    private, marker = f"psst {token()}", f"marker {token()}"
    sender.msg("bob", private)
    got = wait_for(bob, lambda e: e.kind == "private" and e.text == private)
    # in bob's inbox (its own sequence), delivered on bob's own connection
    assert (got.kind, got.to, got.nick, got.room) == ("private", "bob", sender.nick, bob.inbox)
    assert got.seq > 0
    sender.say(marker)
    return private, marker


# --- secure brokers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ring:
    server: KeyPair
    bob: KeyPair
    carol: KeyPair
    eve: KeyPair
    mallory: KeyPair  # known to no broker

    def curve(self, who: KeyPair, server: str | None = None) -> Curve:
        return Curve(server or self.server[0], who[0], who[1])


@pytest.fixture
def ring() -> Ring:
    return Ring(keypair(), keypair(), keypair(), keypair(), keypair())


@pytest.fixture
def secure(ctx: Context, ring: Ring) -> Iterator[ThreadBroker]:
    """A CURVE broker: bob, carol and eve may connect, each under their own nick only."""
    allowed = {ring.bob[0]: {"bob"}, ring.carol[0]: {"carol"}, ring.eve[0]: {"eve"}}
    b = ThreadBroker(ctx, heartbeat=HEARTBEAT, curve=ring.server, allowlist=allowed)
    yield b
    b.stop()


SecureConnect = Callable[..., Client]


@pytest.fixture
def sconnect(secure: ThreadBroker, ctx: Context, ring: Ring) -> Iterator[SecureConnect]:
    """``sconnect("bob")`` -> a Client of the secure broker with bob's key; closed after the test.
    ``sconnect("bob", key=ring.eve)`` uses another key."""
    clients: list[Client] = []

    def make(nick: str, key: KeyPair | None = None, **kw: Any) -> Client:
        key = key or getattr(ring, nick)
        c = Client(nick, ["general"], endpoints=secure.endpoints, context=ctx, curve=ring.curve(key), **kw)
        clients.append(c)
        return c.connect()

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def open_broker(ctx: Context) -> Iterator[ThreadBroker]:
    """An open broker (no CURVE) whose leases outlast a test's attention to one client at a time."""
    b = ThreadBroker(ctx, heartbeat=HEARTBEAT)
    yield b
    b.stop()


@pytest.fixture
def spies() -> Iterator[list[Spy]]:
    made: list[Spy] = []
    yield made
    for spy in made:
        spy.close()


# --- 1. secure mode: reading, speaking, connecting ----------------------------------------------------


#: Whatever eve subscribes to on the feed: everything, every prefix of an inbox name, bob's
#: inbox itself, probes. v1 sent private messages on inbox topics; v2 sends none on the feed.
EVERY_TOPIC = [b"", b"@", b"@b", b"@bob", b"@bob~", b"#", b"~", b"!"]


def test_eve_cannot_read_bobs_private_messages_by_any_subscription(
    secure: ThreadBroker, sconnect: SecureConnect, ring: Ring, spies: list[Spy]
) -> None:
    """In secure mode ``@bob`` belongs to bob's key, and nothing of it is on the feed: eve, with
    her own allowed key, subscribed to everything and to bob's inbox name, gets nothing of his."""
    bob, carol = sconnect("bob"), sconnect("carol")
    assert bob.inbox == "@bob"
    spy = Spy(bob.context, secure.endpoints.feed, EVERY_TOPIC, ring.eve, ring.server[0])
    spies.append(spy)
    private, marker = send_private_then_marker(carol, bob)
    spy.until_text(marker)
    assert private not in spy.texts()
    assert [ev for topic, ev in spy.seen if topic.startswith(b"@") or ev.get("kind") == "private"] == []


def test_eve_cannot_take_bobs_nick(sconnect: SecureConnect, ring: Ring) -> None:
    with pytest.raises(Refused) as refused:
        sconnect("bob", key=ring.eve)
    assert refused.value.code == "nick_not_allowed"
    assert "bob" in str(refused.value)
    # bob's own key still may; eve's may use eve.
    sconnect("bob")
    sconnect("eve")


def test_eve_cannot_post_or_act_with_bobs_token(
    secure: ThreadBroker, sconnect: SecureConnect, ring: Ring, ctx: Context
) -> None:
    bob, carol = sconnect("bob"), sconnect("carol")
    wait_for(carol, lambda e: e.kind == "join" and e.nick == "carol")
    stolen = bob.session.token  # the worst case: eve has bob's session token
    assert stolen
    dropped = counter(carol, "dropped_wrong_identity")

    push = raw_socket(ctx, zmq.PUSH, secure.endpoints.ingest, ring.eve, ring.server[0])
    rpc = raw_socket(ctx, zmq.DEALER, secure.endpoints.rpc, ring.eve, ring.server[0])
    try:
        forged = f"forged {token()}"
        post = {"token": stolen, "room": "general", "text": forged, "nick": "bob"}
        push.send(json.dumps(post).encode())
        until_counter(carol, "dropped_wrong_identity", dropped + 1)

        # Nor can eve end bob's session or act on it over rpc.
        rpc.send_multipart([b"", p.encode(p.Leave(token=stolen, reason="pwned", req="x1"))])
        assert rpc.poll(int(WAIT * 1000)), "no reply from the broker"
        reply = p.decode_reply(rpc.recv_multipart()[-1])
        assert (reply["ok"], reply["code"]) == (False, "unknown_session")
        assert counter(carol, "dropped_wrong_identity") == dropped + 2
        assert "bob" in carol.who()
    finally:
        push.close()
        rpc.close()

    marker = f"marker {token()}"
    bob.say(marker)
    # The forged post was dropped before the marker was sent: had it been published, carol
    # would have got it before the marker.
    heard = until_marker(carol, marker)
    assert [(e.kind, e.nick, e.text) for e in heard if e.kind == "message"] == [("message", "bob", marker)]
    assert secure.broker.core.counters.received == 1  # the marker, nothing else


def test_unknown_key_is_refused_clearly_and_fast(secure: ThreadBroker, ring: Ring, ctx: Context) -> None:
    start = time.monotonic()
    # The client's default timeout, as `zchat join` uses it.
    client = Client("mallory", endpoints=secure.endpoints, context=ctx, curve=ring.curve(ring.mallory))
    with pytest.raises(Refused) as refused:
        client.connect()
    assert time.monotonic() - start < 5
    assert refused.value.code == "key_refused"
    assert ring.mallory[0] in str(refused.value)
    assert client.state == "closed"


def test_wrong_server_key_fails_clearly_and_fast(secure: ThreadBroker, ring: Ring, ctx: Context) -> None:
    imposter = keypair()[0]
    start = time.monotonic()
    client = Client("bob", endpoints=secure.endpoints, context=ctx, curve=ring.curve(ring.bob, imposter))
    with pytest.raises(Unreachable, match=r"secure handshake .* failed.*--server-key"):
        client.connect()
    assert time.monotonic() - start < 5


def test_client_without_curve_is_told_to_give_the_server_key(secure: ThreadBroker, ctx: Context) -> None:
    start = time.monotonic()
    client = Client("bob", endpoints=secure.endpoints, context=ctx)
    with pytest.raises(Unreachable, match=r"wants a secure connection.*--server-key"):
        client.connect()
    assert time.monotonic() - start < 5


def test_the_broker_sets_the_nick_in_the_json(
    secure: ThreadBroker, sconnect: SecureConnect, ring: Ring, ctx: Context, spies: list[Spy]
) -> None:
    bob = sconnect("bob")
    spy = Spy(ctx, secure.endpoints.feed, [b"#general:"], ring.carol, ring.server[0])
    spies.append(spy)
    said = f"hello {token()}"
    bob.say(said)
    spy.until_text(said)
    # A raw post with bob's key and token that claims another nick in its payload.
    push = raw_socket(ctx, zmq.PUSH, secure.endpoints.ingest, ring.bob, ring.server[0])
    try:
        claimed = f"as carol {token()}"
        push.send(
            json.dumps({"token": bob.session.token, "room": "general", "text": claimed, "nick": "carol"}).encode()
        )
        spy.until_text(claimed)
    finally:
        push.close()
    by_text = {ev["text"]: (topic, ev) for topic, ev in spy.seen}
    for text in (said, claimed):
        topic, ev = by_text[text]
        assert (topic, ev["nick"], ev["kind"], ev["room"]) == (b"#general:", "bob", "message", "general")


@dataclass
class ServedBroker:
    """A Broker with a given store, serving from a thread (conftest's ThreadBroker owns its store)."""

    broker: Broker
    thread: threading.Thread
    endpoints: Endpoints

    @classmethod
    def start(cls, ctx: Context, store: Store, **options: Any) -> ServedBroker:
        config = BrokerConfig(endpoints=LOOPBACK_ANY, heartbeat=HEARTBEAT, **options)
        broker = Broker(config, context=ctx, store=store)
        endpoints = broker.bind()
        thread = threading.Thread(target=broker.run, name="test-broker")
        thread.start()
        return cls(broker, thread, endpoints)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.broker.stop()
            self.thread.join(5)
            assert not self.thread.is_alive(), "broker did not stop"
            self.broker.close()


def test_open_registration_first_key_owns_the_nick_across_a_restart(ctx: Context, ring: Ring, tmp_path: Path) -> None:
    db = tmp_path / "claims.sqlite3"
    first, second = keypair(), keypair()
    served: list[ServedBroker] = []
    clients: list[Client] = []

    def serve() -> ServedBroker:
        store = SQLiteStore(db)
        b = ServedBroker.start(ctx, store, curve=ring.server, open_registration=True)
        served.append(b)
        return b

    def join(b: ServedBroker, nick: str, key: KeyPair) -> Client:
        c = Client(nick, endpoints=b.endpoints, context=ctx, curve=ring.curve(key), timeout=WAIT)
        clients.append(c)
        return c.connect()

    try:
        b = serve()
        dave = join(b, "dave", first)
        # A first-time registrant's inbox works (it is claimed with the nick, at the first hello).
        other = join(b, "other", second)
        other.msg("dave", "welcome")
        assert wait_for(dave, lambda e: e.kind == "private").text == "welcome"
        dave.close()
        with pytest.raises(Refused) as refused:
            join(b, "dave", second)
        assert refused.value.code == "nick_not_allowed"
        other.close()
        b.stop()
        assert b.broker.store is not None
        assert b.broker.store.claims() == {"dave": first[0], "other": second[0]}
        b.broker.store.close()

        b = serve()  # a new broker over the same file
        with pytest.raises(Refused) as refused:
            join(b, "dave", second)
        assert refused.value.code == "nick_not_allowed"
        join(b, "Dave", first).close()  # the owner, in any case
    finally:
        for c in clients:
            c.close()
        for b in served:
            b.stop()
            if b.broker.store is not None:
                b.broker.store.close()


# --- 2. open mode: private from every other peer ------------------------------------------------------


def test_open_mode_no_subscription_reads_private_messages(
    open_broker: ThreadBroker, ctx: Context, spies: list[Spy]
) -> None:
    """Open mode has no identities, and still no subscriber gets a private message: not with
    ``""`` (everything), nor with bob's inbox name itself (``@bob~<session>``), which v1 granted
    to whoever knew it. A private message travels only on bob's own rpc connection."""
    clients = [Client(n, endpoints=open_broker.endpoints, context=ctx, timeout=WAIT) for n in ("bob", "carol")]
    try:
        bob, carol = (c.connect() for c in clients)
        assert bob.inbox.startswith("@bob~")
        spy = Spy(ctx, open_broker.endpoints.feed, [*EVERY_TOPIC, bob.inbox.encode()])
        spies.append(spy)
        private, marker = send_private_then_marker(carol, bob)
        spy.until_text(marker)
        assert private not in spy.texts()
        assert [ev for _, ev in spy.seen if ev.get("kind") == "private"] == []
    finally:
        for c in clients:
            c.close()


# --- 3. the rate limit ----------------------------------------------------------------------------------


def test_a_flood_from_one_client_does_not_slow_the_others(open_broker: ThreadBroker, ctx: Context) -> None:
    """Default limits (10/s, bursts of 60): one client pushes at least 10 000 posts as fast as it
    can; another's 20 messages, sent one after another during the flood, each reach a third
    client within 2 s; the flooder is told it is rate limited."""
    b = open_broker
    clients = [Client(n, endpoints=b.endpoints, context=ctx, timeout=WAIT) for n in ("flood", "alice", "carol")]
    stop = threading.Event()
    sent = [0]
    flood_error: list[BaseException] = []
    arrivals: dict[str, float] = {}

    try:
        flood, alice, carol = (c.connect() for c in clients)
        flood_token = flood.session.token

        def flooder() -> None:
            try:
                push = raw_socket(ctx, zmq.PUSH, b.endpoints.ingest, None, None)
                push.setsockopt(zmq.SNDTIMEO, 100)
                try:
                    while not (stop.is_set() and sent[0] >= 10_000) and sent[0] < 500_000:
                        body = p.encode({"token": flood_token, "room": "general", "text": f"flood {sent[0]}"})
                        try:
                            push.send(body)
                        except zmq.Again:
                            continue
                        sent[0] += 1
                finally:
                    push.close()
            except BaseException as exc:
                flood_error.append(exc)

        def listener() -> None:
            while not stop.is_set():
                for ev in carol.poll(0.05):
                    if ev.nick == "alice" and ev.kind == "message":
                        arrivals[ev.text] = time.monotonic()

        flooding = threading.Thread(target=flooder, name="flooder")
        listening = threading.Thread(target=listener, name="listener")
        listening.start()
        flood_start = time.monotonic()
        flooding.start()
        try:
            until_counter(alice, "rate_limited", 1000)  # the flood is on
            delays = []
            for n in range(20):
                text = f"alice {n}"
                at = time.monotonic()
                alice.say(text)
                alice.wait_sent(WAIT)  # through the broker and back on alice's own feed
                deadline = time.monotonic() + WAIT
                while text not in arrivals and time.monotonic() < deadline:
                    alice.poll(0.01)
                assert text in arrivals, f"{text!r} never reached carol"
                delays.append(arrivals[text] - at)
            still_flooding = flooding.is_alive()
        finally:
            stop.set()
            flooding.join(WAIT)
            listening.join(WAIT)
        assert not flood_error, flood_error
        assert not flooding.is_alive() and not listening.is_alive()
        assert still_flooding, "the flood ended before alice's messages were through"
        assert sent[0] >= 10_000
        assert max(delays) < 2.0, delays

        notice = wait_for(flood, lambda e: e.kind == "error" and e.code == "rate_limited", timeout=WAIT)
        assert "slow down" in notice.text
        # The flooder got its burst, then about 10 a second; everything else was refused.
        counters = b.broker.core.counters
        through, refused = counters.received - 20, counters.rate_limited
        flood_time = time.monotonic() - flood_start
        assert refused > 1000
        assert 60 <= through <= 60 + 10 * flood_time + 1, (through, flood_time)
    finally:
        stop.set()
        for c in clients:
            c.close()


def test_an_honest_paste_through_zchat_say_passes_whole(
    open_broker: ThreadBroker, ctx: Context, tmp_path: Path
) -> None:
    b = open_broker
    observer = Client("observer", endpoints=b.endpoints, context=ctx, timeout=WAIT)
    try:
        observer.connect()
        lines = [f"pasted line {n}" for n in range(1, 21)]
        done = run_cli(["say", "--nick", "paster", *endpoint_args(b.endpoints)], tmp_path, "\n".join(lines) + "\n")
        assert done.returncode == 0, done.stderr
        got = collect(observer, 20, lambda e: e.nick == "paster" and e.kind == "message", timeout=WAIT)
        assert [e.text for e in got] == lines
        assert b.broker.core.counters.rate_limited == 0
    finally:
        observer.close()


# --- 4. hostile text is inert on a terminal, exact in JSON --------------------------------------------


def endpoint_args(e: Endpoints) -> list[str]:
    return ["--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]


def hermetic_env(tmp_path: Path) -> dict[str, str]:
    """child_env(), with a config directory of its own (no keys of the developer's)."""
    return {**child_env(), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def run_cli(args: list[str], tmp_path: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ZCHAT, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        env=hermetic_env(tmp_path),
        cwd=ROOT,
    )


def test_zchat_tail_shows_hostile_text_inert_and_json_keeps_it_exact(
    open_broker: ThreadBroker, ctx: Context, tmp_path: Path
) -> None:
    b = open_broker
    alice = Client("alice", endpoints=b.endpoints, context=ctx, timeout=WAIT)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        alice.connect()
        alice.say(HOSTILE)
        alice.wait_sent(WAIT)
        # Both tails print the message from history (--backlog), so no race with their subscribing.
        for extra in ([], ["--json"]):
            cmd = [*ZCHAT, "tail", "--backlog", "5", *extra, *endpoint_args(b.endpoints)]
            procs.append(
                subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=hermetic_env(tmp_path), cwd=ROOT
                )
            )
        plain, as_json = (Lines(proc) for proc in procs)

        shown = b"".join(plain.until(b"evil"))
        for raw in (b"\x1b", b"\x07", "\u202e".encode()):
            assert raw not in shown
        line = shown.decode().splitlines()[-1]
        assert line.endswith(f"alice: {render.inert(HOSTILE)}")
        assert "clear␛[2J title␛]0;title␇ rtl\\u202eevil" in line

        event = json.loads(as_json.until(b"evil")[-1])
        assert (event["nick"], event["text"]) == ("alice", HOSTILE)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=WAIT)
        alice.close()


def test_interactive_client_shows_hostile_text_inert(open_broker: ThreadBroker, ctx: Context, tmp_path: Path) -> None:
    """`zchat join` on a real pty (the full-screen client): the message is on screen with visible
    stand-ins, and none of its control sequences reached the terminal."""
    b = open_broker
    alice = Client("alice", endpoints=b.endpoints, context=ctx, timeout=WAIT)
    term = spawn_join(b.endpoints, "--backlog", "0", cols=120, env={"XDG_CONFIG_HOME": str(tmp_path / "config")})
    try:
        alice.connect()
        ready(term)
        wait_for(alice, lambda e: e.kind == "join" and e.nick == "bob")
        term.drain()
        # The client's own drawing, for comparison (it might clear its screen itself, say).
        own_clears = term.raw.count("\x1b[2J")

        alice.say(HOSTILE)
        said = wait_for(alice, lambda e: e.nick == "alice" and e.kind == "message")
        term.wait(re.escape(f"{render.clock(said.ts)} alice: {render.inert(HOSTILE)}"))
        assert "clear␛[2J title␛]0;title␇ rtl\\u202eevil" in term.text  # the visible stand-ins
        term.send("/quit\r")
        assert term.exit_status() == (0, None)  # everything it wrote has been read now
        assert term.raw.count("\x1b[2J") == own_clears
        assert "\x1b]0;title" not in term.raw
        assert "\u202e" not in term.raw
    finally:
        if term.child.isalive():
            term.child.kill(signal.SIGKILL)
            term.child.wait()
        term.child.close(force=True)
        alice.close()


# --- 5. the command line: keys, exposure, a secure broker end to end ------------------------------------


def test_keygen_writes_owner_only_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    done = run_cli(["keygen", "--dir", str(keydir), "--name", "x"], tmp_path)
    assert done.returncode == 0, done.stderr
    public_file, secret_file = keydir / "x.key", keydir / "x.key_secret"
    for path in (public_file, secret_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    public, secret = keys.load_keypair(secret_file)
    assert keys.load_keypair(public_file) == (public, "")
    assert len(public) == len(secret) == 40
    assert f"public key: {public}" in done.stdout.splitlines()
    assert secret not in done.stdout + done.stderr

    again = run_cli(["keygen", "--dir", str(keydir), "--name", "x"], tmp_path)
    assert again.returncode == 1
    assert len(again.stderr.splitlines()) == 1 and again.stderr.startswith("Error: "), again.stderr
    assert "--force" in again.stderr
    assert keys.load_keypair(secret_file) == (public, secret)  # untouched

    forced = run_cli(["keygen", "--dir", str(keydir), "--name", "x", "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert keys.load_keypair(secret_file)[0] != public


def test_broker_refuses_a_network_address_without_secure(tmp_path: Path) -> None:
    port = free_base_port("0.0.0.0")
    args = ["broker", "--host", "0.0.0.0", "--port", str(port), "--db", ":memory:"]
    done = run_cli(args, tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("Error: refusing to bind tcp://0.0.0.0:"), done.stderr
    assert "listening" not in done.stderr


def test_broker_binds_a_network_address_with_insecure(ctx: Context) -> None:
    anywhere = Endpoints("tcp://0.0.0.0:*", "tcp://0.0.0.0:*", "tcp://0.0.0.0:*")
    bp = start_broker_process("--insecure", endpoints=anywhere)
    try:
        assert bp.endpoints.ingest.startswith("tcp://0.0.0.0:")
        # It serves (reached over loopback): past its start-up, signal handlers in place.
        local = Endpoints(
            *(e.replace("0.0.0.0", "127.0.0.1") for e in (bp.endpoints.ingest, bp.endpoints.feed, bp.endpoints.rpc))
        )
        Client(None, endpoints=local, context=ctx, timeout=WAIT).connect().close()
    finally:
        code = bp.stop()
    assert code == 0
    assert any("security: open" in line for line in bp.log)


def test_secure_broker_needs_to_know_who_may_connect(tmp_path: Path) -> None:
    done = run_cli(["broker", "--secure", "--port", str(free_base_port("0.0.0.0")), "--db", ":memory:"], tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("Error: --secure needs --allow"), done.stderr


@pytest.fixture
def secure_proc(tmp_path: Path) -> Iterator[tuple[BrokerProcess, Path]]:
    """`zchat broker --secure --key --allow` with keys for server, alice and bob in tmp_path/keys."""
    keydir = tmp_path / "keys"
    allow = []
    for name in ("server", "alice", "bob"):
        _, _, public = keys.keygen(name, keydir)
        if name != "server":
            allow.append(f"{public} {name}  # {name}'s laptop\n")
    (tmp_path / "allow").write_text("# who may connect\n" + "".join(allow))
    bp = start_broker_process(
        "--secure", "--key", str(keydir / "server.key_secret"), "--allow", str(tmp_path / "allow"), heartbeat=HEARTBEAT
    )
    try:
        yield bp, keydir
    finally:
        bp.stop()


def say_while_listening(
    listener: Client, args: list[str], tmp_path: Path, pred: Callable[[Event], bool]
) -> tuple[Event, subprocess.CompletedProcess[str]]:
    """Run `zchat say ...`, keeping ``listener`` polled meanwhile; its event matching ``pred``."""
    proc = subprocess.Popen(
        [*ZCHAT, "say", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=hermetic_env(tmp_path),
        cwd=ROOT,
    )
    try:
        event = wait_for(listener, pred, timeout=WAIT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return event, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_secure_broker_process_end_to_end(secure_proc: tuple[BrokerProcess, Path], tmp_path: Path) -> None:
    bp, keydir = secure_proc
    server = keys.load_keypair(keydir / "server.key")[0]
    bob_public, bob_secret = keys.load_keypair(keydir / "bob.key_secret")
    bob = Client("bob", endpoints=bp.endpoints, timeout=WAIT, curve=Curve(server, bob_public, bob_secret))
    try:
        bob.connect()
        auth = ["--server-key", str(keydir / "server.key"), "--key", str(keydir / "alice.key_secret")]
        common = ["--nick", "alice", *auth, *bp.args]

        said, done = say_while_listening(bob, [*common, "hello over CURVE"], tmp_path, lambda e: e.kind == "message")
        assert done.returncode == 0, done.stderr
        assert (said.kind, said.room, said.text) == ("message", "general", "hello over CURVE")

        private, done = say_while_listening(
            bob, [*common, "--to", "bob", "for bob only"], tmp_path, lambda e: e.kind == "private"
        )
        assert done.returncode == 0, done.stderr
        assert (private.nick, private.to, private.text) == ("alice", "bob", "for bob only")

        # The same command with bob's key under alice's nick is refused, in one line.
        wrong = ["--nick", "alice", "--server-key", server, "--key", str(keydir / "bob.key_secret"), *bp.args]
        refused = run_cli(["say", *wrong, "not me"], tmp_path)
        assert refused.returncode == 1
        assert len(refused.stderr.splitlines()) == 1 and "alice" in refused.stderr, refused.stderr
    finally:
        bob.close()
    assert bp.stop() == 0
    assert any("security: CURVE on all sockets" in line for line in bp.log)
    assert any(f"public key: {server}" in line for line in bp.log)
