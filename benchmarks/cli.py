"""The command line: options, the plan of runs (retrying noisy ones), the header, the output files.

It measures zchat's broker against the physical limit for its shape: ``zmq.proxy`` (PULL→PUB in C).

Run from the repository root, in the dev venv::

    python benchmarks/bench.py --quick --repeat 1                 # a fast check, about a minute
    python benchmarks/bench.py --markdown benchmarks/results.md --json benchmarks/results.json  # median of 3

Three brokers are measured side by side, each a separate process started and stopped by this
script for every run: ``proxy`` (a few lines of Python binding PULL and PUB and calling
``zmq.proxy``: libzmq forwards every message with no Python per message), ``zchat (store on)``
(``python -m zchat broker --db <tmp file> --rate 0``) and ``zchat (store off)`` (``--no-store``).

The load is the same for all three: publisher processes push ~100-byte texts (to the proxy a
ready-made ``[b"#bench:", b'{"seq":N,...}']`` event of the same shape and size as the one zchat
publishes; to zchat a ``Post`` after a ``hello`` on the rpc socket), and subscriber processes
each poll many raw SUB sockets subscribed to ``#bench:``. A subscriber parses only the ``seq``
(the digits after ``{"seq":``) and the one-letter mark at the start of the text (``W`` warm-up,
``M`` measured) and, in the latency scenarios, the ``time.monotonic_ns()`` the publisher wrote
into the text just before sending (one clock for every process on Linux).

Before a clock starts, every subscriber has seen a warm-up message (the publishers send them
until each subscriber process reported so on the control channel), so slow joiners cost nothing
and are not counted. Scenarios:

- ``1→K``: one publisher, N messages as fast as the broker takes them, K = 1, 10, 100.
- ``20→10``: 20 publishers (sessions) in 4 processes, N messages in all, 10 subscribers.
- ``latency R/s``: one publisher paced at R msg/s for a few seconds, one subscriber: p50/p99/p99.9.
- ``idle``: 1 000 connected idle clients (zchat: real sessions, hello then heartbeats, each with
  a SUB, a DEALER and a PUSH; proxy: a SUB and a PUSH each) plus one pair at 1 000 msg/s.

Reported per broker: messages/s per subscriber (median over subscribers), the ratio to the
proxy, broker CPU seconds (utime+stime of its process over the measured window) and peak RSS
(VmHWM), messages lost (expected − distinct received, summed over subscribers). Every number is
the median over ``--repeat`` runs; ``--json FILE`` keeps every run's raw numbers. The Markdown
table goes to stdout, progress to stderr. See benchmarks/README.md for what the columns mean.

``python -m benchmarks`` runs the same as ``python benchmarks/bench.py``; the other modules of the
package are listed in benchmarks/__init__.py.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import click
import zmq

from benchmarks.brokers import BROKERS, BrokerKind, snapshot_zchat
from benchmarks.fleet import Bench, Fleet, Json
from benchmarks.report import background_line, cpu_model, report
from benchmarks.scenarios import Scenario, run_one, scenarios_for
from benchmarks.workers import worker_main


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--messages", type=click.IntRange(100), help="N for the throughput scenarios [200 000; --quick 20 000].")
@click.option("--messages-k100", type=click.IntRange(100), help="N for 1 → 100 only [same as --messages].")
@click.option("--repeat", type=click.IntRange(1), default=3, show_default=True, help="Runs per (scenario, broker).")
@click.option("--quick", is_flag=True, help="Smaller N, 1 s latency runs and 200 idle clients: a fast check.")
@click.option("--latency-seconds", type=click.FloatRange(0.2), help="Seconds per latency rate [2; --quick 1].")
@click.option("--idle-clients", type=click.IntRange(1), help="Idle clients [1 000; --quick 200].")
@click.option(
    "--scenario",
    "only",
    multiple=True,
    type=click.Choice(["k1", "k10", "k100", "p20k10", "lat1000", "lat5000", "lat20000", "idle"]),
    help="Run only these scenarios (repeatable).",
)
@click.option(
    "--broker",
    "brokers",
    multiple=True,
    type=click.Choice([k.key for k in BROKERS]),
    help="Run only these brokers (repeatable).",
)
@click.option("--transport", type=click.Choice(["tcp", "ipc"]), default="tcp", show_default=True)
@click.option("--text-bytes", type=click.IntRange(40, 4000), default=100, show_default=True)
@click.option(
    "--settle",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Before each run, wait up to this long for the machine to be idle (0: don't).",
)
@click.option(
    "--max-background",
    type=click.FloatRange(0),
    default=50.0,
    show_default=True,
    help="A run during which other processes took more than this % of one CPU is done again...",
)
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True, help="...at most this many times.")
@click.option(
    "--db-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the store-on broker keeps its SQLite file [a temp dir under $TMPDIR].",
)
@click.option(
    "--markdown",
    "md_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the table to this file.",
)
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), help="Write every raw number.")
def main(
    *,
    messages: int | None,
    messages_k100: int | None,
    repeat: int,
    quick: bool,
    latency_seconds: float | None,
    idle_clients: int | None,
    only: tuple[str, ...],
    brokers: tuple[str, ...],
    transport: str,
    text_bytes: int,
    settle: float,
    max_background: float,
    retries: int,
    db_dir: Path | None,
    md_file: Path | None,
    json_file: Path | None,
) -> None:
    """Benchmark zchat's broker against zmq.proxy (see the module docstring)."""
    n = messages or (20_000 if quick else 200_000)
    chosen = scenarios_for(
        n, messages_k100 or n, latency_seconds or (1.0 if quick else 2.0), idle_clients or (200 if quick else 1000)
    )
    chosen = [s for s in chosen if not only or s.key in only]
    kinds = [k for k in BROKERS if not brokers or k.key in brokers]
    command = "python benchmarks/bench.py " + shlex.join(sys.argv[1:])
    plan = [(r, sc, k) for r in range(1, repeat + 1) for sc in chosen for k in kinds]
    records: list[Json] = []
    began = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory(prefix="zchat-bench-") as tmpdir, zmq.Context() as ctx:
        tmp = Path(tmpdir)
        (tmp / "logs").mkdir()
        version = snapshot_zchat(tmp / "src")
        fleet = Fleet(tmp / "logs")
        try:
            bench = Bench(tmp, ctx, fleet, transport, text_bytes, db_dir or tmp, tmp / "src")

            def show(item: tuple[int, Scenario, BrokerKind] | None) -> str:
                return "" if item is None else f"run {item[0]}/{repeat}: {item[1].label} · {item[2].label}"

            with click.progressbar(plan, label="benchmark", file=sys.stderr, item_show_func=show) as bar:
                for r, sc, kind in bar:
                    for attempt in range(1 + retries):
                        record = run_one(bench, sc, kind, r, settle)
                        records.append(record)
                        noisy = record.get("background_cpu_pct", 0.0) > max_background
                        if not (record["ok"] and noisy and attempt < retries):
                            break
                        record["discarded"] = "other processes took too much CPU; run again"
                    if not record["ok"]:
                        click.echo(f"\n{sc.label} / {kind.label}: {record['error']}", err=True)
        finally:
            fleet.stop_all()
            bench.control.sock.close()
    elapsed = time.monotonic() - began
    header = [
        "# zchat broker benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs ({cpu_model()}), Python"
        f" {platform.python_version()}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, {transport} on"
        f" loopback, {text_bytes}-byte texts",
        f"- zchat {version}; the store-on broker's SQLite file in {db_dir or '$TMPDIR'}",
        f"- every number is the median of {repeat} run(s); total time {elapsed / 60:.1f} min",
        "- broker, publishers and subscribers share the same CPUs: see benchmarks/README.md",
        background_line(records, max_background),
    ]
    table = report(records, chosen, kinds, header)
    click.echo(table)
    if md_file is not None:
        md_file.write_text(table)
    if json_file is not None:
        meta = {"command": command, "elapsed_s": elapsed, "cpus": os.cpu_count(), "cpu": cpu_model()}
        meta |= {"python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
        meta |= {"transport": transport, "text_bytes": text_bytes, "repeat": repeat, "zchat": version}
        meta |= {"db_dir": str(db_dir) if db_dir else None, "settle_s": settle}
        meta |= {"max_background_pct": max_background, "retries": retries}
        meta["scenarios"] = [vars(s) for s in chosen]
        json_file.write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    if any(not r["ok"] for r in records if not r.get("discarded")):
        sys.exit(1)


def entry() -> None:
    """What ``bench.py`` and ``python -m benchmarks`` run: a worker when the coordinator spawned
    this process as one (fleet.ENTRY), else the command line."""
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        sys.exit(worker_main(json.loads(sys.argv[2])))
    main()
