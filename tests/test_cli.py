"""The `zchat` command line as users and shell pipelines run it: real processes, real broker."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ZCHAT,
    BrokerProcess,
    ClientFactory,
    Lines,
    ThreadBroker,
    child_env,
    collect,
    free_base_port,
    start_broker_process,
    wait_for,
)

from zchat import keys
from zchat.client.shell import Client


@pytest.fixture
def tail(broker: ThreadBroker) -> Iterator[tuple[subprocess.Popen[str], Lines[str]]]:
    e = broker.endpoints
    cmd = [*ZCHAT, "tail", "--json", "--room", "general", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env()) as proc:
        try:
            yield proc, Lines(proc)
        finally:
            proc.kill()


def test_tail_json_prints_event_objects(tail: tuple[subprocess.Popen[str], Lines[str]], connect: ClientFactory) -> None:
    _, lines = tail
    warm = connect("warmup")
    json.loads(lines.prompted(lambda: warm.say("warming up")))  # from then on tail is surely subscribed
    alice = connect("alice")
    alice.say('hi "there"\nsecond line')
    alice.me("waves")
    events: list[dict[str, object]] = []
    while not events or events[-1].get("kind") != "action":
        events.append(json.loads(lines.get()))
    message = next(e for e in events if e.get("kind") == "message" and e["nick"] == "alice")
    assert message["text"] == 'hi "there"\nsecond line'
    assert message["room"] == "general"
    assert isinstance(message["seq"], int) and message["seq"] > 0
    assert isinstance(message["ts"], str)
    assert time.strptime(message["ts"][:19], "%Y-%m-%dT%H:%M:%S") and message["ts"].endswith("Z")
    assert len(message["ts"]) == len("2026-11-21T10:00:00.123Z")
    assert events[-1]["text"] == "waves" and events[-1]["nick"] == "alice"
    joins = [e for e in events if e.get("kind") == "join"]
    assert joins and joins[-1]["text"] == "alice joined"


def test_say_pipes_30_lines_in_order_with_consecutive_seq(broker: ThreadBroker, connect: ClientFactory) -> None:
    observer = connect("observer")
    e = broker.endpoints
    text = "".join(f"line {n}\n" for n in range(1, 31))
    cmd = [*ZCHAT, "say", "--nick", "bob", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    done = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=30, env=child_env())
    assert done.returncode == 0, done.stderr
    got = collect(observer, 30, lambda ev: ev.kind == "message" and ev.nick == "bob")
    assert [ev.text for ev in got] == [f"line {n}" for n in range(1, 31)]
    assert [ev.seq for ev in got] == list(range(got[0].seq, got[0].seq + 30))
    assert wait_for(observer, lambda ev: ev.kind == "leave").text == "bob left (quit)"


def test_say_text_argument_and_env_vars(broker: ThreadBroker, connect: ClientFactory) -> None:
    observer = connect("observer", ["dev"])
    e = broker.endpoints
    env = {**child_env(), "ZCHAT_NICK": "envbot", "ZCHAT_INGEST": e.ingest, "ZCHAT_FEED": e.feed, "ZCHAT_RPC": e.rpc}
    done = subprocess.run(
        [*ZCHAT, "say", "--room", "#Dev", "deploy done"], capture_output=True, text=True, timeout=30, env=env
    )
    assert done.returncode == 0, done.stderr
    got = wait_for(observer, lambda ev: ev.kind == "message")
    assert (got.nick, got.text, got.room) == ("envbot", "deploy done", "dev")


def test_say_refused_line_exits_1_with_one_line(broker: ThreadBroker) -> None:
    e = broker.endpoints
    cmd = [*ZCHAT, "say", "--nick", "bob", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    done = subprocess.run(
        cmd, input="ok\n" + "x" * 5000 + "\n", capture_output=True, text=True, timeout=30, env=child_env()
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "line 2 not sent: message too long" in done.stderr


def test_invalid_nick_is_a_usage_level_error(broker: ThreadBroker) -> None:
    e = broker.endpoints
    done = subprocess.run(
        [*ZCHAT, "say", "--nick", "bad nick!", "--rpc", e.rpc, "hi"],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: invalid nick 'bad nick!': 1-24 characters: a letter, then letters, digits, '_' or '-'"
    ]


def test_duplicate_nick_refused_by_cli(broker: ThreadBroker, connect: ClientFactory) -> None:
    connect("alice")
    e = broker.endpoints
    cmd = [*ZCHAT, "say", "--nick", "ALICE", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc, "hi"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=child_env())
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: nick 'ALICE' is in use by a live session"


def search(broker: ThreadBroker, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = broker.endpoints
    cmd = [*ZCHAT, "search", *args, "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={**child_env(), **(env or {})})


def test_search_prints_the_newest_matches_oldest_first_as_lines_or_json(
    broker: ThreadBroker, connect: ClientFactory
) -> None:
    alice = connect("alice", ["general", "dev"])
    for text in ["deploy at noon", "lunch", "Deploy done, at last", "redeploy", "deploy again"]:
        alice.say(text)
    alice.me("ships the deploy", room="dev")
    alice.wait_sent()
    done = search(broker, "deploy")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" alice: ")[1] for line in lines] == ["deploy at noon", "Deploy done, at last", "deploy again"]
    seqs = [int(line.split()[0].removeprefix("#")) for line in lines]
    assert seqs == sorted(seqs) and all(re.fullmatch(r"#\d+ \d{4}-\d\d-\d\d \d\d:\d\d alice: .*", x) for x in lines)

    done = search(broker, "DEPLOY", "at", "--json", "--limit", "1")  # every word; the newest match
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["seq"], e["kind"], e["nick"], e["text"]) for e in events] == [
        (seqs[1], "message", "alice", "Deploy done, at last")
    ]
    done = search(broker, "deploy", "--before", str(seqs[1]), "--json")  # the next page
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == ["deploy at noon"]
    done = search(broker, "deploy", env={"ZCHAT_SEARCH_ROOM": "#Dev"})  # options from the environment too
    assert done.stdout.strip().endswith("* alice ships the deploy") and done.stdout.count("\n") == 1
    done = search(broker, "nothing-like-it")
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr == "zchat search: no message in #general holds all of: nothing-like-it\n"


@pytest.mark.parametrize(
    ("args", "status", "error"),
    [
        (["   "], 1, "Error: nothing to search for"),
        (["x" * 201], 1, "Error: search text too long (201 characters; limit 200)"),
        (["deploy", "--room", "No Room"], 1, "Error: invalid room 'no room'"),
        (["deploy", "--limit", "101"], 2, "Error: Invalid value for '--limit'"),
        ([], 2, "Error: Missing argument 'WORDS...'"),
    ],
)
def test_search_mistakes_are_one_line(broker: ThreadBroker, args: list[str], status: int, error: str) -> None:
    done = search(broker, *args)
    assert done.returncode == status and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith(error), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command", [["say", "--nick", "bob", "hi"], ["tail"], ["tail", "--json"], ["search", "deploy"]]
)
def test_no_broker_exits_1_fast_with_one_line(command: list[str]) -> None:
    start = time.monotonic()
    done = subprocess.run(
        [*ZCHAT, *command, "--port", str(free_base_port())], capture_output=True, text=True, timeout=30, env=child_env()
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach the zchat broker at tcp://127.0.0.1:")
    assert done.stdout == ""
    assert elapsed < 5


@pytest.mark.parametrize("value", ["foo:bar", "[::1]:99999", "localhost:0"])
def test_a_bad_broker_address_is_one_line_naming_it(value: str) -> None:
    """Not "cannot reach the broker at tcp://[::1]:100000": the address itself is wrong."""
    done = subprocess.run(
        [*ZCHAT, "say", "--nick", "bob", "--broker", value, "hi"],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [f"Error: --broker {value!r}: expected HOST[:PORT], PORT 1-65533"]


@pytest.mark.parametrize("option", ["--ingest", "--feed", "--rpc"])
def test_a_bad_endpoint_is_one_line_naming_it_and_does_not_hang(option: str) -> None:
    """A feed that failed to connect once left its socket open, and closing the client hung."""
    done = subprocess.run(
        [*ZCHAT, "stats", option, "bogus"], capture_output=True, text=True, timeout=30, env=child_env()
    )
    assert (done.returncode, done.stdout) == (1, "")
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: cannot connect to bogus: Invalid argument"), line


def test_broker_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*ZCHAT, "broker", "--port", str(port)], capture_output=True, text=True, timeout=30, env=child_env()
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: cannot bind tcp://127.0.0.1:{port}")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_notice_reaches_clients_and_broker_exits_0(sig: signal.Signals) -> None:
    bp = start_broker_process()
    try:
        with Client("alice", ["general", "dev"], endpoints=bp.endpoints) as alice:
            start = time.monotonic()
            bp.proc.send_signal(sig)
            (notice,) = collect(alice, 1, lambda ev: ev.kind == "system" and ev.reason == "shutdown")
            assert (notice.seq, notice.nick, notice.text) == (0, "*", "the broker is shutting down")
            assert bp.proc.wait(timeout=5) == 0
            assert time.monotonic() - start < 2
    finally:
        bp.stop()


def test_killed_client_times_out_and_frees_its_nick(broker: ThreadBroker, connect: ClientFactory) -> None:
    observer = connect("observer")
    e = broker.endpoints
    cmd = [*ZCHAT, "join", "--nick", "victim", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env()
    ) as victim:
        try:
            wait_for(observer, lambda ev: ev.kind == "join" and ev.nick == "victim")
            victim.kill()  # SIGKILL: no leave is ever sent
            left = wait_for(observer, lambda ev: ev.kind == "leave" and ev.nick == "victim")
            assert left.text == "victim left (timed out)" and left.reason == "timed out"
        finally:
            victim.kill()
    assert "victim" not in observer.who()
    again = connect("victim")
    assert again.state == "connected"


def test_python_dash_m_and_help() -> None:
    for command in ([], ["broker"], ["join"], ["tail"], ["say"]):
        done = subprocess.run([*ZCHAT, *command, "--help"], capture_output=True, text=True, timeout=30, env=child_env())
        assert done.returncode == 0 and "Usage: zchat" in done.stdout


# --- keys a client finds by default ---------------------------------------------------------------


def test_the_brokers_own_key_pair_is_no_clients_default_server_key(
    broker: ThreadBroker, connect: ClientFactory, tmp_path: Path
) -> None:
    """The README's first secure-mode step, then an open broker: clients must not use that key."""
    observer = connect("observer")
    env = {**child_env(), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    made = subprocess.run([*ZCHAT, "keygen", "--name", "server"], capture_output=True, text=True, env=env, timeout=30)
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[0].removeprefix("public key: ")
    assert f"clients pass it as: --server-key '{key}'" in made.stdout  # quoted: z85 has ! and $
    e = broker.endpoints
    cmd = [*ZCHAT, "say", "--nick", "bob", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc, "hi"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert wait_for(observer, lambda ev: ev.kind == "message").text == "hi"


@pytest.mark.parametrize("with_client_key", [False, True])
def test_a_default_server_key_that_fails_names_its_file(
    broker: ThreadBroker, tmp_path: Path, with_client_key: bool
) -> None:
    """A broker's public key copied to ~/.config/zchat/server.key, used against an open broker."""
    config = tmp_path / "config"
    env = {**child_env(), "XDG_CONFIG_HOME": str(config)}
    keys.keygen("elsewhere", tmp_path)  # some broker's pair...
    (config / "zchat").mkdir(parents=True)
    default = config / "zchat" / "server.key"
    shutil.copy(tmp_path / "elsewhere.key", default)  # ...whose public key this user was given
    if with_client_key:
        keys.keygen("id", config / "zchat")
    e = broker.endpoints
    cmd = [*ZCHAT, "say", "--nick", "bob", "--timeout", "1", "--ingest", e.ingest, "--feed", e.feed, "--rpc", e.rpc]
    done = subprocess.run([*cmd, "hi"], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith(f"(the broker's key was read from {default}: no --server-key was given)"), line


# --- what tail --json prints ----------------------------------------------------------------------


def test_tail_json_marks_the_events_the_client_makes_up(broker_proc: BrokerProcess) -> None:
    cmd = [*ZCHAT, "tail", "--json", *broker_proc.args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env()) as tail:
        try:
            lines = Lines(tail)
            with Client("alice", ["general"], endpoints=broker_proc.endpoints) as alice:
                # Until tail is surely subscribed:
                line = lines.prompted(lambda: alice.say("hi"), lambda line: json.loads(line).get("nick") == "alice")
                published = json.loads(line)
            broker_proc.proc.terminate()  # tail notices the broker is gone, and says so
            events = [json.loads(line) for line in lines.until("reconnecting", timeout=10)]
        finally:
            tail.kill()
    assert "local" not in published
    assert [e["text"] for e in events if "local" in e] == ["connection lost — reconnecting…"]
    assert all(e["local"] is True for e in events if "local" in e)
    assert any(e["text"] == "the broker is shutting down" and "local" not in e for e in events)
