"""What a daily irssi or WeeChat user expects of the full-screen client, tried through a real
pseudo-terminal against a real broker: numbered windows and Alt-digit keys, a status line that
fits 40 columns, words wrapped under the text, the unread marker, folded joins, your message
shown at once and then as sent (or not sent, and sent again with one key), day-change lines with
an injected broker clock, and Ctrl-C at start-up.

Every wait is bounded and ends on a condition (the screen, an event, a process exit); nothing
sleeps.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import (
    ZCHAT,
    BrokerProcess,
    ClientFactory,
    Lines,
    ThreadBroker,
    child_env,
    joined,
    start_broker_process,
    wait_for,
)
from pty_screen import ROOT, TIMEOUT, Term, spawn_join, terminals

from zchat.client.shell import Client
from zchat.protocol import Endpoints, Event
from zchat.term import render

#: A 12 s lease: alice's session outlives a test that waits on the pty without polling her.
HEARTBEAT = 4.0
BROKER_OPTIONS = {"heartbeat": HEARTBEAT}
ALT = "\x1b"
PAGE_UP = "\x1b[5~"

Spawn = Callable[..., Term]


@pytest.fixture
def tui() -> Iterator[Spawn]:
    """``tui(endpoints, *options, rows=24, cols=100, env={...})`` -> bob's screen, ready."""
    yield from terminals()


@pytest.fixture
def broker_with(ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[..., tuple[ThreadBroker, Client]]]:
    """``broker_with(**options)`` -> a broker of these ThreadBroker options, and alice connected
    to it; both closed after the test."""
    made: list[tuple[ThreadBroker, Client]] = []

    def make(**options: Any) -> tuple[ThreadBroker, Client]:
        broker = ThreadBroker(ctx, heartbeat=HEARTBEAT, **options)
        try:
            alice = Client("alice", ["general"], endpoints=broker.endpoints, context=ctx).connect()
        except BaseException:
            broker.stop()
            raise
        made.append((broker, alice))
        return broker, alice

    yield make
    for broker, alice in made:
        alice.close()
        broker.stop()


def said(text: str) -> Callable[[Event], bool]:
    return lambda e: e.kind == "message" and e.text == text


# --- windows -------------------------------------------------------------------------------


def test_alt_digits_go_to_numbered_windows_and_never_repeat_the_next_key(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice", rooms=["general", "dev", "ops"])
    bob = tui(broker.endpoints, "--room", "general", "--room", "dev", "--room", "ops")
    wait_for(alice, joined("bob", "ops"))
    assert re.fullmatch(r" bob \[1:#general\] 2:#dev 3:#ops\s+connected", bob.status_line())

    bob.send(ALT + "3")
    bob.wait(lambda t: t.input_line == "#ops>" and "[3:#ops]" in t.status_line())
    bob.send(ALT + "1" + ALT + "2" + ALT + "3")  # in Emacs terms, a repeat count of 123...
    bob.wait(lambda t: t.input_line == "#ops>")
    bob.send("/switch general")  # ...which would have typed 123 slashes
    bob.wait(lambda t: t.input_line == "#ops> /switch general")
    bob.send("\r")
    bob.wait(lambda t: t.input_line == "#general>")
    bob.send(ALT + "2" + "x")
    bob.wait(lambda t: t.input_line == "#dev> x")
    bob.send("\r")
    assert wait_for(alice, lambda e: e.nick == "bob" and e.kind == "message").room == "dev"
    bob.send(ALT + "9")  # no window 9: nothing happens
    bob.send(ALT + "0")  # nor 10
    bob.send("y")
    bob.wait(lambda t: t.input_line == "#dev> y")
    # Switching never reorders: the numbers are the order joined.
    assert re.fullmatch(r" bob 1:#general \[2:#dev\] 3:#ops\s+connected", bob.status_line())

    bob.send("\x15/join #dev\r")  # Ctrl-U, then a room bob is in
    bob.wait(re.escape("-- you are already in #dev (window 2)"))
    bob.send("/j #new\r")  # a new room gets the next number
    bob.wait(lambda t: t.input_line == "#new>" and "[4:#new]" in t.status_line())


def test_the_commands_irssi_users_type(broker: ThreadBroker, connect: ClientFactory, tui: Spawn) -> None:
    alice = connect("alice", rooms=["general", "dev"])
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))
    bob.send("/names #dev\r")  # a room bob is not in
    bob.wait(re.escape("-- in #dev: alice"))
    bob.send("/j dev\r")
    wait_for(alice, joined("bob", "dev"))
    bob.wait(lambda t: t.input_line == "#dev>")
    bob.send("/part #dev back later\r")
    left = wait_for(alice, lambda e: e.kind == "leave" and e.nick == "bob")
    assert (left.room, left.reason, left.text) == ("dev", "part", "bob left (part: back later)")
    bob.wait(lambda t: t.input_line == "#general>" and "#dev" not in t.status_line())


def test_40_columns_the_status_line_keeps_news_and_the_connection_apart(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    rooms = ["general", "dev", "random", "ops", "help"]
    alice = connect("alice", rooms=rooms)
    options = [arg for r in rooms for arg in ("--room", r)]
    bob = tui(broker.endpoints, *options, rows=14, cols=40)
    wait_for(alice, joined("bob", "help"))
    # What does not fit is counted; the connection keeps its distance.
    bob.wait(lambda t: re.fullmatch(r" bob \[1:#general\] 2:#dev \+3 {2,}connected", t.status_line()) is not None)

    alice.say("ops news", room="ops")
    alice.say("bob: in help", room="help")
    # Short of room, the windows with news come first: the one naming bob, then (counted) #ops.
    bob.wait(lambda t: re.fullmatch(r" \[1:#general\] 5:#help\(1\) \+3 {2,}connected", t.status_line()) is not None)
    assert bob.cell("5:#help(1)").bold and bob.cell("+3").bold  # news, also among the hidden
    bob.send(ALT + "4")
    bob.wait(lambda t: re.fullmatch(r" bob \[4:#ops\] 5:#help\(1\) \+3 {2,}connected", t.status_line()) is not None)


def test_long_lines_wrap_at_words_under_the_text_and_fill_the_view(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice")
    words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
        "sed",
        "do",
        "eiusmod",
        "tempor",
    ]
    for n in range(12):
        alice.say(f"message {n} " + " ".join(words[: 4 + 3 * (n % 3)]))
    wait_for(alice, lambda e: e.text.startswith("message 11"))
    bob = tui(broker.endpoints, rows=14, cols=40)
    wait_for(alice, joined("bob"))
    alice.say("last " + " ".join(words))
    last = wait_for(alice, lambda e: e.text.startswith("last"))
    bob.wait(r"tempor\n")

    area = bob.lines[1:12]  # the message area: every row between the title line and the status line
    assert all(area), "\n".join(area)  # no row left blank while older lines are cut off
    head = f"{render.clock(last.ts)} alice: "
    first = next(i for i, row in enumerate(area) if row.startswith(head + "last"))
    rows = area[first:]
    assert all(row.startswith(" " * len(head)) and row[len(head)] != " " for row in rows[1:]), rows
    assert all(len(row) <= 40 for row in rows)
    # Broken only at spaces: each row holds whole words, and together they are the text.
    assert [w for row in rows for w in row.split()] == [*head.split(), "last", *words]
    assert len(rows) >= 3


def test_the_unread_marker_shows_where_you_left_until_you_leave_again(
    broker: ThreadBroker, connect: ClientFactory, tui: Spawn
) -> None:
    alice = connect("alice", rooms=["general", "dev"])
    bob = tui(broker.endpoints, "--room", "general", "--room", "dev")
    wait_for(alice, joined("bob", "dev"))
    alice.say("read before")
    bob.wait("alice: read before")

    bob.send(ALT + "2")
    bob.wait(lambda t: t.input_line == "#dev>")
    alice.say("while away 1")
    alice.say("while away 2")
    bob.wait(lambda t: "1:#general(2)" in t.status_line())
    bob.send(ALT + "1")
    bob.wait("alice: while away 2")
    rows = bob.lines
    at = next(i for i, row in enumerate(rows) if "alice: while away 1" in row)
    assert re.fullmatch(r"─+ new ─+", rows[at - 1]), rows[at - 1]
    assert "alice: read before" in rows[at - 2]
    assert bob.cell(" new ").fg == "brightblack"  # dim

    bob.send(ALT + "2")
    bob.wait(lambda t: t.input_line == "#dev>")
    bob.send(ALT + "1")  # read, left, back: the marker is gone
    bob.wait(lambda t: t.input_line == "#general>" and " new " not in t.text)


def test_a_burst_of_joins_and_leaves_is_one_line(
    broker: ThreadBroker, connect: ClientFactory, ctx: zmq.Context[zmq.Socket[bytes]], tui: Spawn
) -> None:
    alice = connect("alice")
    bob = tui(broker.endpoints)
    wait_for(alice, joined("bob"))
    alice.say("before the burst")
    bob.wait("alice: before the burst")

    carol = connect("carol")
    bob.wait(r"-- carol joined\n")  # one join reads as itself
    dave = connect("dave")
    bob.wait(r"-- joined: carol, dave\n")  # the same line, changed
    carol.close()
    bob.wait(r"-- joined: carol, dave; left: carol\n")
    alice.say("after the burst")
    dave.close()
    # One condition on one screen: a read can end mid-redraw, with only part of it drawn anew.
    order = ("joined: carol, dave", "alice: after the burst", "-- dave left")
    bob.wait(lambda t: re.search(".*".join(map(re.escape, order)), t.text, re.S) is not None)
    text = bob.text
    assert text.count("carol") == 2 and "-- dave joined" not in text  # one line for the burst


# --- your messages -------------------------------------------------------------------------


def test_your_message_shows_at_once_dim_and_turns_normal_when_the_broker_has_it(
    broker_proc: BrokerProcess, tui: Spawn
) -> None:
    bob = tui(broker_proc.endpoints)
    broker_proc.proc.send_signal(signal.SIGSTOP)  # the broker hears nothing for now
    try:
        bob.send("hello, anyone?\r")
        bob.wait("bob: hello, anyone?")
        assert bob.cell("hello, anyone?").fg == "brightblack"  # pending
    finally:
        broker_proc.proc.send_signal(signal.SIGCONT)
    bob.wait(lambda t: t.cell("hello, anyone?").fg == "default")
    assert bob.text.count("hello, anyone?") == 1  # changed in place, not shown twice


def test_a_message_the_broker_never_confirmed_says_so_and_alt_r_sends_it_again(tui: Spawn, tmp_path: Path) -> None:
    eps = Endpoints(f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/feed", f"ipc://{tmp_path}/rpc")
    db = str(tmp_path / "history.sqlite3")
    first = start_broker_process(endpoints=eps, db=db, heartbeat=HEARTBEAT)
    second: BrokerProcess | None = None
    try:
        with Client("alice", endpoints=eps) as alice:
            bob = tui(eps, "--send-timeout", "1", cols=140)  # the refusal on one row
            wait_for(alice, joined("bob"))
            first.proc.kill()  # the broker is gone: bob's message can go nowhere
            first.stop()
            bob.send("second\r")
            bob.wait("!! not sent: .* — Alt-R sends it again")
            assert bob.cell("bob: second").strikethrough
            second = start_broker_process(endpoints=eps, db=db, heartbeat=HEARTBEAT)
            bob.wait(lambda t: "reconnected" in t.text and "connected" in t.status_line())
            bob.send(ALT + "r")
            assert wait_for(alice, said("second"), 15).nick == "bob"
            bob.wait(lambda t: "Alt-R" not in t.text and t.cell("second").fg == "default")
            assert bob.text.count("bob: second") == 1 and not bob.cell("second").strikethrough
            bob.send(ALT + "r")  # nothing left to send
            bob.wait("-- no unsent message in this window")
    finally:
        first.stop()
        if second is not None:
            second.stop()


# --- dates and times --------------------------------------------------------------------------


class Clock:
    """The broker's wall clock, set by the test."""

    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: dt.datetime) -> None:
        self.now = when.timestamp()


#: Local times for the child, whatever the machine's zone: UTC.
UTC_ENV = {"TZ": "UTC"}


def utc(day: int, hour: int, minute: int, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, 30, tzinfo=dt.UTC) + dt.timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def test_a_day_change_line_and_the_timestamp_format(
    broker_with: Callable[..., tuple[ThreadBroker, Client]], tui: Spawn
) -> None:
    clock = Clock(utc(0, 23, 59, 10))
    broker, alice = broker_with(wallclock=clock)
    bob = tui(broker.endpoints, "--timestamp-format", "%H:%M:%S", env=UTC_ENV)
    wait_for(alice, joined("bob"))
    alice.say("just before midnight")
    bob.wait("alice: just before midnight")
    clock.set(utc(1, 0, 1, 5))
    alice.say("just after")
    bob.wait("alice: just after")
    rows = bob.lines
    at = rows.index("00:01:05 alice: just after")
    assert rows[at - 2 : at] == ["23:59:10 alice: just before midnight", "-- Tuesday 1 December 2026 --"]


def test_plain_mode_has_the_day_change_line_and_the_timestamp_format_from_the_environment(
    broker_with: Callable[..., tuple[ThreadBroker, Client]],
) -> None:
    clock = Clock(utc(0, 23, 59, 10))
    broker, alice = broker_with(wallclock=clock)
    e = broker.endpoints
    command = [*ZCHAT, "join", "--nick", "bob", "--backlog", "0"]
    command += ["--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    env = {**child_env(), **UTC_ENV, "ZCHAT_JOIN_TIMESTAMP_FORMAT": "%H:%M:%S"}
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    ) as proc:
        try:
            wait_for(alice, joined("bob"))
            alice.say("late")
            wait_for(alice, said("late"))  # stamped before midnight
            clock.set(utc(1, 0, 1))
            alice.say("early")
            wait_for(alice, said("early"))  # and so before what bob says next
            out, err = proc.communicate("seen\n", timeout=TIMEOUT)  # bob says it, and leaves
        finally:
            proc.kill()
    assert (proc.returncode, err) == (0, "")
    assert out.splitlines() == [
        "23:59:10 -- bob joined",
        "23:59:10 alice: late",
        "-- Tuesday 1 December 2026 --",
        "00:01:00 alice: early",
        "00:01:00 bob: seen",
    ]


# --- Ctrl-C from the first moment -------------------------------------------------------------


def loaded(pid: int, library: str) -> bool:
    """Whether process ``pid`` has ``library`` mapped (it is importing, or has imported, it)."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def wait_until_loaded(pid: int, ended: Callable[[], bool]) -> None:
    """Wait (bounded) until process ``pid`` has loaded libzmq: its heavy imports are under way."""
    deadline = time.monotonic() + TIMEOUT
    while not loaded(pid, "libzmq"):
        assert not ended(), "the process ended first"
        assert time.monotonic() < deadline, "never loaded libzmq"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
@pytest.mark.parametrize("command", ["join", "tail"])
def test_ctrl_c_while_loading_or_connecting_ends_quietly_with_130(
    command: str, ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    # A broker that never answers: the client stays in connect() until the interrupt.
    feed = ctx.socket(zmq.XPUB)
    rpc = ctx.socket(zmq.ROUTER)
    for sock in (feed, rpc):
        sock.setsockopt(zmq.LINGER, 0)
    try:
        e = Endpoints(f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/feed", f"ipc://{tmp_path}/rpc")
        feed.bind(e.feed)
        rpc.bind(e.rpc)
        args = ["--nick", "bob"] if command == "join" else []
        args += ["--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc, "--timeout", "60"]

        # While the heavy imports run (libzmq has been mapped, prompt_toolkit is yet to come)...
        early = start(command, args)
        wait_until_loaded(early.pid, lambda: early.poll() is not None)
        early.send_signal(signal.SIGINT)
        assert_quiet_interrupt(early)

        # ...and while connecting: the client has subscribed to the feed and waits for it.
        connecting = start(command, args)
        assert feed.poll(int(TIMEOUT * 1000)), "the client never subscribed"
        connecting.send_signal(signal.SIGINT)
        assert_quiet_interrupt(connecting)
    finally:
        feed.close()
        rpc.close()


def start(command: str, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ZCHAT, command, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


def assert_quiet_interrupt(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in out + err
    assert len((out + err).strip().splitlines()) <= 1, out + err


def test_ctrl_c_while_loading_on_a_terminal_leaves_no_traceback(broker: ThreadBroker) -> None:
    """`zchat join` on a terminal, interrupted while it loads: what a person at a slow first start
    sees. (Before zchat's first line runs, the interpreter starts up for some milliseconds: no
    program can guard that moment.)"""
    term = spawn_join(broker.endpoints)
    try:
        wait_until_loaded(term.child.pid, lambda: not term.child.isalive())
        term.child.kill(signal.SIGINT)
        term.wait(lambda t: t.ended)
        term.child.close()
        assert "Traceback" not in term.raw
        assert (term.child.exitstatus, term.child.signalstatus) == (130, None)
        assert len(term.raw.strip().splitlines()) <= 1
    finally:
        if term.child.isalive():
            term.child.kill(signal.SIGKILL)
        term.child.close(force=True)


def test_ctrl_c_in_tail_ends_it_with_130(broker: ThreadBroker, connect: ClientFactory) -> None:
    alice = connect("alice")
    e = broker.endpoints
    proc = start("tail", ["--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc])
    try:
        lines = Lines(proc)
        # tail prints what it hears: once it has printed something, it is in its loop.
        lines.prompted(lambda: alice.say("are you there?"), timeout=TIMEOUT)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130
        assert proc.stderr is not None
        assert proc.stderr.read().strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
