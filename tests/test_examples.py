"""The examples as people run them: bot processes on loopback against a real broker, watched
through a real zchat Client. A bot is ready when its join shows on the feed; every wait is
bounded, and the bot process is killed in any case at the end."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import ClientFactory, ThreadBroker, child_env, wait_for

from zchat import protocol as p
from zchat.client import Client
from zchat.protocol import Endpoints, Event

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RAW_BOT = EXAMPLES / "raw_pyzmq_bot.py"
ECHO_BOT = EXAMPLES / "echo_bot.py"
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
#: Generous for a bot process to start (interpreter, pyzmq import) on a loaded machine.
START_TIMEOUT = 15.0
#: For a bot's answer, or its leave after a signal.
TIMEOUT = 10.0


@pytest.fixture
def broker(ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[ThreadBroker]:
    """This module's broker (``connect`` uses it too): 3 s leases, so that a bot process starved
    of CPU on a loaded machine keeps its session. Lapsing leases have a test of their own."""
    b = ThreadBroker(ctx, heartbeat=1.0)
    yield b
    b.stop()


@pytest.fixture
def no_zchat(tmp_path: Path) -> Path:
    """A PYTHONPATH entry whose ``zchat`` cannot be imported: a process run with it that works
    imports nothing from zchat, not even indirectly."""
    (tmp_path / "zchat").mkdir()
    (tmp_path / "zchat" / "__init__.py").write_text('raise ImportError("this process must not import zchat")\n')
    return tmp_path


@contextlib.contextmanager
def bot_process(
    script: Path, nick: str, rooms: list[str], broker: ThreadBroker, pythonpath: Path
) -> Iterator[subprocess.Popen[str]]:
    """Run ``script`` as a bot on ``broker``; its stderr is added to any failure inside."""
    e = broker.endpoints
    room_args = [arg for room in rooms for arg in ("--room", room)]
    cmd = [sys.executable, str(script), "--nick", nick, *room_args, "--ingest", e.ingest, "--feed", e.feed]
    env = {**child_env(), "PYTHONPATH": str(pythonpath)}
    proc = subprocess.Popen(
        [*cmd, "--rpc", e.rpc], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=pythonpath,
    )  # fmt: skip
    try:
        yield proc
    except BaseException as exc:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=10)
        exc.add_note(f"--- {script.name} exited {proc.returncode}; its stderr:\n{err}")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def joined(nick: str, room: str = "general") -> Callable[[Event], bool]:
    return lambda e: e.kind == "join" and e.nick == nick and e.room == room


def said_by(nick: str) -> Callable[[Event], bool]:
    return lambda e: e.kind == "message" and e.nick == nick


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


# --- examples/raw_pyzmq_bot.py ---------------------------------------------------------------


@SIGNALS
def test_raw_bot_answers_in_the_asking_room_and_leaves_on_signal(
    broker: ThreadBroker, connect: ClientFactory, no_zchat: Path, sig: signal.Signals
) -> None:
    alice = connect("alice", ["general", "dev"])
    with bot_process(RAW_BOT, "pingbot", ["general", "dev"], broker, no_zchat) as proc:
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


def test_raw_bot_heartbeats_keep_its_session_past_the_lease(
    ctx: zmq.Context[zmq.Socket[bytes]], no_zchat: Path
) -> None:
    heartbeat = 0.5
    quick = ThreadBroker(ctx, heartbeat=heartbeat)  # heartbeat_ms 500, lease_ms 1500
    alice = Client("alice", ["general"], endpoints=quick.endpoints, context=ctx)
    try:
        alice.connect()
        with bot_process(RAW_BOT, "pingbot", ["general"], quick, no_zchat) as proc:
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
    with bot_process(RAW_BOT, "pingbot", ["general"], broker, no_zchat) as proc:
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            holder.poll(0.05)  # keeps PingBot's lease while the bot starts
        _out, err = proc.communicate(timeout=1)
        assert proc.returncode == 1
        assert err.strip() == "pingbot: hello refused (nick_taken): nick 'pingbot' is in use by a live session"


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
    with bot_process(ECHO_BOT, "echo", ["general", "dev"], broker, REPO) as proc:
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


# --- docs/protocol.md ----------------------------------------------------------------------------

DOC = REPO / "docs" / "protocol.md"


class RawSession:
    """Plain pyzmq sockets on a broker, recording every reply and event it receives."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoints: Endpoints, topics: list[bytes]) -> None:
        self.push, self.sub, self.rpc = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
        for sock, endpoint in ((self.push, endpoints.ingest), (self.sub, endpoints.feed), (self.rpc, endpoints.rpc)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
        self.replies: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        for topic in topics:
            self.sub.subscribe(topic)

    def wait_until_live(self) -> None:
        self.sub.subscribe(b"~doc-probe:")
        self.until(lambda e: e["kind"] == "ready")

    def call(self, request: dict[str, Any] | bytes) -> dict[str, Any]:
        body = request if isinstance(request, bytes) else json.dumps(request).encode()
        self.rpc.send_multipart([b"", body])
        assert self.rpc.poll(5000), f"no reply to {body!r}"
        empty, data = self.rpc.recv_multipart()
        assert empty == b""
        reply: dict[str, Any] = json.loads(data)
        self.replies.append(reply)
        return reply

    def post(self, **post: str) -> None:
        self.push.send(json.dumps(post).encode())

    def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> None:
        """Record events until one matches ``pred``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0 and self.sub.poll(int(remaining * 1000) + 1):
            _topic, data = self.sub.recv_multipart()
            self.events.append(json.loads(data))
            if pred(self.events[-1]):
                return
        raise AssertionError(f"no matching event in {timeout} s; saw {self.events}")

    def close(self) -> None:
        for sock in (self.push, self.sub, self.rpc):
            sock.close()


def record_the_protocol(ctx: zmq.Context[zmq.Socket[bytes]]) -> RawSession:
    """Every request, reply, error code and event kind, from real brokers."""
    broker = ThreadBroker(ctx, heartbeat=5.0)  # leases that cannot lapse during the test
    s = RawSession(ctx, broker.endpoints, [b"#general:", b"#dev:", b"@alice:", b"!hb:"])
    try:
        s.wait_until_live()
        alice = s.call({"type": "hello", "req": "1", "nick": "alice", "rooms": ["general", "dev"]})["token"]
        bob = s.call({"type": "hello", "nick": "bob"})["token"]
        s.call({"type": "hello", "nick": "ALICE"})
        s.call({"type": "hello", "nick": "bob smith"})
        s.call({"type": "hello", "nick": "carol", "rooms": [f"r{n}" for n in range(33)]})
        s.call({"type": "heartbeat", "token": alice})
        s.call({"type": "heartbeat", "token": "no-such-token"})
        s.call({"type": "join", "token": bob, "room": "dev"})
        s.call({"type": "part", "token": bob, "room": "dev"})
        s.call({"type": "part", "token": bob, "room": "dev"})
        s.call({"type": "who", "room": "general"})
        s.post(token=alice, room="general", text="hi", kind="message", id="m-1")
        s.post(token=alice, room="general", text="waves", kind="action", id="m-2")
        s.post(token=alice, room="general", text="hi", kind="message", id="m-1")
        s.post(token=alice, room="ops", text="hi", id="m-3")
        s.until(lambda e: e["kind"] == "error")
        s.call({"type": "history", "room": "general", "after": 1, "limit": 2})
        s.call({"type": "seqs", "rooms": ["general", "ops"]})
        s.call({"type": "stats"})
        s.call(b'{"type":"hello","req":"9","nick":42}')
        s.call({"type": "leave", "token": bob, "reason": "lunch"})
        s.call({"type": "leave", "token": alice})
        s.until(lambda e: e["kind"] == "heartbeat")
        broker.stop()
        s.until(lambda e: e["kind"] == "system")
    finally:
        broker.stop()
        s.close()
    quick = ThreadBroker(ctx, heartbeat=0.05)  # a lease that lapses at once
    q = RawSession(ctx, quick.endpoints, [b"#general:"])
    try:
        q.wait_until_live()
        q.call({"type": "hello", "nick": "carol"})
        q.until(lambda e: e.get("reason") == "timed out")
    finally:
        quick.stop()
        q.close()
    s.events += q.events
    s.replies += q.replies
    return s


def test_every_json_example_in_the_protocol_doc_is_what_the_broker_sends(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    real = record_the_protocol(ctx)
    reply_keys = {(r["type"], r.get("code")): list(r) for r in real.replies}
    event_keys: dict[tuple[str, str | None], list[list[str]]] = {}
    for event in real.events:
        event_keys.setdefault((event["kind"], event.get("reason")), []).append(list(event))

    text = DOC.read_text()
    examples: list[dict[str, Any]] = []
    in_json = False
    for line in map(str.strip, text.splitlines()):
        if line.startswith("```"):
            in_json = line == "```json"
        elif in_json and line:
            examples.append(json.loads(line))
    assert len(examples) > 30
    request_types = set()
    for ex in examples:
        if "ok" in ex:  # a reply: exactly the fields, in the order, the broker sends
            assert list(ex) == reply_keys.get((ex["type"], ex.get("code")), []), ex
        elif "seq" in ex:  # an event
            assert list(ex) in event_keys.get((ex["kind"], ex.get("reason")), []), ex
        elif "type" in ex:  # a request
            p.decode_request(json.dumps(ex).encode())
            request_types.add(ex["type"])
        else:  # a post
            p.decode_post(json.dumps(ex).encode())
    # ... and the doc leaves nothing out.
    assert request_types == {t.__struct_config__.tag for t in typing.get_args(p.Request)}
    for code in {r["code"] for r in real.replies if not r["ok"]} | {e["code"] for e in real.events if "code" in e}:
        assert f"| `{code}`" in text or f'"code":"{code}"' in text, code
    for kind, reason in event_keys:
        assert f'"kind":"{kind}"' in text, kind
        assert reason is None or f'"reason":"{reason}"' in text, reason
