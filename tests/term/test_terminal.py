"""The interactive client end to end: `zchat join` as a real process, driven through a real
pseudo-terminal or a pipe, against a real broker on loopback.

On a terminal it is the full-screen client; tests/test_tui.py covers its features, these its
life cycle (every way out, a crash, the broker going away) and the plain mode without a terminal.
Every wait ends on a condition (the screen showing something, an event on a Client, a process
exit) and is bounded; nothing sleeps.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ZCHAT, BrokerProcess, ClientFactory, ThreadBroker, child_env, collect, free_base_port, wait_for
from pty_screen import ROOT, Term, terminals

from zchat.client.shell import Client
from zchat.protocol import Event
from zchat.term import plain, render

#: The broker's heartbeat here: a 12 s lease, so a Client the test is not polling while it
#: waits on the pty (up to the pexpect timeout) keeps its session.
HEARTBEAT = 4.0
#: Bound on every wait.
TIMEOUT = 10
TIME = r"\d\d:\d\d"

PtyJoin = Callable[..., Term]


#: conftest's in-thread broker, with the longer lease these tests need (``connect`` uses it).
BROKER_OPTIONS = {"heartbeat": HEARTBEAT}


@pytest.fixture
def pty_join() -> Iterator[PtyJoin]:
    """``pty_join(endpoints)`` -> `zchat join --nick bob` in a pty, joined and showing its input line."""
    yield from terminals()


def from_bob() -> Callable[[Event], bool]:
    """Matches bob's events other than his join: what he says, and his leaving."""
    return lambda e: e.nick == "bob" and e.kind != "join"


def bob_joined(e: Event) -> bool:
    return e.kind == "join" and e.nick == "bob"


# --- through a pseudo-terminal ------------------------------------------------------------------


def test_typed_line_reaches_the_room_and_incoming_shows_as_time_nick_text(
    broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)
    assert bob.lines[0] == " #general"  # the title line: the window, and its topic when it has one
    assert bob.lines[1] == "-- joined #general as bob; /help for commands"

    bob.send("hello from the pty\r")
    said = wait_for(alice, from_bob())
    assert (said.kind, said.text, said.room) == ("message", "hello from the pty", "general")
    line = f"{render.clock(said.ts)} bob: hello from the pty"
    bob.wait(lambda t: line in t.text and t.cell("hello from").fg == "default")

    alice.say("hi bob")
    mine = wait_for(alice, lambda e: e.kind == "message" and e.nick == "alice")
    bob.wait(re.escape(f"{render.clock(mine.ts)} alice: hi bob"))
    assert re.fullmatch(TIME, render.clock(mine.ts))
    # No cursor position requests: nothing waits for, or warns about, a terminal that never answers.
    assert "\x1b[6n" not in bob.raw
    assert "CPR" not in bob.raw


def test_half_typed_line_survives_an_incoming_message(
    broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    bob.send("half-typ")
    bob.wait(lambda t: t.input_line == "#general> half-typ")
    alice.say("incoming while typing")
    # The message gets a line of its own in the message area; the input line is untouched.
    bob.wait(rf"{TIME} alice: incoming while typing")
    assert bob.input_line == "#general> half-typ"
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
    bob.wait(re.escape(f"{render.clock(action.ts)} * bob waves"))

    bob.send("/who\r")
    bob.wait(r"-- in #general: [^\n]*, ")
    who = re.search(r"-- in #general: ([^\n]*)", bob.text)
    assert who is not None and sorted(who.group(1).split(", ")) == ["alice", "bob"]

    bob.send("/frob now\r")
    bob.wait(re.escape("!! unknown command /frob: /help lists the commands"))
    assert bob.input_line == "#general>"
    # Nothing of it went to the room: the next thing alice hears from bob is his next line.
    bob.send("still here\r")
    assert wait_for(alice, from_bob()).text == "still here"


WAYS_OUT: dict[str, tuple[Callable[[Term], object], str]] = {
    "/quit": (lambda t: t.send("/quit\r"), "bob left (quit)"),
    "/quit reason": (lambda t: t.send("/quit gone fishing\r"), "bob left (quit: gone fishing)"),
    "exit": (lambda t: t.send("exit\r"), "bob left (quit)"),
    "ctrl-d": (lambda t: t.send("\x04"), "bob left (quit)"),
    "ctrl-c": (lambda t: t.send("\x03"), "bob left (quit)"),
    "SIGINT": (lambda t: t.child.kill(signal.SIGINT), "bob left (quit)"),
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
    assert bob.exit_status() == (0, None)
    left = wait_for(alice, from_bob())
    assert (left.kind, left.nick, left.text, left.reason) == ("leave", "bob", text, "quit")
    assert "\x1b[?1049l" in bob.raw  # the terminal's own screen is back


def test_ctrl_c_with_a_half_typed_line_leaves_without_sending_it(
    broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    bob.send("never sent")
    bob.wait(lambda t: t.input_line == "#general> never sent")
    bob.send("\x03")
    assert bob.exit_status() == (0, None)
    left = wait_for(alice, from_bob())
    assert (left.kind, left.text) == ("leave", "bob left (quit)")


def test_ctrl_d_on_a_half_typed_line_does_not_quit(
    broker: ThreadBroker, connect: ClientFactory, pty_join: PtyJoin
) -> None:
    alice = connect("alice")
    bob = pty_join(broker.endpoints)
    wait_for(alice, bob_joined)

    bob.send("abc\x01\x04")  # Ctrl-A, Ctrl-D: deletes the character under the cursor
    bob.wait(lambda t: t.input_line == "#general> bc")
    bob.send("\r")
    assert wait_for(alice, from_bob()).text == "bc"


def test_shutdown_notice_and_the_connection_state_reach_an_interactive_client(
    broker_proc: BrokerProcess, pty_join: PtyJoin
) -> None:
    bob = pty_join(broker_proc.endpoints)
    broker_proc.proc.send_signal(signal.SIGTERM)
    bob.wait(rf"{TIME} -- the broker is shutting down")
    assert broker_proc.proc.wait(5) == 0
    # With the broker gone the client notices the silence and says so on the status line.
    bob.wait(lambda t: t.status_line().endswith("reconnecting"))
    bob.send("/quit\r")
    assert bob.exit_status() == (0, None)


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


def test_no_broker_one_line_and_exit_1_within_5_s() -> None:
    port = free_base_port()
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
    monkeypatch.setattr(plain, "_command", crash)
    monkeypatch.setattr(sys, "stdin", io.StringIO("boom\nafter the crash\n"))
    with pytest.raises(RuntimeError, match="bug on 'boom'"):
        plain.run(bob, plain=True)
    assert bob.state == "closed"
    left = wait_for(alice, from_bob())
    assert (left.nick, left.text) == ("bob", "bob left (quit)")
