"""The ``zchat`` command line: one click group with ``broker``, ``join``, ``tail``, ``say``, ``search``
and the tools around them (``stats``, ``relay``, ``keygen``, ``store copy``).

This module owns option parsing, environment variables (``ZCHAT_*``), logging setup and turning
every expected failure into one clear line and a non-zero exit (click's ClickException, exit 1;
UsageError, exit 2; an interrupt, 130). It wires the broker, the client and the terminal
together and holds no chat logic of its own. Loading it takes a while (pyzmq, prompt_toolkit):
:mod:`zchat.__main__`, the entry point, keeps Ctrl-C quiet until it is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import zmq

from zchat import keys
from zchat import protocol as p
from zchat.__main__ import INTERRUPTED
from zchat.broker.config import DEFAULT_DB, FEED_HWM, BrokerConfig
from zchat.broker.identity import load_allowlist
from zchat.broker.ratelimit import DEFAULT_BURST, DEFAULT_RATE
from zchat.broker.relay import Relay
from zchat.broker.shell import Broker
from zchat.broker.store import DEFAULT_HISTORY_LIMIT, is_postgres, open_store
from zchat.broker.storecopy import copy_store
from zchat.client.shell import Client
from zchat.errors import LocalProtocolError, Refused, Unreachable, ZChatError
from zchat.keys import CONFIG_DIR
from zchat.term import render
from zchat.term.plain import run

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = ["debug", "info", "warning", "error"]
#: A broker's public key placed here is used when no --server-key is given, unless its secret
#: key lies beside it (see :func:`_default_server_key`).
DEFAULT_SERVER_PUBLIC = CONFIG_DIR / "server.key"
#: A client's secret key file when no --key is given.
DEFAULT_CLIENT_KEY = CONFIG_DIR / "id.key_secret"
#: The highest base port: feed and rpc are on the next two.
MAX_BASE_PORT = 65533

log = logging.getLogger("zchat.broker")


log_level_option = click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Logging threshold (logs go to stderr).",
)


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
            type=click.IntRange(1, MAX_BASE_PORT),
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
        "--broker",
        "brokers",
        multiple=True,
        envvar="ZCHAT_BROKERS",
        metavar="HOST[:PORT]",
        help="A broker of the chat, instead of --host/--port: repeat it (or give a,b) for an active/standby"
        " pair; the client moves to the next one when it loses one or is told it is the standby.",
    )(f)
    f = click.option(
        "--server-key",
        envvar="ZCHAT_SERVER_KEY",
        metavar="KEY|FILE",
        help=f"The broker's public key (z85, or a key file) for a secure broker; default: {DEFAULT_SERVER_PUBLIC}"
        " if it exists (and is not a broker's own pair: no server.key_secret beside it).",
    )(f)
    f = click.option(
        "--key",
        "key_file",
        envvar="ZCHAT_KEY",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_CLIENT_KEY,
        show_default=True,
        help="Your secret key file (from 'zchat keygen'), used with a secure broker.",
    )(f)
    f = click.option(
        "--timeout",
        envvar="ZCHAT_TIMEOUT",
        type=click.FloatRange(0.1, 60),
        default=3.0,
        show_default=True,
        help="Seconds to wait for the broker before giving up.",
    )(f)
    return endpoint_options(f)


def _default_server_key() -> Path | None:
    """The broker's public key file a client uses when no --server-key is given, if any.

    ``zchat keygen --name server`` writes the broker's own pair to the same place: with its
    secret beside it, the file is this account's broker key, not a key a client was handed,
    and taking it would make every client fail against an open broker.
    """
    secret = DEFAULT_SERVER_PUBLIC.with_name(DEFAULT_SERVER_PUBLIC.name + "_secret")
    return DEFAULT_SERVER_PUBLIC if DEFAULT_SERVER_PUBLIC.exists() and not secret.exists() else None


def _connected(nick: str | None, rooms: Iterable[str], kw: dict[str, Any], **options: Any) -> Client:
    """A client as the shared options describe it (endpoints, timeout, CURVE keys), connected.

    A failure to connect names the key files that no option asked for, if it used any.
    """
    server_key, key_file = kw.pop("server_key"), kw.pop("key_file")
    default_server = _default_server_key() if server_key is None else None
    note = f"the broker's key was read from {default_server}: no --server-key was given"
    try:
        curve = keys.client_curve(str(default_server) if default_server else server_key, key_file)
    except ZChatError as exc:
        if default_server is not None:
            raise ZChatError(f"{exc} ({note})") from None
        raise
    brokers = [b for value in kw.pop("brokers") for b in value.split(",") if b.strip()]
    if brokers and any(kw[name] for name in ("ingest", "feed", "rpc")):
        raise click.UsageError("give --broker, or --ingest/--feed/--rpc, not both")
    first, *failover = [_broker(b, "--broker") for b in brokers] or [_endpoints(kw)]
    client = Client(nick, rooms, endpoints=first, failover=failover, timeout=kw.pop("timeout"), curve=curve, **options)
    try:
        return client.connect()
    except Refused as exc:
        if exc.code == "key_refused" and key_file == DEFAULT_CLIENT_KEY:
            raise Refused(exc.code, f"{exc} (the key is from {key_file}: no --key was given)") from None
        raise
    except Unreachable as exc:
        if default_server is not None:
            raise Unreachable(f"{exc} ({note})") from None
        raise


def _endpoints(kw: dict[str, Any]) -> p.Endpoints:
    return p.Endpoints.from_host_port(
        kw.pop("host"), kw.pop("port"), ingest=kw.pop("ingest"), feed=kw.pop("feed"), rpc=kw.pop("rpc")
    )


@contextlib.contextmanager
def _clear_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit 1, never a traceback."""
    try:
        yield
    except (ZChatError, zmq.ZMQError) as exc:
        raise click.ClickException(render.inert(str(exc))) from None


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
    metavar="PATH|URL",
    help="Where history, sessions and dedupe live: a SQLite file (WAL mode), ':memory:' for a throwaway"
    " broker, or a PostgreSQL database as postgresql://USER@HOST[:PORT]/DBNAME (needs zchat[postgres];"
    " give the password in ~/.pgpass or PGPASSWORD rather than here, where ps shows it).",
)
@click.option(
    "--no-store",
    is_flag=True,
    help="Keep no history at all: no backlog, no gap repair, no dedupe across restarts (benchmarks, demos).",
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
@log_level_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or as one JSON object per line (for log collectors).",
)
@click.option("--secure", is_flag=True, help="Require CURVE (encryption and client keys) on all three sockets.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=CONFIG_DIR / "server.key_secret",
    show_default=True,
    help="With --secure: the broker's secret key file ('zchat keygen --name server').",
)
@click.option(
    "--allow",
    "allow_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --secure: allowlist file, one '<client public key> <nick>' per line.",
)
@click.option(
    "--open-registration",
    is_flag=True,
    help="With --secure: any key may connect, and the first key to use a nick owns it.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow binding a non-loopback address without --secure (anyone there can read and post).",
)
@click.option(
    "--metrics",
    metavar="[HOST:]PORT",
    help="Serve Prometheus metrics over HTTP at HOST:PORT/metrics (HOST defaults to 127.0.0.1; needs"
    " zchat[metrics]). A non-loopback HOST needs --secure or --insecure, like the broker's sockets.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=DEFAULT_RATE,
    show_default=True,
    help="Messages per second one sender may sustain; 0 turns rate limiting off.",
)
@click.option(
    "--burst",
    type=click.IntRange(1),
    default=DEFAULT_BURST,
    show_default=True,
    help="Messages one sender may send at once.",
)
@click.option(
    "--hello-rate",
    type=click.FloatRange(0.01),
    default=BrokerConfig.hello_rate,
    show_default=True,
    help="Hellos a second one address (open mode) or key (secure mode) may send.",
)
@click.option(
    "--hello-burst",
    type=click.IntRange(1),
    default=BrokerConfig.hello_burst,
    show_default=True,
    help="Hellos one address or key may send at once (a team behind one NAT after a restart).",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1),
    default=BrokerConfig.max_sessions,
    show_default=True,
    help="Sessions the broker holds at once.",
)
@click.option(
    "--max-sessions-per-address",
    "max_sessions_per_peer",
    type=click.IntRange(1),
    default=BrokerConfig.max_sessions_per_peer,
    show_default=True,
    help="Sessions one address may hold at once in open mode (one key holds at most 16 in secure mode).",
)
def broker_cmd(
    *,
    log_format: str,
    db: str,
    no_store: bool,
    history_limit: int,
    feed_hwm: int,
    heartbeat: float,
    log_level: str,
    secure: bool,
    key_file: Path,
    allow_file: Path | None,
    open_registration: bool,
    insecure: bool,
    metrics: str | None,
    rate: float,
    burst: int,
    hello_rate: float,
    hello_burst: int,
    max_sessions: int,
    max_sessions_per_peer: int,
    **kw: Any,
) -> None:
    """Run a broker: bind the ingest, feed and rpc sockets and serve until SIGINT/SIGTERM."""
    _setup_logging(log_level, log_format)
    with _clear_errors():
        endpoints = _endpoints(kw)
        exposed = [e for e in (endpoints.ingest, endpoints.feed, endpoints.rpc) if not keys.is_local(e)]
        if exposed and not secure and not insecure:
            raise ZChatError(
                f"refusing to bind {exposed[0]} without --secure: anyone who can reach it could read every"
                " message and post as anyone (see docs/security.md; --insecure if you really mean it)"
            )
        if (allow_file or open_registration) and not secure:
            raise ZChatError("--allow and --open-registration need --secure")
        if secure and not (allow_file or open_registration):
            raise ZChatError("--secure needs --allow FILE, --open-registration, or both: who may connect?")
        metrics_at = _metrics_address(metrics) if metrics is not None else None
        if metrics_at is not None and not _loopback(metrics_at[0]) and not secure and not insecure:
            raise ZChatError(
                f"refusing to serve metrics on {metrics}, beyond this machine, without --secure or --insecure"
                " (the endpoint is plain HTTP: numbers and ids, no messages, nicks or keys)"
            )
        curve = keys.load_keypair(key_file) if secure else None
        if curve is not None and not curve[1]:
            raise ZChatError(f"{key_file} holds no secret key: pass the .key_secret file")
        config = BrokerConfig(
            endpoints=endpoints,
            db=None if no_store else db,
            history_limit=history_limit,
            feed_hwm=feed_hwm,
            heartbeat=heartbeat,
            rate=rate,
            burst=burst,
            hello_rate=hello_rate,
            hello_burst=hello_burst,
            max_sessions=max_sessions,
            max_sessions_per_peer=max_sessions_per_peer,
            curve=curve,
            allowlist=load_allowlist(allow_file) if allow_file else {},
            open_registration=open_registration,
            metrics=metrics_at,
        )
        broker = Broker(config)
        # Before it binds: from the moment it says "listening", a signal stops it cleanly (one
        # that came before run() makes run() return at once, with the shutdown notice).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: broker.stop())
        with broker:
            if curve is not None:
                log.info("public key: %s (clients pass it as --server-key)", curve[0])
            store = broker.store
            where = "none (--no-store)" if store is None else f"{store.where} (keeping {history_limit} events a room)"
            log.info("history: %s; epoch %s", where, broker.core.epoch)
            broker.run()


def _metrics_address(value: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (an IPv6 HOST in brackets) as (host, port)."""
    host, sep, port = value.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ZChatError(f"--metrics {value!r}: expected [HOST:]PORT, e.g. 127.0.0.1:9464")
    return (host.strip("[]") if sep and host else "127.0.0.1"), int(port)


def _loopback(host: str) -> bool:
    return keys.is_local(f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0")


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
@click.option(
    "--plain", is_flag=True, help="Plain line mode even on a terminal (the default without one, or with TERM=dumb)."
)
@click.option(
    "--backlog",
    type=click.IntRange(0, p.MAX_HISTORY),
    default=50,
    show_default=True,
    help="Earlier messages to show from each room's history on joining.",
)
@click.option("--no-color", is_flag=True, help="No colour (also when NO_COLOR is set to anything).")
@click.option("--no-bell", is_flag=True, help="Do not ring the terminal bell when someone names you.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, writable=True, path_type=Path),
    help="Append each room's conversation to DIR/<room>.log (private messages: DIR/@<nick>.log).",
)
@click.option(
    "--timestamp-format",
    default=render.DEFAULT_TIME_FORMAT,
    show_default=True,
    metavar="STRFTIME",
    help="How times read, in local time: a strftime format ('%H:%M:%S' for seconds).",
)
@click.option(
    "--send-timeout",
    type=click.FloatRange(0.5),
    default=30.0,
    show_default=True,
    help="Seconds without a single confirmation from the broker before your unconfirmed messages show as not sent.",
)
@client_options
def join_cmd(
    *,
    nick: str,
    rooms: tuple[str, ...],
    plain: bool,
    backlog: int,
    no_color: bool,
    no_bell: bool,
    log_dir: Path | None,
    timestamp_format: str,
    send_timeout: float,
    **kw: Any,
) -> None:
    """Chat interactively. Type a line to send it; /help lists the commands."""
    with _clear_errors():
        if log_dir is not None:
            try:
                log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # transcripts hold private messages
            except OSError as exc:
                raise ZChatError(f"cannot use --log-dir {log_dir}: {exc.strerror or exc}") from None
        client = _connected(nick, rooms, kw, backlog=backlog, send_timeout=send_timeout)
        run(
            client,
            plain=plain or not (sys.stdin.isatty() and sys.stdout.isatty()) or os.environ.get("TERM") == "dumb",
            color=not (no_color or os.environ.get("NO_COLOR")),
            bell=not no_bell,
            log_dir=log_dir,
            time_format=timestamp_format,
        )


@cli.command("tail")
@click.option(
    "--room",
    "rooms",
    multiple=True,
    default=[p.DEFAULT_ROOM],
    show_default=True,
    help="Room to follow (repeat for several).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON event per line (JSON Lines), as published; events the client makes up itself carry "local": true.',
)
@click.option(
    "--backlog",
    type=click.IntRange(0, p.MAX_HISTORY),
    default=0,
    show_default=True,
    help="Earlier events to print from each room's history first.",
)
@click.option("--since", type=click.IntRange(0), metavar="SEQ", help="Print every stored event after SEQ first.")
@client_options
def tail_cmd(rooms: tuple[str, ...], as_json: bool, backlog: int, since: int | None, **kw: Any) -> None:
    """Print rooms' events as they happen, in order and without gaps, until interrupted."""
    with _clear_errors():
        reader = _connected(None, rooms, kw, backlog=backlog, since=since)
        show_room = len(reader.rooms) > 1
        try:
            while True:
                for event in reader.poll(1.0):
                    _echo(p.encode(event).decode() if as_json else render.format_event(event, show_room=show_room))
        finally:
            reader.close()


#: How ``zchat search`` shows times: matches come from any day.
SEARCH_TIME_FORMAT = "%Y-%m-%d %H:%M"


@cli.command("search")
@click.argument("words", nargs=-1, required=True)
@click.option(
    "--room", default=p.DEFAULT_ROOM, show_default=True, help="Room to search (any room: you need not be in it)."
)
@click.option(
    "--limit",
    type=click.IntRange(1, p.MAX_SEARCH),
    default=20,
    show_default=True,
    help="Most matches to print: the newest ones.",
)
@click.option(
    "--before",
    type=click.IntRange(1),
    metavar="SEQ",
    help="Only messages older than SEQ: the next page is --before the first seq printed.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON event per line (JSON Lines), as stored; otherwise lines as tail prints them, after their seq.",
)
@client_options
def search_cmd(words: tuple[str, ...], room: str, limit: int, before: int | None, as_json: bool, **kw: Any) -> None:
    """Print a room's stored messages and actions that hold every one of WORDS, oldest first.

    Words match whole, in any case (deploy finds "Deploy," but not "redeploy"); search syntax is
    not interpreted. Only what the broker still keeps (its --history-limit) can be found.
    """
    text = " ".join(words)
    with _clear_errors():
        reader = _connected(None, [], kw)
        try:
            found = reader.search(text, room=room, limit=limit, before=before)
        finally:
            reader.close()
    if not found:
        click.echo(
            render.inert(f"zchat search: no message in #{p.normalize_room(room)} holds all of: {text}"), err=True
        )
    for event in reversed(found):
        line = render.format_event(event, time_format=SEARCH_TIME_FORMAT)
        _echo(p.encode(event).decode() if as_json else f"#{event.seq} {line}")


class _JsonLogFormatter(logging.Formatter):
    """One JSON object per log record: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": p.format_ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return p.encode(entry).decode()


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the counters as one JSON object.")
@client_options
def stats_cmd(as_json: bool, **kw: Any) -> None:
    """Ask the broker for its counters: uptime, messages in and out, drops, sessions, rooms, store size."""
    with _clear_errors():
        reader = _connected(None, [], kw)
        try:
            reply = reader.stats()
        finally:
            reader.close()
    reply = {k: v for k, v in reply.items() if k not in ("type", "ok", "req")}
    if as_json:
        click.echo(p.encode(reply).decode())
        return
    width = max(map(len, reply))
    for name, value in reply.items():
        click.echo(f"{name:<{width}}  {value}")


def _echo(line: str) -> None:
    try:
        click.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`zchat tail | head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


@cli.group("store")
def store_group() -> None:
    """Look after a broker's history store (a SQLite file or a PostgreSQL database)."""


@store_group.command("copy")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="PATH|URL",
    help="The store to copy: a SQLite file or a postgresql:// URL, as the broker's --db. No broker may run on it.",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="PATH|URL",
    help="The store to copy into (its file or schema is made if need be). It must hold nothing, unless --force.",
)
@click.option(
    "--force",
    is_flag=True,
    help="If the target holds a history, empty it first (that history is lost): a copy never mixes two.",
)
def store_copy_cmd(source: str, target: str, force: bool) -> None:
    """Copy a broker's whole history to another store: SQLite to PostgreSQL, or back.

    Events (room, seq, presence, search text), sessions and tombstones, claims, topics, read
    marks and the history id move in batches; the copy is checked against the source and a
    summary printed. A broker started on the copy shows clients the same history, and every
    room's seq continues.
    """
    with _clear_errors():
        if source == target:
            raise ZChatError("--from and --to name the same store")
        if not is_postgres(source) and (source == ":memory:" or not Path(source).is_file()):
            raise ZChatError(f"--from {source}: no such file")
        with contextlib.closing(open_store(source)) as src, contextlib.closing(open_store(target)) as dst:
            report = copy_store(src, dst, force=force)
    click.echo(report.summary())


@cli.command("relay")
@click.option(
    "--upstream",
    "upstreams",
    required=True,
    multiple=True,
    metavar="HOST[:PORT]|ENDPOINT",
    help="The broker or relay to relay from: its HOST[:PORT] (its feed is on PORT+1), or a full feed endpoint;"
    " repeat it for both brokers of an active/standby pair (only the active one publishes).",
)
@click.option(
    "--host", envvar="ZCHAT_RELAY_HOST", default=p.DEFAULT_HOST, show_default=True, help="Address to serve on."
)
@click.option(
    "--port",
    envvar="ZCHAT_RELAY_PORT",
    type=click.IntRange(1, MAX_BASE_PORT),
    default=p.DEFAULT_PORT,
    show_default=True,
    help="Base port, as for a broker: the relayed feed is served on PORT+1.",
)
@click.option("--feed", metavar="ENDPOINT", help="Full endpoint to serve the feed on; overrides --host/--port.")
@click.option(
    "--insecure", is_flag=True, help="Allow serving on a non-loopback address (room traffic is not encrypted)."
)
@click.option("--server-key", metavar="KEY|FILE", help="The upstream broker's public key, if it runs --secure.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=CONFIG_DIR / "id.key_secret",
    show_default=True,
    help="This relay's secret key file, for a secure upstream (its key must be allowed there).",
)
@log_level_option
def relay_cmd(
    *,
    upstreams: tuple[str, ...],
    host: str,
    port: int,
    feed: str | None,
    insecure: bool,
    server_key: str | None,
    key_file: Path,
    log_level: str,
) -> None:
    """Relay a broker's feed (room events only, never private ones) to subscribers here.

    Clients use it with --feed ENDPOINT while still pushing to, and asking, the broker.
    """
    _setup_logging(log_level, "text")
    with _clear_errors():
        sources = [u if "://" in u else _broker(u, "--upstream").feed for u in upstreams]
        bind = feed or p.Endpoints.from_host_port(host, port).feed
        if not keys.is_local(bind) and not insecure:
            raise ZChatError(
                f"refusing to serve {bind}: a relay's traffic is not encrypted (--insecure if you mean it)"
            )
        curve = keys.client_curve(server_key, key_file)
        relay = Relay(sources, bind, curve=curve)
        # Before binding: a signal that comes once the sockets are up must find its handler.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: relay.stop())
        with relay:
            relay.run()


def _broker(address: str, option: str) -> p.Endpoints:
    """The endpoints of a broker given as HOST[:PORT] (IPv6 hosts in brackets)."""
    address = address.strip()
    host, sep, port = address.rpartition(":")
    if not sep or host.endswith(":") or (host.count(":") and not host.endswith("]")):
        host, port = address, str(p.DEFAULT_PORT)
    # As --port: PORT+2 (rpc) must still be a port, or connecting fails as "no answer".
    if not port.isdigit() or not host or not 1 <= int(port) <= MAX_BASE_PORT:
        raise ZChatError(f"{option} {address!r}: expected HOST[:PORT], PORT 1-{MAX_BASE_PORT}")
    return p.Endpoints.from_host_port(host.strip("[]"), int(port))


@cli.command("keygen")
@click.option("--name", default="id", show_default=True, help="File name: NAME.key (public) and NAME.key_secret.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=CONFIG_DIR,
    show_default=True,
    help="Where to write the keys.",
)
@click.option("--force", is_flag=True, help="Replace an existing keypair of that name.")
def keygen_cmd(name: str, directory: Path, force: bool) -> None:
    """Make a CURVE keypair (z85, files readable by you only) and print its public key.

    Clients: 'zchat keygen', then give the public key to the broker's operator. Brokers:
    'zchat keygen --name server', then give the public key to the users.
    """
    with _clear_errors():
        public, secret, key = keys.keygen(name, directory, force=force)
    click.echo(f"public key: {key}")
    click.echo(f"wrote {public} and {secret} (mode 0600); keep {secret.name} to yourself")
    # Quoted for a shell: z85 keys may hold '!' and '$'.
    if name == "server":
        click.echo(f"clients pass it as: --server-key '{key}'")
    else:
        click.echo(f"the broker's --allow file gets the line: {key} NICK")


@cli.command("say")
@click.option("--nick", envvar="ZCHAT_NICK", required=True, help=f"Nick to speak as ({p.NICK_RULE}).")
@click.option("--room", default=p.DEFAULT_ROOM, show_default=True, help="Room to speak in.")
@click.option("--to", metavar="NICK", help="Send privately to NICK instead of to the room.")
@click.option(
    "--send-timeout",
    type=click.FloatRange(0.5),
    default=30.0,
    show_default=True,
    help="Seconds without a single confirmation from the broker before the lines still unconfirmed count as not sent.",
)
@click.argument("text", required=False)
@client_options
def say_cmd(nick: str, room: str, to: str | None, text: str | None, send_timeout: float, **kw: Any) -> None:
    """Send TEXT, or each line of stdin in order, then leave.

    Lines go out as fast as the broker allows (its rate and burst), so a long pipe is delivered
    whole. Exits 0 only when the broker has confirmed every line; otherwise 1, naming how many
    were not sent.
    """
    with _clear_errors():
        client = _connected(nick, [room], kw, send_timeout=send_timeout)
        progress = _Progress(client)
        try:
            lines = [text] if text is not None else _stdin_lines(client, progress)
            refused = 0
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    if to is not None:
                        client.msg(to, line)
                    else:
                        client.say(line)
                    progress.queued += 1
                except LocalProtocolError as exc:
                    refused += 1
                    progress.clear()
                    click.echo(f"zchat say: line {n} not sent: {exc}", err=True)
            # Wait for as long as the broker keeps confirming. The client gives up only after
            # --send-timeout without a single confirmation; it rides out a broker restart (it
            # resends after reconnecting).
            while client.pending:
                client.poll(0.25)
                progress.show()
            progress.clear()
            failed = client.failures + refused
            if failed:
                reason = next(iter(client.failed.values()), "refused")
                raise ZChatError(f"{failed} of {progress.queued + refused} line(s) not sent: {reason}")
        finally:
            progress.clear()
            client.close()


class _Progress:
    """``zchat say``'s progress on a terminal: lines confirmed of lines read, on one line of
    stderr that the next output replaces. Nothing when stderr is not a terminal."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.queued = 0
        self._shown = False
        self._enabled = sys.stderr.isatty()

    def show(self) -> None:
        if self._enabled and self.queued > 1:
            done = self.queued - len(self.client.pending) - self.client.failures
            sys.stderr.write(f"\r\x1b[Kzchat say: {done}/{self.queued} lines confirmed")
            sys.stderr.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False


def _stdin_lines(client: Client, progress: _Progress) -> Iterator[str]:
    """Lines of stdin as they come, keeping the session alive (and the lines flowing out) while
    stdin is quiet."""
    fd = sys.stdin.fileno()
    buffer = b""
    while True:
        readable, _, _ = select.select([fd], [], [], 0)
        if not readable:
            client.poll(1.0, also=[fd])
            progress.show()
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


def main() -> int:
    """Run the command line; returns the exit status (an interrupt: :data:`INTERRUPTED`)."""
    try:
        result = cli.main(prog_name="zchat", standalone_mode=False)
    except click.exceptions.Abort as exc:  # what click makes of KeyboardInterrupt (and EOF)
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return INTERRUPTED
        click.echo("Aborted!", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    # A command returns None; --help and --version end with click's exit status.
    return result if isinstance(result, int) else 0
