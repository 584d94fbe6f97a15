"""The interactive client end to end: `zchat join` as a real process, driven through a real
pseudo-terminal (pexpect) or a pipe, against a real broker on loopback.

Every wait ends on a condition (a pattern in the pty, an event on a Client, a process exit) and
is bounded; nothing sleeps.
"""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
import zmq
from conftest import ZCHAT, BrokerProcess, ClientFactory, ThreadBroker, child_env, collect, wait_for

from zchat import render, terminal
from zchat.client import Client
from zchat.protocol import Endpoints, Event

#: The broker's heartbeat here: a 12 s lease, so a Client the test is not polling while it
#: waits on the pty (up to the pexpect timeout) keeps its session.
HEARTBEAT = 4.0
#: Bound on every pexpect wait.
TIMEOUT = 10
#: Run children from the repository root so ``-m zchat`` finds the package even uninstalled.
ROOT = Path(__file__).resolve().parent.parent
#: Any run of terminal control sequences (prompt_toolkit redraws lines with cursor moves).
CSI = r"(?:\x1b\[[0-9;?]*[A-Za-z])*"
#: The prompt, naming the current room.
PROMPT = r"#general bob>"
TIME = r"\d\d:\d\d"

Pty = Any  # pexpect.spawn: pexpect ships no type hints
PtyJoin = Callable[..., Pty]


@pytest.fixture
def broker(ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[ThreadBroker]:
    """conftest's in-thread broker, with the longer lease these tests need (``connect`` uses it)."""
    b = ThreadBroker(ctx, heartbeat=HEARTBEAT)
    yield b
    b.stop()


@pytest.fixture
def pty_join() -> Iterator[PtyJoin]:
    """``pty_join(endpoints)`` -> `zchat join --nick bob` in a pty, joined and at its prompt."""
    children: list[Pty] = []

    def spawn(endpoints: Endpoints, *extra: str) -> Pty:
        e = endpoints
        args = ["-m", "zchat", "join", "--nick", "bob", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
        child = pexpect.spawn(
            sys.executable,
            [*args, *extra],
            env=child_env(),
            cwd=ROOT,
            dimensions=(24, 100),
            timeout=TIMEOUT,
            encoding="utf-8",
        )
        child.logfile_read = io.StringIO()  # the whole transcript, for checks after the fact
        children.append(child)
        # The banner and bob's own join event, in either order; then the prompt drawn after both,
        # so no output is in flight when the test starts typing. (While prompt_toolkit prints
        # above the prompt the tty is briefly in cooked mode, where a Ctrl-D would be eaten.)
        banner = re.escape("-- joined #general as bob; /help for commands")
        joined = rf"{TIME} -- bob joined\r\n"
        first = child.expect([banner, joined])
        child.expect([joined, banner][first])
        child.expect(PROMPT)
        return child

    yield spawn
    for child in children:
        if child.isalive():
            child.kill(signal.SIGKILL)
            child.wait()  # bounded: nothing outlives SIGKILL
        child.close(force=True)


def from_bob() -> Callable[[Event], bool]:
    """Matches bob's events other than his join: what he says, and his leaving."""
    return lambda e: e.nick == "bob" and e.kind != "join"


def bob_joined(e: Event) -> bool:
    return e.kind == "join" and e.nick == "bob"


def strip_csi(text: str) -> str:
    return re.sub(CSI, "", text)


def transcript(child: Pty) -> str:
    """Everything the pty child has written so far."""
    text: str = child.logfile_read.getvalue()
    return text


def exit_status(child: Pty) -> tuple[int | None, int | None]:
    """Wait (bounded) for the pty child to end; its exit status and the signal that killed it."""
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in transcript(child)
    status: tuple[int | None, int | None] = (child.exitstatus, child.signalstatus)
    return status


# --- through a pseudo-terminal ------------------------------------------------------------------


def test_typed_line_reaches_the_room_and_incoming_shows_as_time_nick_text(
    broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    bob.send("hello from the pty\r")
    said = wait_for(alice, from_bob())
    assert (said.kind, said.text, said.room) == ("message", "hello from the pty", "general")
    bob.expect_exact(f"{render.clock(said.ts)} bob: hello from the pty\r\n")

    alice.say("hi bob")
    mine = wait_for(alice, lambda e: e.kind == "message" and e.nick == "alice")
    bob.expect_exact(f"{render.clock(mine.ts)} alice: hi bob\r\n")
    assert re.fullmatch(TIME, render.clock(mine.ts))
    # No cursor position requests: nothing waits for, or warns about, a terminal that never answers.
    assert "\x1b[6n" not in transcript(bob)
    assert "CPR" not in transcript(bob)


def test_half_typed_line_survives_an_incoming_message(
    broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    bob.send("half-typ")
    bob.expect_exact("half-typ")
    alice.say("incoming while typing")
    # The message gets a line of its own, above the input line...
    bob.expect(rf"{TIME} alice: incoming while typing\r\n")
    # ...which is then redrawn below it, the partial text intact.
    bob.expect(rf"{PROMPT}{CSI} {CSI}half-typ")
    bob.send("ed line\r")
    got = wait_for(alice, from_bob())
    assert (got.kind, got.text) == ("message", "half-typed line")


def test_me_who_and_unknown_command(broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    bob.send("/me waves\r")
    action = wait_for(alice, from_bob())
    assert (action.kind, action.text) == ("action", "waves")
    bob.expect_exact(f"{render.clock(action.ts)} * bob waves\r\n")

    bob.send("/who\r")
    bob.expect(r"-- in #general: ([^\r\n]*)\r\n")
    assert sorted(bob.match.group(1).split(", ")) == ["alice", "bob"]

    bob.send("/frob now\r")
    bob.expect_exact("!! unknown command /frob: /help lists the commands\r\n")
    bob.expect(PROMPT)
    assert strip_csi(bob.before).strip() == ""  # one line, then straight back to the prompt
    # Nothing of it went to the room: the next thing alice hears from bob is his next line.
    bob.send("still here\r")
    assert wait_for(alice, from_bob()).text == "still here"


WAYS_OUT: dict[str, tuple[Callable[[Pty], object], str]] = {
    "/quit": (lambda c: c.send("/quit\r"), "bob left (quit)"),
    "/quit reason": (lambda c: c.send("/quit gone fishing\r"), "bob left (quit: gone fishing)"),
    "exit": (lambda c: c.send("exit\r"), "bob left (quit)"),
    "ctrl-d": (lambda c: c.sendcontrol("d"), "bob left (quit)"),
    "ctrl-c": (lambda c: c.sendcontrol("c"), "bob left (quit)"),
    "SIGINT": (lambda c: c.kill(signal.SIGINT), "bob left (quit)"),
}


@pytest.mark.parametrize("way", list(WAYS_OUT))
def test_every_way_out_exits_0_and_leaves(
    way: str, broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    press, text = WAYS_OUT[way]
    press(bob)
    assert exit_status(bob) == (0, None)
    left = wait_for(alice, from_bob())
    assert (left.kind, left.nick, left.text, left.reason) == ("leave", "bob", text, "quit")


def test_ctrl_c_with_a_half_typed_line_leaves_without_sending_it(
    broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    bob.send("never sent")
    bob.expect_exact("never sent")
    bob.sendcontrol("c")
    assert exit_status(bob) == (0, None)
    left = wait_for(alice, from_bob())
    assert (left.kind, left.text) == ("leave", "bob left (quit)")


def test_shutdown_notice_reaches_an_interactive_client(broker_proc: BrokerProcess, pty_join: PtyJoin) -> None:
    bob = pty_join(broker_proc.endpoints)
    broker_proc.proc.send_signal(signal.SIGTERM)
    bob.expect(rf"{TIME} -- the broker is shutting down\r\n")
    assert broker_proc.proc.wait(5) == 0
    # /quit rather than Ctrl-D: bob may be printing "connection lost" right now (see pty_join).
    bob.send("/quit\r")
    assert exit_status(bob) == (0, None)


# --- without a terminal ---------------------------------------------------------------------------


def test_plain_mode_sends_stdin_lines_and_prints_plain_lines(
    broker: ThreadBroker, connect: ClientFactory, tmp_path: Path
) -> None:
    alice = connect("alice")
    e = broker.endpoints
    command = [*ZCHAT, "join", "--nick", "bob", "--backlog", "0"]
    command += ["--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    script = tmp_path / "lines"
    script.write_text("first line\n/me waves\n/who\nlast line\n")
    with script.open() as stdin:
        proc = subprocess.Popen(
            command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT
        )
    try:
        # alice listens (and so keeps her session) while bob runs
        joined = wait_for(alice, bob_joined, timeout=TIMEOUT)
        *sent, left = collect(alice, 4, from_bob(), timeout=TIMEOUT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (0, "")
    assert [(ev.kind, ev.text) for ev in sent] == [
        ("message", "first line"),
        ("action", "waves"),
        ("message", "last line"),
    ]
    assert (left.kind, left.text) == ("leave", "bob left (quit)")

    assert "\x1b" not in out
    lines = out.splitlines()
    who = [line for line in lines if line.startswith("-- in ")]
    assert len(who) == 1
    assert sorted(who[0].removeprefix("-- in #general: ").split(", ")) == ["alice", "bob"]
    # Everything else is the room as bob saw it, in order, one plain line per event.
    clock = [render.clock(ev.ts) for ev in (joined, *sent)]
    assert [line for line in lines if line not in who] == [
        f"{clock[0]} -- bob joined",
        f"{clock[1]} bob: first line",
        f"{clock[2]} * bob waves",
        f"{clock[3]} bob: last line",
    ]


def _free_base_port() -> int:
    """A port P with nothing listening on P, P+1 or P+2 on 127.0.0.1 (ingest, feed, rpc)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base > 65533:
            continue
        try:
            with socket.socket() as s1, socket.socket() as s2:
                s1.bind(("127.0.0.1", base + 1))
                s2.bind(("127.0.0.1", base + 2))
        except OSError:
            continue
        return base
    raise AssertionError("no three free consecutive ports")


def test_no_broker_one_line_and_exit_1_within_5_s() -> None:
    port = _free_base_port()
    start = time.monotonic()
    proc = subprocess.run(
        [*ZCHAT, "join", "--nick", "bob", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=child_env(),
        cwd=ROOT,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert elapsed < 5
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: cannot reach the zchat broker"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_bug_in_the_network_thread_is_raised_not_swallowed(
    connect: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: if running a line crashes the network thread, run() closes the client (bob
    leaves) and re-raises the error, so `zchat join` cannot end with status 0 after a crash."""

    def crash(client: Client, line: str) -> None:
        raise RuntimeError(f"bug on {line!r}")

    alice = connect("alice")
    bob = connect("bob")
    monkeypatch.setattr(terminal, "_command", crash)
    monkeypatch.setattr(sys, "stdin", io.StringIO("boom\nafter the crash\n"))
    with pytest.raises(RuntimeError, match="bug on 'boom'"):
        terminal.run(bob, plain=True)
    assert bob.state == "closed"
    left = wait_for(alice, from_bob())
    assert (left.nick, left.text) == ("bob", "bob left (quit)")
