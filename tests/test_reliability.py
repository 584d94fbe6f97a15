"""Nothing lost: late joiners, gap repair, broker kill -9 and restart, confirmed sends.

Real broker processes (ipc:// in the test's temp dir, so a restarted broker has the same
address) and real clients. Every wait ends on a condition and has a deadline.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
from conftest import (
    LOOPBACK_ANY,
    ZCHAT,
    ClientFactory,
    Lines,
    ThreadBroker,
    child_env,
    start_broker_process,
    wait_for,
)

from zchat.client.shell import Client
from zchat.protocol import MAX_HISTORY, Endpoints, Event


def ipc_endpoints(tmp_path: Path) -> Endpoints:
    return Endpoints(f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/feed", f"ipc://{tmp_path}/rpc")


def room_events_until(client: Client, pred: Callable[[Event], bool], timeout: float = 30.0) -> list[Event]:
    """Every event ``client`` delivers up to and including the first matching ``pred``."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event = client.recv(left)
        if event is None:
            break
        got.append(event)
        if pred(event):
            return got
    raise AssertionError(f"condition not met in {timeout} s; last events: {got[-5:]}")


def stored_messages(client: Client, room: str = "general") -> list[Event]:
    """Every message the broker's history holds for ``room``, read page by page: a client's
    replay (``since=0``) delivers a page at a time, and a page is at most 64 KiB."""
    got: list[Event] = []
    after = 0
    while page := client.history(room, MAX_HISTORY, after=after):
        assert page[-1].seq > after, "history went backwards"
        got += page
        after = page[-1].seq
    return [e for e in got if e.kind == "message"]


def assert_gapless(events: list[Event]) -> None:
    """Room events exactly once each, in seq order, with no hole."""
    seqs = [e.seq for e in events if e.seq > 0]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "duplicate or missing seq"


#: These tests send thousands of messages from one client: no rate limit here.
BROKER_OPTIONS = {"rate": 0}


def test_late_joiner_gets_backlog_then_live_with_no_gap_while_messages_flow(
    broker: ThreadBroker, connect: ClientFactory, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    early = connect("early")
    for n in range(100):
        early.say(f"early {n}")
    early.wait_sent(10)

    flowing = threading.Event()
    stop = threading.Event()

    def flow() -> None:
        with Client("flow", endpoints=broker.endpoints, context=ctx) as c:
            for n in range(3000):
                c.say(f"live {n}")
                if n == 20:
                    flowing.set()
                if n % 50 == 0:
                    c.wait_sent(10)  # keep the flow going for as long as the join takes
                if stop.is_set():
                    break
            c.say("last")
            c.wait_sent(20)

    sender = threading.Thread(target=flow)
    sender.start()
    try:
        assert flowing.wait(10)
        late = connect("late", backlog=60)
        stop.set()
        events = room_events_until(late, lambda e: e.text == "last")
    finally:
        stop.set()
        sender.join(30)
    room = [e for e in events if e.room == "general" and e.seq > 0]
    assert_gapless(room)
    assert any(e.kind == "join" and e.nick == "late" for e in room)
    # The backlog reaches back before the join: at least 59 events older than it.
    join_seq = next(e.seq for e in room if e.kind == "join" and e.nick == "late")
    assert room[0].seq <= join_seq - 59
    assert not any(e.code == "gap" for e in events)


def test_history_beyond_retention_is_named_not_silent(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    b = ThreadBroker(ctx, history_limit=10)
    try:
        with Client("talker", endpoints=b.endpoints, context=ctx) as talker:
            for n in range(30):
                talker.say(f"m {n}")
            talker.wait_sent(10)
            # Retention runs off the per-message path, about once a second: wait until it has.
            deadline = time.monotonic() + 5
            while talker.history(limit=1000)[0].seq == 1:
                assert time.monotonic() < deadline, "retention never ran"
                talker.poll(0.1)
        with Client(None, endpoints=b.endpoints, context=ctx, since=0) as reader:
            first = reader.recv(5)
            assert first is not None and first.code == "gap"
            assert first.text.startswith("… ") and "older messages not available" in first.text
            rest = room_events_until(reader, lambda e: e.kind == "leave" and e.nick == "talker", 10)
        # Retention counts messages: the last 10 of them are kept, and the leave after them.
        assert [e.text for e in rest] == [f"m {n}" for n in range(20, 30)] + ["talker left (quit)"]
        assert_gapless(rest)
        missing = int(first.text.split()[1])
        assert missing == rest[0].seq - 1
    finally:
        b.stop()


def test_broker_kill_9_and_restart_loses_nothing(tmp_path: Path) -> None:
    eps = ipc_endpoints(tmp_path)
    db = str(tmp_path / "history.sqlite3")
    first = start_broker_process(endpoints=eps, db=db)
    second = None
    try:
        with Client("alice", endpoints=eps) as alice, Client("bob", endpoints=eps) as bob:
            for n in range(20):
                alice.say(f"before {n}")
            alice.wait_sent(10)
            first.proc.kill()  # SIGKILL: no shutdown notice, no goodbye
            first.stop()
            for n in range(10):
                alice.say(f"during {n}")
            second = start_broker_process(endpoints=eps, db=db)
            alice.wait_sent(30)
            seen_by_bob = room_events_until(bob, lambda e: e.text == "during 9")
            seen_by_alice = room_events_until(alice, lambda e: e.text == "during 9")
        texts = [f"before {n}" for n in range(20)] + [f"during {n}" for n in range(10)]
        for seen in (seen_by_bob, seen_by_alice):
            assert [e.text for e in seen if e.kind == "message"] == texts
            assert_gapless([e for e in seen if e.room == "general"])
            # Their sessions were restored: the restart made no leave or join line.
            after = [e for e in seen if e.room == "general" and e.text.startswith("during")]
            assert not [e for e in seen if e.kind in ("join", "leave") and e.seq > after[0].seq - 20]
        # The history survived the kill: a reader from seq 0 gets every event exactly once.
        with Client(None, endpoints=eps, since=0) as reader:
            history = room_events_until(reader, lambda e: e.text == "during 9", 10)
        assert [e.text for e in history if e.kind == "message"] == texts
        assert history[0].seq == 1
        assert_gapless(history)
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0


def test_paused_subscriber_does_not_slow_others_and_repairs_its_gap(connect: ClientFactory) -> None:
    bp = start_broker_process("--feed-hwm", "500", "--history-limit", "20000", "--rate", "0")
    try:
        e = bp.endpoints
        # --since 0: the tail prints the warm-up from history even if it starts after it was said.
        cmd = [*ZCHAT, "tail", "--json", "--since", "0", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env()
        ) as tail:
            try:
                lines = Lines(tail)
                with Client("sender", endpoints=e) as sender, Client("other", endpoints=e) as other:
                    sender.say("warm-up")
                    while json.loads(lines.get(10)).get("text") != "warm-up":
                        pass
                    os.kill(tail.pid, signal.SIGSTOP)
                    for n in range(10_000):
                        sender.say(f"m {n}")
                        if n % 200 == 0:
                            sender.poll(0)
                    sender.wait_sent(60)
                    got = [
                        ev.text
                        for ev in room_events_until(other, lambda ev: ev.text == "m 9999", 60)
                        if ev.kind == "message" and ev.nick == "sender"
                    ]
                    assert got == ["warm-up"] + [f"m {n}" for n in range(10_000)]
                    os.kill(tail.pid, signal.SIGCONT)
                    texts: list[str] = []
                    while not texts or texts[-1] != "m 9999":
                        event = json.loads(lines.get(30))
                        if event.get("kind") == "message":
                            texts.append(event["text"])
                    assert texts == [f"m {n}" for n in range(10_000)]
            finally:
                os.kill(tail.pid, signal.SIGCONT)
                tail.kill()
    finally:
        bp.stop()


def test_say_survives_a_broker_restart_mid_way(tmp_path: Path) -> None:
    eps = ipc_endpoints(tmp_path)
    db = str(tmp_path / "history.sqlite3")
    first = start_broker_process(endpoints=eps, db=db)
    second = None
    try:
        with Client("observer", endpoints=eps) as observer:
            cmd = [*ZCHAT, "say", "--nick", "bob", "--ingest", eps.ingest, "--feed", eps.feed, "--rpc", eps.rpc]
            with subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
            ) as say:
                assert say.stdin is not None
                for n in range(1, 11):
                    say.stdin.write(f"line {n}\n")
                say.stdin.flush()
                wait_for(observer, lambda ev: ev.text == "line 10", 10)
                first.proc.kill()
                first.stop()
                for n in range(11, 21):
                    say.stdin.write(f"line {n}\n")
                say.stdin.flush()
                second = start_broker_process(endpoints=eps, db=db)
                _, err = say.communicate(timeout=60)
                assert say.returncode == 0, err
        with Client(None, endpoints=eps, since=0) as reader:
            history = room_events_until(reader, lambda ev: ev.text == "line 20", 10)
        assert [ev.text for ev in history if ev.kind == "message"] == [f"line {n}" for n in range(1, 21)]
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0


@pytest.mark.timeout(180)
def test_200_clients_each_send_50_and_all_receive_all_10000() -> None:
    # Sessions with 15 s leases: this test is about delivery, not about noticing dead clients.
    bp = start_broker_process("--history-limit", "20000", heartbeat=5.0)
    try:
        e = bp.endpoints
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("swarm.py")),
                    e.ingest,
                    e.feed,
                    e.rpc,
                    f"w{w}",
                    "50",
                    "50",
                    "10000",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            for w in range(4)
        ]
        reports = []
        for worker in workers:
            out, err = worker.communicate(timeout=150)
            assert worker.returncode == 0, err[-2000:]
            reports.append(json.loads(out))
        assert sum(r["clients"] for r in reports) == 200
        assert all(r["ok"] == r["clients"] for r in reports), reports
    finally:
        bp.stop()


# --- issue: nothing lost, for real ----------------------------------------------------------------------


def _limit_file_size(limit: int) -> Callable[[], None]:
    """For a child: writes past ``limit`` bytes fail (EFBIG, as on a full disk; Python ignores
    SIGXFSZ), until the limit is raised from outside (``resource.prlimit``)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_a_failing_disk_confirms_nothing_it_did_not_store_and_loses_nothing_once_it_recovers(tmp_path: Path) -> None:
    eps = ipc_endpoints(tmp_path)
    db = str(tmp_path / "history.sqlite3")
    bp = start_broker_process("--rate", "0", endpoints=eps, db=db, preexec_fn=_limit_file_size(150_000))
    try:
        with Client("alice", endpoints=eps) as alice:
            for n in range(300):
                alice.say(f"line {n} " + "x" * 200)
            stuck = time.monotonic() + 3
            while time.monotonic() < stuck:
                alice.poll(0.1)
                with Client(None, endpoints=eps, context=alice.context) as reader:
                    stored = stored_messages(reader)
                # Whatever alice was told is confirmed, history has.
                confirmed = 300 - len(alice.pending)
                assert confirmed <= len(stored) + 1  # (+1: one may be confirmed between the two looks)
            assert alice.pending, "the disk never filled"
            assert not alice.failed
            resource.prlimit(bp.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            alice.wait_sent(30)
        with Client(None, endpoints=eps, since=0) as reader:
            history = room_events_until(reader, lambda e: e.text.startswith("line 299 "), 10)
        assert [e.text.split()[1] for e in history if e.kind == "message"] == [str(n) for n in range(300)]
        assert_gapless(history)
        assert "could not store a batch" in "".join(bp.log)
    finally:
        bp.stop()


def test_say_exits_1_naming_how_many_lines_a_dead_disk_never_took(tmp_path: Path) -> None:
    eps = ipc_endpoints(tmp_path)
    bp = start_broker_process(
        "--rate", "0", endpoints=eps, db=str(tmp_path / "h.db"), preexec_fn=_limit_file_size(150_000)
    )
    try:
        cmd = [*ZCHAT, "say", "--nick", "ci", "--ingest", eps.ingest, "--feed", eps.feed, "--rpc", eps.rpc]
        lines = "".join(f"line {n} {'x' * 1000}\n" for n in range(400))
        done = subprocess.run(
            [*cmd, "--send-timeout", "3"], input=lines, capture_output=True, text=True, env=child_env(), timeout=60
        )
        assert done.returncode == 1
        (error,) = done.stderr.splitlines()
        assert "line(s) not sent" in error and "of 400" in error
        missing = int(error.split("Error: ")[1].split()[0])
        with Client(None, endpoints=eps) as reader:
            stored = stored_messages(reader)
        assert len(stored) == 400 - missing  # exactly the ones said to be sent
    finally:
        bp.stop()


def test_a_second_broker_on_the_same_store_is_refused_and_the_first_keeps_serving(tmp_path: Path) -> None:
    db = str(tmp_path / "history.sqlite3")
    first = start_broker_process(db=db)
    try:
        e = LOOPBACK_ANY
        second = subprocess.run(
            [*ZCHAT, "broker", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc, "--db", db],
            capture_output=True, text=True, env=child_env(), timeout=20,
        )  # fmt: skip
        assert second.returncode == 1
        (line,) = second.stderr.splitlines()
        holder = f"in use by another broker (pid {first.proc.pid}); one store, one broker"
        assert line == f"Error: the history store {db} is {holder}"
        with Client("alice", endpoints=first.endpoints) as alice:
            alice.say("still here")
            alice.wait_sent(5)
    finally:
        assert first.stop() == 0


def test_a_stalled_broker_expires_no_session(tmp_path: Path) -> None:
    eps = ipc_endpoints(tmp_path)
    bp = start_broker_process(endpoints=eps, db=str(tmp_path / "h.db"), heartbeat=0.5)  # a 1.5 s lease
    try:
        with Client("alice", endpoints=eps) as alice, Client("bob", endpoints=eps) as bob:
            wait_for(alice, lambda e: e.kind == "join" and e.nick == "bob")
            os.kill(bp.proc.pid, signal.SIGSTOP)  # two leases: the clients keep heartbeating
            try:
                stop = time.monotonic() + 3.0
                while time.monotonic() < stop:
                    alice.poll(0.1)
                    bob.poll(0.1)
            finally:
                os.kill(bp.proc.pid, signal.SIGCONT)
            bob.say("after the stall")
            seen = room_events_until(alice, lambda e: e.text == "after the stall", 10)
            assert not [e for e in seen if e.kind in ("join", "leave")]
            stats = alice.stats()
            assert stats["timeouts"] == 0 and int(str(stats["stalls"])) >= 1
    finally:
        bp.stop()


def test_a_blipped_connection_resumes_the_same_session_silently(tmp_path: Path) -> None:
    eps = ipc_endpoints(tmp_path)
    bp = start_broker_process(endpoints=eps, db=str(tmp_path / "h.db"), heartbeat=2.0)
    try:
        with Client("alice", endpoints=eps, dead_after=0.5) as alice, Client("bob", endpoints=eps) as bob:
            wait_for(alice, lambda e: e.kind == "join" and e.nick == "bob")
            token = alice.session.token
            alice.links.reopen_rpc()  # a socket of its own that blips: what was in flight is gone...
            os.kill(bp.proc.pid, signal.SIGSTOP)  # ...and no answer for a while: alice gives up on it
            try:
                seen = room_events_until(alice, lambda e: e.code == "disconnected", 10)
            finally:
                os.kill(bp.proc.pid, signal.SIGCONT)
            seen += room_events_until(alice, lambda e: e.code == "reconnected", 10)
            assert alice.session.token == token  # the same session, resumed
            bob.say("hello again")
            seen += room_events_until(alice, lambda e: e.text == "hello again", 10)
            assert not [e for e in seen if e.kind in ("join", "leave")]
            assert int(str(alice.stats()["resumed"])) >= 1
    finally:
        bp.stop()


def test_after_a_history_reset_only_the_new_history_is_delivered_gapless(tmp_path: Path) -> None:
    eps = ipc_endpoints(tmp_path)
    old = start_broker_process(endpoints=eps, db=str(tmp_path / "old.db"))
    new = None
    try:
        with Client("reader", endpoints=eps, backlog=50) as reader:
            with Client("talker", endpoints=eps) as talker:
                for n in range(1, 7):
                    talker.say(f"OLD-{n}")
                talker.wait_sent(5)
            room_events_until(reader, lambda e: e.text == "OLD-6")
            old.proc.kill()
            old.stop()
            new = start_broker_process(endpoints=eps, db=str(tmp_path / "new.db"))  # another history
            with Client("talker", endpoints=eps) as talker:
                for n in range(1, 8):
                    talker.say(f"new-{n}")
                talker.wait_sent(10)
            seen = room_events_until(reader, lambda e: e.text == "new-7", 20)
        reset = next(i for i, e in enumerate(seen) if e.code == "gap" and "reset" in e.text)
        after = [e for e in seen[reset + 1 :] if e.room == "general"]
        assert [e.text for e in after if e.kind == "message"] == [f"new-{n}" for n in range(1, 8)]
        assert not any(e.text.startswith("OLD") for e in after)
        assert_gapless(after)
    finally:
        old.stop()
        if new is not None:
            new.stop()


@pytest.mark.parametrize(("lines", "rate"), [(100, None), (3000, "500")])
def test_say_paces_a_pipe_and_delivers_every_line_once_in_order(tmp_path: Path, lines: int, rate: str | None) -> None:
    eps = ipc_endpoints(tmp_path)
    # A real lease (6 s): the test is about pacing, not about a loaded machine missing 0.9 s ones.
    rate_options = ["--rate", rate] if rate else []
    bp = start_broker_process(*rate_options, endpoints=eps, db=str(tmp_path / "h.db"), heartbeat=2.0)
    try:
        cmd = [*ZCHAT, "say", "--nick", "ci", "--ingest", eps.ingest, "--feed", eps.feed, "--rpc", eps.rpc]
        text = "".join(f"{n}\n" for n in range(1, lines + 1))
        done = subprocess.run(cmd, input=text, capture_output=True, text=True, env=child_env(), timeout=120)
        assert (done.returncode, done.stderr) == (0, "")
        with Client(None, endpoints=eps, since=0) as reader:
            got = room_events_until(reader, lambda e: e.kind == "leave" and e.reason == "quit", 20)
        assert [e.text for e in got if e.kind == "message"] == [str(n) for n in range(1, lines + 1)]
        stats = subprocess.run(
            [*ZCHAT, "stats", "--json", "--ingest", eps.ingest, "--feed", eps.feed, "--rpc", eps.rpc],
            capture_output=True, text=True, env=child_env(), timeout=20,
        )  # fmt: skip
        assert json.loads(stats.stdout)["rate_limited"] <= 2  # paced, not refused
    finally:
        bp.stop()
