"""The examples as people run them: bot processes on loopback against a real broker, watched
through a real zchat Client, and the protocol doc checked against what a real broker sends. A
bot is ready when its join shows on the feed; every wait is bounded, and every bot process is
killed and reaped in any case at the end."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import secrets
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.auth
from conftest import ClientFactory, ThreadBroker, child_env, wait_for

from zchat import protocol as p
from zchat.client.shell import Client
from zchat.protocol import Endpoints, Event
from zchat.transport import Curve

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RAW_BOT = EXAMPLES / "raw_pyzmq_bot.py"
ECHO_BOT = EXAMPLES / "echo_bot.py"
DOC = REPO / "docs" / "protocol.md"
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
#: Generous for a bot process to start (interpreter, pyzmq import) on a loaded machine.
START_TIMEOUT = 15.0
#: For a bot's answer, or its leave after a signal.
TIMEOUT = 10.0
#: A client's CURVE keys, z85: (the broker's public key, its public key, its secret key).
Keys = tuple[str, str, str]


#: 6 s leases, so that a bot process starved of CPU on a loaded machine keeps its session.
#: Lapsing leases have a test of their own.
BROKER_OPTIONS = {"heartbeat": 2.0}


@pytest.fixture
def no_zchat(tmp_path: Path) -> Path:
    """A PYTHONPATH entry whose ``zchat`` cannot be imported: a process run with it that works
    imports nothing from zchat, not even indirectly."""
    (tmp_path / "zchat").mkdir()
    (tmp_path / "zchat" / "__init__.py").write_text('raise ImportError("this process must not import zchat")\n')
    return tmp_path


def bot_cmd(script: Path, nick: str, rooms: list[str], endpoints: Endpoints, *extra: str) -> list[str]:
    """The command line of an example bot on ``endpoints``."""
    e = endpoints
    room_args = [arg for room in rooms for arg in ("--room", room)]
    return [sys.executable, str(script), "--nick", nick, *room_args, "--ingest", e.ingest, "--feed", e.feed,
            "--rpc", e.rpc, *extra]  # fmt: skip


@contextlib.contextmanager
def bot_process(cmd: list[str], pythonpath: Path) -> Iterator[subprocess.Popen[str]]:
    """Run ``cmd``; its stderr is added to any failure inside. Killed (if need be) and reaped."""
    env = {**child_env(), "PYTHONPATH": str(pythonpath)}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=pythonpath,
    )  # fmt: skip
    try:
        yield proc
    except BaseException as exc:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=10)
        exc.add_note(f"--- {Path(cmd[1]).name} exited {proc.returncode}; its stderr:\n{err}")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def joined(nick: str, room: str = "general") -> Callable[[Event], bool]:
    return lambda e: e.kind == "join" and e.nick == nick and e.room == room


def said_by(nick: str) -> Callable[[Event], bool]:
    return lambda e: e.kind == "message" and e.nick == nick


def private_from(nick: str) -> Callable[[Event], bool]:
    return lambda e: e.kind == "private" and e.nick == nick


def left(nick: str) -> Callable[[Event], bool]:
    return lambda e: e.kind == "leave" and e.nick == nick


def events_for(client: Client, seconds: float) -> list[Event]:
    """Everything ``client`` receives in the next ``seconds``: for when time passing is the point."""
    deadline = time.monotonic() + seconds
    seen: list[Event] = []
    while (remaining := deadline - time.monotonic()) > 0:
        if (event := client.recv(remaining)) is not None:
            seen.append(event)
    return seen


def events_until(client: Client, pred: Callable[[Event], bool], timeout: float = TIMEOUT) -> list[Event]:
    """Everything ``client`` receives up to and including the first event matching ``pred``."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if (event := client.recv(remaining)) is not None:
            seen.append(event)
            if pred(event):
                return seen
    raise AssertionError(f"no matching event in {timeout} s; saw {seen}")


def keypair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


class RawSession:
    """Plain pyzmq sockets on a broker (CURVE with ``keys``), recording what it sends and gets."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoints: Endpoints,
        topics: Sequence[bytes],
        keys: Keys | None = None,
    ) -> None:
        self.push, self.sub, self.rpc = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
        for sock, endpoint in ((self.push, endpoints.ingest), (self.sub, endpoints.feed), (self.rpc, endpoints.rpc)):
            sock.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (k.encode() for k in keys)
            sock.connect(endpoint)
        self.replies: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        #: Everything in order: ("request" | "reply" | "post" | "event", the JSON object).
        self.transcript: list[tuple[str, dict[str, Any]]] = []
        for topic in topics:
            self.sub.subscribe(topic)

    def wait_until_live(self) -> None:
        probe = f"~{secrets.token_hex(8)}:".encode()
        self.sub.subscribe(probe)
        self.until(lambda e: e["kind"] == "ready")
        self.sub.unsubscribe(probe)

    def call(self, request: dict[str, Any] | bytes) -> dict[str, Any]:
        body = request if isinstance(request, bytes) else json.dumps(request, separators=(",", ":")).encode()
        self.transcript.append(("request", json.loads(body) if isinstance(request, dict) else {"raw": body.decode()}))
        self.rpc.send_multipart([b"", body])
        assert self.rpc.poll(5000), f"no reply to {body!r}"
        empty, data = self.rpc.recv_multipart()
        assert empty == b""
        reply: dict[str, Any] = json.loads(data)
        self.replies.append(reply)
        self.transcript.append(("reply", reply))
        return reply

    def post(self, **post: str) -> None:
        self.transcript.append(("post", post))
        self.push.send(json.dumps(post, separators=(",", ":")).encode())

    def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> None:
        """Record events until one matches ``pred``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0 and self.sub.poll(int(remaining * 1000) + 1):
            _topic, data = self.sub.recv_multipart()
            self.events.append(json.loads(data))
            self.transcript.append(("event", self.events[-1]))
            if pred(self.events[-1]):
                return
        raise AssertionError(f"no matching event in {timeout} s; saw {self.events}")

    def close(self) -> None:
        for sock in (self.push, self.sub, self.rpc):
            sock.close()


# --- examples/raw_pyzmq_bot.py ---------------------------------------------------------------


@SIGNALS
def test_raw_bot_answers_in_the_asking_room_and_leaves_on_signal(
    broker: ThreadBroker, connect: ClientFactory, no_zchat: Path, sig: signal.Signals
) -> None:
    alice = connect("alice", ["general", "dev"])
    with bot_process(bot_cmd(RAW_BOT, "pingbot", ["general", "dev"], broker.endpoints), no_zchat) as proc:
        wait_for(alice, joined("pingbot", "dev"), START_TIMEOUT)
        alice.say("hello", "dev")  # not a command: if it were answered, that answer would come first
        alice.say("!ping", "dev")
        pong = wait_for(alice, said_by("pingbot"), TIMEOUT)
        assert (pong.room, pong.text) == ("dev", "pong")
        alice.say("!time", "general")
        now = wait_for(alice, said_by("pingbot"), TIMEOUT)
        assert now.room == "general"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", now.text), now.text

        proc.send_signal(sig)
        leaves = [wait_for(alice, left("pingbot"), TIMEOUT) for _ in range(2)]
        assert sorted(e.room for e in leaves) == ["dev", "general"]
        assert {(e.text, e.reason) for e in leaves} == {("pingbot left (quit)", "quit")}
        assert proc.wait(TIMEOUT) == 0
    assert alice.who("general") == ["alice"]


def test_raw_bot_answers_a_private_ping_privately_and_no_one_else_sees_it(
    broker: ThreadBroker, connect: ClientFactory, ctx: zmq.Context[zmq.Socket[bytes]], no_zchat: Path
) -> None:
    alice = connect("alice")
    # A nosy raw subscriber asks for everything it can think of: it gets the rooms, not the inboxes.
    snoop = RawSession(ctx, broker.endpoints, [b"", b"@", b"@alice:", b"@pingbot:"])
    try:
        snoop.wait_until_live()
        with bot_process(bot_cmd(RAW_BOT, "pingbot", ["general"], broker.endpoints), no_zchat) as proc:
            wait_for(alice, joined("pingbot"), START_TIMEOUT)
            carol = connect("carol")  # a third member of the room
            alice.msg("pingbot", "!ping")
            pong = wait_for(alice, private_from("pingbot"), TIMEOUT)
            assert (pong.seq, pong.room, pong.to, pong.text) == (0, "", "alice", "pong")
            alice.msg("pingbot", "!time")
            now = wait_for(alice, private_from("pingbot"), TIMEOUT)
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", now.text), now.text
            # Published after the pongs, on the same feed: whoever got a pong got it before this.
            alice.say("done")
            seen = events_until(carol, lambda e: e.text == "done")
            assert [e for e in seen if e.kind == "private" or e.text in ("!ping", "pong")] == []
            snoop.until(lambda e: e["text"] == "done")
            inbox_kinds = ("private", "error", "duplicate")
            assert [e for e in snoop.events if e["kind"] in inbox_kinds or e["text"] in ("!ping", "!time")] == []
            assert [e["text"] for e in snoop.events if e["kind"] == "message"] == ["done"]
            proc.terminate()
            assert wait_for(alice, left("pingbot"), TIMEOUT).reason == "quit"
            assert proc.wait(TIMEOUT) == 0
    finally:
        snoop.close()


def test_raw_bot_heartbeats_keep_its_session_past_the_lease(
    ctx: zmq.Context[zmq.Socket[bytes]], no_zchat: Path
) -> None:
    heartbeat = 0.5
    quick = ThreadBroker(ctx, heartbeat=heartbeat)  # heartbeat_ms 500, lease_ms 1500
    alice = Client("alice", ["general"], endpoints=quick.endpoints, context=ctx)
    try:
        alice.connect()
        with bot_process(bot_cmd(RAW_BOT, "pingbot", ["general"], quick.endpoints), no_zchat) as proc:
            wait_for(alice, joined("pingbot"), START_TIMEOUT)
            seen = events_for(alice, 3 * heartbeat + 0.5)  # without heartbeats the lease lapses in this time
            assert not [e for e in seen if left("pingbot")(e)]
            assert alice.who("general") == ["alice", "pingbot"]
            alice.say("!ping")  # a lapsed session's posts would be dropped: the pong proves it is live
            assert wait_for(alice, said_by("pingbot"), TIMEOUT).text == "pong"
            proc.terminate()
            assert wait_for(alice, left("pingbot"), TIMEOUT).reason == "quit"
            assert proc.wait(TIMEOUT) == 0
    finally:
        alice.close()
        quick.stop()


def test_raw_bot_exits_1_with_one_line_when_its_nick_is_taken(
    broker: ThreadBroker, connect: ClientFactory, no_zchat: Path
) -> None:
    holder = connect("PingBot")  # nicks are unique case-insensitively
    with bot_process(bot_cmd(RAW_BOT, "pingbot", ["general"], broker.endpoints), no_zchat) as proc:
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            holder.poll(0.05)  # keeps PingBot's lease while the bot starts
        _out, err = proc.communicate(timeout=1)
        assert proc.returncode == 1
        assert err.strip() == "pingbot: hello refused (nick_taken): nick 'pingbot' is in use by a live session"


class SecureSetup:
    """A CURVE broker whose allowlist has alice (``alice_keys``) and the bot key (nicks pingbot
    and echo), the broker's and the bot's keys in ``key_dir`` as ``zchat keygen`` writes them
    (``server.key``, ``server.key_secret``, ``pingbot.key``, ``pingbot.key_secret``)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], key_dir: Path) -> None:
        self.key_dir = key_dir
        for name in ("server", "pingbot"):
            zmq.auth.create_certificates(key_dir, name)
        self.server_public, server_secret = self.keys_of("server")
        self.bot_public, self.bot_secret = self.keys_of("pingbot")
        alice_public, alice_secret = keypair()
        self.alice_keys = (self.server_public, alice_public, alice_secret)
        allowed = {self.bot_public: {"pingbot", "echo"}, alice_public: {"alice"}}
        self.broker = ThreadBroker(ctx, heartbeat=1.0, curve=(self.server_public, server_secret), allowlist=allowed)

    def keys_of(self, name: str) -> tuple[str, str]:
        public, secret = zmq.auth.load_certificate(self.key_dir / f"{name}.key_secret")
        assert secret is not None
        return public.decode(), secret.decode()

    def alice(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> Client:
        """A client for alice on this broker (not connected yet)."""
        return Client("alice", ["general"], endpoints=self.broker.endpoints, context=ctx, curve=Curve(*self.alice_keys))


@pytest.mark.parametrize("how", ["key files", "z85 keys"])
def test_raw_bot_works_against_a_secure_broker(
    ctx: zmq.Context[zmq.Socket[bytes]], no_zchat: Path, tmp_path: Path, how: str
) -> None:
    secure = SecureSetup(ctx, tmp_path)
    alice = secure.alice(ctx)
    if how == "key files":
        keys = ["--server-key", str(tmp_path / "server.key"), "--key", str(tmp_path / "pingbot.key_secret")]
    else:
        # "--opt=KEY": a z85 key may start with "-", which argparse would take for an option.
        keys = [f"--server-key={secure.server_public}", f"--public-key={secure.bot_public}"]
        keys.append(f"--secret-key={secure.bot_secret}")
    try:
        alice.connect()
        with bot_process(bot_cmd(RAW_BOT, "pingbot", ["general"], secure.broker.endpoints, *keys), no_zchat) as proc:
            wait_for(alice, joined("pingbot"), START_TIMEOUT)
            alice.say("!ping")
            assert wait_for(alice, said_by("pingbot"), TIMEOUT).text == "pong"
            alice.msg("pingbot", "!ping")
            pong = wait_for(alice, private_from("pingbot"), TIMEOUT)
            assert (pong.to, pong.text) == ("alice", "pong")
            proc.send_signal(signal.SIGTERM)
            assert wait_for(alice, left("pingbot"), TIMEOUT).reason == "quit"
            assert proc.wait(TIMEOUT) == 0
        assert alice.stats()["dropped_wrong_identity"] == 0
    finally:
        alice.close()
        secure.broker.stop()


@pytest.mark.parametrize("case", ["unknown key", "wrong server key", "no keys", "keys for an open broker"])
def test_raw_bot_says_in_one_line_why_the_handshake_failed(
    ctx: zmq.Context[zmq.Socket[bytes]], broker: ThreadBroker, no_zchat: Path, tmp_path: Path, case: str
) -> None:
    secure = SecureSetup(ctx, tmp_path)
    endpoints = secure.broker.endpoints
    stranger_public, stranger_secret = keypair()
    bot_keys = [f"--public-key={secure.bot_public}", f"--secret-key={secure.bot_secret}"]
    expected_too = ""
    if case == "unknown key":
        args = [f"--server-key={secure.server_public}", f"--public-key={stranger_public}"]
        args.append(f"--secret-key={stranger_secret}")
        expected = f"the broker refused our key {stranger_public}: ask its operator to allow it"
    elif case == "wrong server key":
        args = [f"--server-key={stranger_public}", *bot_keys]
        expected = "the secure handshake failed: is --server-key the broker's public key, and is the broker secure?"
    elif case == "no keys":
        args = []
        expected = "the broker is secure (CURVE): give --server-key and the bot's keys"
    else:
        endpoints, args = broker.endpoints, [f"--server-key={secure.server_public}", *bot_keys]
        # Most often libzmq sees the mechanism mismatch; at times the broker hangs up first.
        expected = "the broker is not secure (no CURVE): drop --server-key and the keys"
        expected_too = "the secure handshake failed: is --server-key the broker's public key, and is the broker secure?"
    try:
        with bot_process(bot_cmd(RAW_BOT, "pingbot", ["general"], endpoints, *args), no_zchat) as proc:
            _out, err = proc.communicate(timeout=START_TIMEOUT)
            assert proc.returncode == 1
            assert err in (f"pingbot: {expected}\n", f"pingbot: {expected_too}\n")
    finally:
        secure.broker.stop()


def test_raw_bot_imports_only_pyzmq_and_the_standard_library() -> None:
    tree = ast.parse(RAW_BOT.read_text(), str(RAW_BOT))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            modules.add(node.module or "")
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            assert name not in ("__import__", "import_module"), "dynamic import"
    top = {module.split(".")[0] for module in modules}
    assert "zmq" in top
    assert top - {"zmq"} <= sys.stdlib_module_names, top - {"zmq"} - sys.stdlib_module_names


def test_the_no_zchat_path_really_hides_zchat(no_zchat: Path) -> None:
    # As for `python examples/raw_pyzmq_bot.py`: sys.path[0] is examples/, then PYTHONPATH.
    code = f"import sys; sys.path[0] = {str(EXAMPLES)!r}; import zchat"
    env = {**child_env(), "PYTHONPATH": str(no_zchat)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=no_zchat.parent, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "this process must not import zchat" in done.stderr


# --- examples/echo_bot.py ----------------------------------------------------------------------


@SIGNALS
def test_echo_bot_echoes_in_the_same_room_and_leaves_on_signal(
    broker: ThreadBroker, connect: ClientFactory, sig: signal.Signals
) -> None:
    alice = connect("alice", ["general", "dev"])
    with bot_process(bot_cmd(ECHO_BOT, "echo", ["general", "dev"], broker.endpoints), REPO) as proc:
        wait_for(alice, joined("echo", "dev"), START_TIMEOUT)
        alice.say("hello there", "dev")
        echoed = wait_for(alice, said_by("echo"), TIMEOUT)
        assert (echoed.room, echoed.text) == ("dev", "hello there")
        alice.say("second", "general")
        # A bot that heard itself would be echoing "hello there" again by now, and forever.
        echoed = wait_for(alice, said_by("echo"), TIMEOUT)
        assert (echoed.room, echoed.text) == ("general", "second")

        proc.send_signal(sig)
        leaves = [wait_for(alice, left("echo"), TIMEOUT) for _ in range(2)]
        assert {(e.text, e.reason) for e in leaves} == {("echo left (quit)", "quit")}
        assert proc.wait(TIMEOUT) == 0


def test_echo_bot_works_against_a_secure_broker(ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path) -> None:
    secure = SecureSetup(ctx, tmp_path)
    alice = secure.alice(ctx)
    keys = ["--server-key", str(tmp_path / "server.key"), "--key", str(tmp_path / "pingbot.key_secret")]
    try:
        alice.connect()
        with bot_process(bot_cmd(ECHO_BOT, "echo", ["general"], secure.broker.endpoints, *keys), REPO) as proc:
            wait_for(alice, joined("echo"), START_TIMEOUT)
            alice.say("over CURVE")
            assert wait_for(alice, said_by("echo"), TIMEOUT).text == "over CURVE"
            proc.send_signal(signal.SIGTERM)
            assert wait_for(alice, left("echo"), TIMEOUT).reason == "quit"
            assert proc.wait(TIMEOUT) == 0
    finally:
        alice.close()
        secure.broker.stop()


# --- docs/protocol.md ----------------------------------------------------------------------------


def doc_code_block(title: str) -> str:
    """The first ```python block of the protocol doc's section called ``title``."""
    text = DOC.read_text()
    heading = re.search(rf"^## \d+\. {re.escape(title)}$", text, re.MULTILINE)
    assert heading is not None, title
    start = text.index("```python\n", heading.end()) + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_doc_s_30_line_bot_answers_ping_and_leaves_on_ctrl_c(
    broker: ThreadBroker, connect: ClientFactory, no_zchat: Path
) -> None:
    code = doc_code_block("A bot in 30 lines")
    assert len(code.splitlines()) <= 45
    e = broker.endpoints
    for port, endpoint in zip((5555, 5556, 5557), (e.ingest, e.feed, e.rpc), strict=True):
        code = code.replace(f'"tcp://127.0.0.1:{port}"', repr(endpoint))
    script = no_zchat / "tinybot.py"
    # As from an interactive shell: Ctrl-C raises KeyboardInterrupt even if we were started with it ignored.
    script.write_text(f"import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n{code}")
    alice = connect("alice")
    with bot_process([sys.executable, str(script)], no_zchat) as proc:
        wait_for(alice, joined("tinybot"), START_TIMEOUT)
        alice.say("!ping")
        pong = wait_for(alice, said_by("tinybot"), TIMEOUT)
        assert (pong.room, pong.text) == ("general", "pong")
        proc.send_signal(signal.SIGINT)
        assert wait_for(alice, left("tinybot"), TIMEOUT).reason == "quit"
        assert proc.wait(TIMEOUT) == 0


def record_the_protocol(ctx: zmq.Context[zmq.Socket[bytes]], heartbeat: float = 5.0) -> list[RawSession]:
    """Every request, reply, error code and event kind, from real brokers (the doc's examples
    are this story, printed). The default leases cannot lapse during the test."""
    sessions: list[RawSession] = []
    inbox = {nick: f"@{nick}:{secrets.token_urlsafe(18)}" for nick in ("alice", "bob", "dave")}

    # Open mode: alice and bob, and a snoop subscribed to all it can.
    broker = ThreadBroker(ctx, heartbeat=heartbeat)
    s = RawSession(ctx, broker.endpoints, [b"#general:", b"#dev:", inbox["alice"].encode(), inbox["bob"].encode(),
                                           b"!hb:"])  # fmt: skip
    snoop = RawSession(ctx, broker.endpoints, [b"", b"@", b"@alice:"])
    sessions += [s, snoop]
    try:
        s.wait_until_live()
        snoop.wait_until_live()
        hello = {"type": "hello", "req": "1", "nick": "alice", "rooms": ["general", "dev"], "inbox": inbox["alice"]}
        alice = s.call(hello)["token"]
        s.call({"type": "hello", "req": "2", "nick": "Alice"})
        bob = s.call({"type": "hello", "req": "3", "nick": "bob", "inbox": inbox["bob"]})["token"]
        s.call({"type": "hello", "req": "4", "nick": "bob smith"})
        s.call({"type": "hello", "req": "5", "nick": "carol", "rooms": [f"r{n}" for n in range(33)]})
        s.call({"type": "hello", "req": "6", "nick": "carol", "inbox": inbox["alice"]})
        s.call({"type": "join", "req": "7", "token": bob, "room": "dev"})
        s.call({"type": "part", "req": "8", "token": bob, "room": "dev"})
        s.call({"type": "part", "req": "9", "token": bob, "room": "dev"})
        s.call({"type": "who", "req": "10", "room": "general"})
        s.post(token=alice, room="general", text="hi all", kind="message", id="3f9a1c2e-1")
        s.post(token=alice, room="general", text="waves", kind="action", id="3f9a1c2e-2")
        s.post(token=alice, room="general", text="I am bob", nick="bob", id="3f9a1c2e-3")
        s.post(token=alice, room="general", text="hi all", kind="message", id="3f9a1c2e-1")
        s.post(token=alice, room="ops", text="anyone?", id="3f9a1c2e-4")
        s.post(token=alice, room="general", text="x" * 5000, id="3f9a1c2e-5")
        s.post(token=alice, room="general", text="HI", kind="shout", id="3f9a1c2e-6")
        s.post(token=alice, to="bob", text="lunch?", id="3f9a1c2e-7")
        s.post(token=alice, to="bob", text="lunch?", id="3f9a1c2e-7")
        s.post(token=alice, to="zed", text="hello?", id="3f9a1c2e-8")
        s.until(lambda e: e.get("id") == "3f9a1c2e-8")
        s.call({"type": "heartbeat", "req": "11", "token": alice})
        s.call({"type": "heartbeat", "req": "12", "token": "no-such-token"})
        s.call({"type": "history", "req": "13", "room": "general", "after": 3, "limit": 2})
        s.call({"type": "seqs", "req": "14", "rooms": ["general", "dev", "ops"]})
        stats = s.call({"type": "stats", "req": "15"})
        s.call(b'{"type":"hello","req":"16","nick":42}')
        s.call({"type": "leave", "req": "17", "token": bob, "reason": "lunch"})
        s.call({"type": "leave", "req": "18", "token": alice})
        s.until(lambda e: e["kind"] == "heartbeat")
        broker.stop()
        s.until(lambda e: e["kind"] == "system")
        snoop.until(lambda e: e["kind"] == "system")
    finally:
        broker.stop()
        s.close()
        snoop.close()
    # All a snoop may have: its own probe's answer, room events and heartbeats. No inbox.
    assert {e["kind"] for e in snoop.events} == {"ready", "join", "leave", "message", "action", "heartbeat", "system"}
    assert len([e for e in snoop.events if e["kind"] == "ready"]) == 1
    assert (stats["private"], stats["duplicates"], stats["rejected"]) == (1, 2, 3)
    assert stats["subscriptions_refused"] == 2  # the snoop's "@" and "@alice:"

    # A lease that lapses at once.
    quick = ThreadBroker(ctx, heartbeat=0.05)
    q = RawSession(ctx, quick.endpoints, [b"#general:"])
    sessions.append(q)
    try:
        q.wait_until_live()
        q.call({"type": "hello", "nick": "carol"})
        q.until(lambda e: e.get("reason") == "timed out")
    finally:
        quick.stop()
        q.close()

    # A burst over the rate limit.
    busy = ThreadBroker(ctx, heartbeat=heartbeat)
    d = RawSession(ctx, busy.endpoints, [inbox["dave"].encode()])
    sessions.append(d)
    try:
        d.wait_until_live()
        dave = d.call({"type": "hello", "nick": "dave", "inbox": inbox["dave"]})["token"]
        for n in range(1, 101):  # the default limit: bursts of 60, then 10 a second
            d.post(token=dave, room="general", text=f"spam {n}", id=f"d-{n}")
        d.until(lambda e: e.get("code") == "rate_limited")
    finally:
        busy.stop()
        d.close()

    # Secure mode: alice's and bob's keys, each allowed its own nick; both subscribe to "".
    server_public, server_secret = keypair()
    (alice_public, alice_secret), (bob_public, bob_secret) = keypair(), keypair()
    allowed = {alice_public: {"alice"}, bob_public: {"bob"}}
    secure = ThreadBroker(ctx, heartbeat=heartbeat, curve=(server_public, server_secret), allowlist=allowed)
    a = RawSession(ctx, secure.endpoints, [b""], (server_public, alice_public, alice_secret))
    b = RawSession(ctx, secure.endpoints, [b""], (server_public, bob_public, bob_secret))
    sessions += [a, b]
    try:
        a.wait_until_live()
        b.wait_until_live()
        a.call({"type": "hello", "req": "1", "nick": "bob"})
        a.call({"type": "hello", "req": "2", "nick": "mallory"})
        alice = a.call({"type": "hello", "req": "3", "nick": "alice", "inbox": inbox["alice"]})["token"]
        bob = b.call({"type": "hello", "nick": "bob", "inbox": inbox["bob"]})["token"]
        b.post(token=alice, room="general", text="I am alice", id="b-1")  # alice's token, bob's key: dropped
        b.call({"type": "heartbeat", "req": "4", "token": alice})
        a.post(token=alice, room="ops", text="anyone?", id="a-1")
        a.until(lambda e: e["kind"] == "error")  # "" includes one's own inboxes in secure mode
        a.post(token=alice, room="general", text="hi", id="a-2")
        b.until(lambda e: e.get("id") == "a-2")
        stats = a.call({"type": "stats", "req": "5"})
    finally:
        secure.stop()
        a.close()
        b.close()
    assert [e for e in b.events if e["kind"] == "error" or e.get("id") == "b-1"] == []
    assert (stats["dropped_wrong_identity"], stats["subscriptions_refused"]) == (2, 0)
    return sessions


def test_every_json_example_in_the_protocol_doc_is_what_the_broker_sends(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    sessions = record_the_protocol(ctx)
    replies = [r for s in sessions for r in s.replies]
    events = [e for s in sessions for e in s.events]
    reply_keys = {(r["type"], r.get("code")): list(r) for r in replies}
    event_keys: dict[tuple[str, str | None], list[list[str]]] = {}
    for event in events:
        event_keys.setdefault((event["kind"], event.get("reason")), []).append(list(event))

    text = DOC.read_text()
    examples: list[dict[str, Any]] = []
    in_json = False
    for line in map(str.strip, text.splitlines()):
        if line.startswith("```"):
            in_json = line == "```json"
        elif in_json and line:
            examples.append(json.loads(line))
    assert len(examples) > 40
    request_types = set()
    for ex in examples:
        if "ok" in ex:  # a reply: exactly the fields, in the order, the broker sends
            assert list(ex) == reply_keys.get((ex["type"], ex.get("code")), []), ex
        elif ex.get("local"):  # made up by the client, never sent by a broker: as it encodes them
            as_sent = json.dumps(ex, separators=(",", ":"), ensure_ascii=False).encode()
            assert p.encode(msgspec.convert(ex, p.Event)) == as_sent, ex
        elif "seq" in ex:  # an event
            assert list(ex) in event_keys.get((ex["kind"], ex.get("reason")), []), ex
        elif "type" in ex:  # a request
            p.decode_request(json.dumps(ex).encode())
            request_types.add(ex["type"])
        else:  # a post
            p.decode_post(json.dumps(ex).encode())
    # ... and the doc leaves nothing out.
    assert request_types == {t.__struct_config__.tag for t in typing.get_args(p.Request)}
    codes = {r["code"] for r in replies if not r["ok"]} | {e["code"] for e in events if "code" in e}
    assert {"bad_inbox", "nick_not_allowed", "rate_limited", "bad_post"} <= codes
    for code in codes:  # in the table of codes, and as a real example
        assert f"| `{code}`" in text and f'"code":"{code}"' in text, code
    assert "| `unauthenticated`" in text  # a CURVE connection always has a key: never seen over the wire
    for kind, reason in event_keys:
        assert f'"kind":"{kind}"' in text, kind
        assert reason is None or f'"reason":"{reason}"' in text, reason
    stats = next(r for r in replies if r["type"] == "stats")
    for counter in stats:
        assert f"`{counter}`" in text or counter in ("type", "ok", "req"), counter
