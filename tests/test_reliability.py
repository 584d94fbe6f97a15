"""Nothing lost: late joiners, gap repair, broker kill -9 and restart, confirmed sends.

Real broker processes (ipc:// in the test's temp dir, so a restarted broker has the same
address) and real clients. Every wait ends on a condition and has a deadline.
"""

from __future__ import annotations

import json
import os
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
    ZCHAT,
    ClientFactory,
    Lines,
    ThreadBroker,
    child_env,
    start_broker_process,
    wait_for,
)

from zchat.client.shell import Client
from zchat.protocol import Endpoints, Event


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
        with Client(None, endpoints=b.endpoints, context=ctx, since=0) as reader:
            first = reader.recv(5)
            assert first is not None and first.code == "gap"
            assert first.text.startswith("… ") and "older messages not available" in first.text
            rest = room_events_until(reader, lambda e: e.kind == "leave" and e.nick == "talker", 10)
        assert len(rest) == 10
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
            assert any(e.code == "reconnected" for e in seen)
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
