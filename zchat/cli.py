"""The ``zchat`` command line: one click group with ``broker``, ``join``, ``tail`` and ``say``.

This module owns option parsing, environment variables (``ZCHAT_*``), logging setup and turning
every expected failure into one clear line and a non-zero exit (click's ClickException, exit 1;
UsageError, exit 2). It wires the broker, the client and the terminal together and holds no chat
logic of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
import zmq

from zchat import protocol as p
from zchat import render
from zchat.broker import FEED_HWM, Broker
from zchat.client import Client
from zchat.errors import LocalProtocolError, ZChatError
from zchat.store import DEFAULT_HISTORY_LIMIT, Store
from zchat.terminal import run

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = ["debug", "info", "warning", "error"]
DEFAULT_DB = os.path.join(click.get_app_dir("zchat"), "history.sqlite3")

log = logging.getLogger("zchat.broker")


def endpoint_options(f: F) -> F:
    """The options every command shares to find the broker (also read from ``ZCHAT_*``)."""
    options = [
        click.option(
            "--host",
            envvar="ZCHAT_HOST",
            default=p.DEFAULT_HOST,
            show_default=True,
            help="Broker address (the broker binds it; clients connect to it).",
        ),
        click.option(
            "--port",
            envvar="ZCHAT_PORT",
            type=click.IntRange(1, 65533),
            default=p.DEFAULT_PORT,
            show_default=True,
            help="Base port: ingest on PORT, feed on PORT+1, rpc on PORT+2.",
        ),
        click.option(
            "--ingest",
            envvar="ZCHAT_INGEST",
            metavar="ENDPOINT",
            help="Full ingest (PULL) endpoint, e.g. ipc:///run/zchat/in; overrides --host/--port.",
        ),
        click.option(
            "--feed",
            envvar="ZCHAT_FEED",
            metavar="ENDPOINT",
            help="Full feed (XPUB) endpoint; overrides --host/--port.",
        ),
        click.option(
            "--rpc", envvar="ZCHAT_RPC", metavar="ENDPOINT", help="Full rpc (ROUTER) endpoint; overrides --host/--port."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def client_options(f: F) -> F:
    f = click.option(
        "--timeout",
        envvar="ZCHAT_TIMEOUT",
        type=click.FloatRange(0.1, 60),
        default=3.0,
        show_default=True,
        help="Seconds to wait for the broker before giving up.",
    )(f)
    return endpoint_options(f)


def _endpoints(kw: dict[str, Any]) -> p.Endpoints:
    return p.Endpoints.from_host_port(
        kw.pop("host"), kw.pop("port"), ingest=kw.pop("ingest"), feed=kw.pop("feed"), rpc=kw.pop("rpc")
    )


@contextlib.contextmanager
def _clear_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit 1, never a traceback."""
    try:
        yield
    except ZChatError as exc:
        raise click.ClickException(str(exc)) from None
    except zmq.ZMQError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"auto_envvar_prefix": "ZCHAT", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zchat")
def cli() -> None:
    """zchat: multi-user chat over ZeroMQ.

    Start a broker with `zchat broker`, then `zchat join --nick alice` in another terminal.
    """


@cli.command("broker")
@endpoint_options
@click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    metavar="PATH",
    help="SQLite file for history and dedupe (WAL mode); ':memory:' for a throwaway broker.",
)
@click.option(
    "--history-limit",
    type=click.IntRange(1),
    default=DEFAULT_HISTORY_LIMIT,
    show_default=True,
    help="Events kept per room; older ones are deleted.",
)
@click.option(
    "--feed-hwm",
    type=click.IntRange(1),
    default=FEED_HWM,
    show_default=True,
    help="Messages queued per subscriber before that subscriber starts losing them (it repairs from history).",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(0.05, 60),
    default=2.0,
    show_default=True,
    help="Seconds between client heartbeats; a session lapses after 3 missed ones.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Logging threshold (logs go to stderr).",
)
def broker_cmd(db: str, history_limit: int, feed_hwm: int, heartbeat: float, log_level: str, **kw: Any) -> None:
    """Run a broker: bind the ingest, feed and rpc sockets and serve until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with _clear_errors():
        try:
            store = Store(db, history_limit=history_limit)
        except (OSError, sqlite3.Error) as exc:
            raise ZChatError(f"cannot open the history store {db}: {exc}") from None
        try:
            with Broker(_endpoints(kw), heartbeat_interval=heartbeat, store=store, feed_hwm=feed_hwm) as broker:
                log.info("history: %s (keeping %d events a room); epoch %s", db, history_limit, broker.core.epoch)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, lambda *_: broker.stop())
                broker.run()
        finally:
            store.close()


@cli.command("join")
@click.option("--nick", envvar="ZCHAT_NICK", required=True, help=f"Your nick ({p.NICK_RULE}).")
@click.option(
    "--room",
    "rooms",
    multiple=True,
    default=[p.DEFAULT_ROOM],
    show_default=True,
    help="Room to join (repeat for several); the first is the current room.",
)
@click.option("--plain", is_flag=True, help="Plain line mode even on a terminal (the default without one).")
@click.option(
    "--backlog",
    type=click.IntRange(0, p.MAX_HISTORY),
    default=50,
    show_default=True,
    help="Earlier messages to show from each room's history on joining.",
)
@client_options
def join_cmd(nick: str, rooms: tuple[str, ...], plain: bool, backlog: int, timeout: float, **kw: Any) -> None:
    """Chat interactively. Type a line to send it; /help lists the commands."""
    with _clear_errors():
        client = Client(nick, rooms, endpoints=_endpoints(kw), timeout=timeout, backlog=backlog).connect()
        run(client, plain=plain or not (sys.stdin.isatty() and sys.stdout.isatty()))


@cli.command("tail")
@click.option(
    "--room",
    "rooms",
    multiple=True,
    default=[p.DEFAULT_ROOM],
    show_default=True,
    help="Room to follow (repeat for several).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line (JSON Lines), exactly as published.")
@click.option(
    "--backlog",
    type=click.IntRange(0, p.MAX_HISTORY),
    default=0,
    show_default=True,
    help="Earlier events to print from each room's history first.",
)
@click.option("--since", type=click.IntRange(0), metavar="SEQ", help="Print every stored event after SEQ first.")
@client_options
def tail_cmd(rooms: tuple[str, ...], as_json: bool, backlog: int, since: int | None, timeout: float, **kw: Any) -> None:
    """Print rooms' events as they happen, in order and without gaps, until interrupted."""
    with _clear_errors():
        reader = Client(None, rooms, endpoints=_endpoints(kw), timeout=timeout, backlog=backlog, since=since)
        reader.connect()
        show_room = len(reader.rooms) > 1
        try:
            while True:
                for event in reader.poll(1.0):
                    _echo(p.encode(event).decode() if as_json else render.format_event(event, show_room=show_room))
        except KeyboardInterrupt:
            pass
        finally:
            reader.close()


def _echo(line: str) -> None:
    try:
        click.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`zchat tail | head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


@cli.command("say")
@click.option("--nick", envvar="ZCHAT_NICK", required=True, help=f"Nick to speak as ({p.NICK_RULE}).")
@click.option("--room", default=p.DEFAULT_ROOM, show_default=True, help="Room to speak in.")
@click.argument("text", required=False)
@client_options
def say_cmd(nick: str, room: str, text: str | None, timeout: float, **kw: Any) -> None:
    """Send TEXT, or each line of stdin in order, then leave.

    Exits 0 only when the broker has accepted and published every line.
    """
    with _clear_errors():
        client = Client(nick, [room], endpoints=_endpoints(kw), timeout=timeout).connect()
        try:
            lines = [text] if text is not None else _stdin_lines(client)
            refused = 0
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    client.say(line)
                except LocalProtocolError as exc:
                    refused += 1
                    click.echo(f"zchat say: line {n} not sent: {exc}", err=True)
            # Long enough to ride out a broker restart: the client resends after reconnecting.
            client.wait_sent(client.send_timeout + timeout)
            if refused:
                raise ZChatError(f"{refused} line(s) not sent")
        finally:
            client.close()


def _stdin_lines(client: Client) -> Iterator[str]:
    """Lines of stdin as they come, keeping the session alive while stdin is quiet."""
    fd = sys.stdin.fileno()
    buffer = b""
    while True:
        readable, _, _ = select.select([fd], [], [], 0)
        if not readable:
            client.poll(1.0, also=[fd])
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").removesuffix("\r")
    if buffer:
        yield buffer.decode("utf-8", "replace").removesuffix("\r")


def main() -> None:
    cli(prog_name="zchat")
