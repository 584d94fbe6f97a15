"""The command line: options, the plan of runs (retrying noisy ones), the header, the output files.

It measures zchat's broker against the physical limit for its shape, ``zmq.proxy`` (PULL → PUB in
C), with a load generator that outruns the proxy. Run from the repository root, in the dev venv::

    python -m benchmarks --quick                     # a fast check: one run of each, small N
    python -m benchmarks --markdown results.md --json results.json   # medians of 3, and a plot

Brokers, each a fresh process per run (benchmarks/brokers.py): the proxy fed zchat's two frames
``[topic, event]`` (the fair comparison) and fed one frame per message, and zchat with its store on
and off. The load (benchmarks/workers.py): publishers whose messages are built before the clock
and sent by a libzmq device, so that C and not Python sets their pace; subscribers whose
messages a libzmq device counts, but for the ones a latency scenario times in Python.

Scenarios (benchmarks/scenarios.py): the load generator alone, into a proxy with no subscriber
(how fast it publishes); 1 → K as fast as it goes for each ``--k``; 20 → 10; 1 → K paced at
``--rate`` (latency); 1 000 idle clients and a pair (memory per client; the proxy also with other
socket options); and, with ``--sustained``, a million messages into zchat while the broker's RSS
and WAL are sampled.

Every number is the median over ``--repeat`` runs; ``--json FILE`` keeps every run's raw numbers,
``--plot`` draws throughput and p99 against K. The Markdown goes to stdout, progress to stderr.
benchmarks/README.md says what each column means. ``python benchmarks/bench.py`` runs the same
as ``python -m benchmarks``; the other modules of the package are listed in benchmarks/__init__.py.
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

from benchmarks.brokers import BROKERS, PGSTORE, PROXY_VARIANTS, BrokerKind, snapshot_zchat
from benchmarks.fleet import Bench, Fleet, Json
from benchmarks.postgres import Databases, missing
from benchmarks.report import background_line, cpu_model, report
from benchmarks.scenarios import Scenario, run_one, scenarios_for
from benchmarks.workers import worker_main

FAMILIES = ["source", "throughput", "many", "latency", "idle", "sustained"]
DEFAULT_PLOT = Path(__file__).with_name("results.png")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--messages", type=click.IntRange(100), help="N for the throughput scenarios [200 000; --quick 20 000].")
@click.option(
    "--source-messages", type=click.IntRange(100), help="N for the load generator alone [500 000; --quick 100 000]."
)
@click.option(
    "--k",
    "ks",
    type=click.IntRange(1, 200),
    multiple=True,
    help="Subscribers K of the 1 → K and latency scenarios (repeatable) [1, 10, 50].",
)
@click.option("--repeat", type=click.IntRange(1), help="Runs per (scenario, broker) [3; --quick 1].")
@click.option("--quick", is_flag=True, help="Smaller N, 1 s latency runs, 200 idle clients, one run each.")
@click.option("--rate", type=click.IntRange(100), default=5000, show_default=True, help="Latency: msgs/s.")
@click.option("--latency-seconds", type=click.FloatRange(0.2), help="Seconds per latency run [3; --quick 1].")
@click.option("--idle-clients", type=click.IntRange(1), help="Idle clients [1 000; --quick 200].")
@click.option("--sustained", is_flag=True, help="Also run the sustained scenario (zchat only, once).")
@click.option(
    "--sustained-messages", type=click.IntRange(1000), default=1_000_000, show_default=True, help="Its messages."
)
@click.option(
    "--sustained-seconds", type=click.FloatRange(10), default=600, show_default=True, help="Its bound in time."
)
@click.option(
    "--scenario",
    "only",
    multiple=True,
    type=click.Choice(FAMILIES),
    help="Run only these families of scenarios (repeatable; sustained implies --sustained).",
)
@click.option(
    "--broker",
    "brokers",
    multiple=True,
    type=click.Choice([k.key for k in (*BROKERS, *PROXY_VARIANTS)]),
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
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_PLOT,
    show_default="benchmarks/results.png",
    help="Draw throughput and p99 latency against K into this PNG (needs matplotlib: the bench extra).",
)
@click.option("--no-plot", is_flag=True, help="Draw no plot.")
def main(
    *,
    messages: int | None,
    source_messages: int | None,
    ks: tuple[int, ...],
    repeat: int | None,
    quick: bool,
    rate: int,
    latency_seconds: float | None,
    idle_clients: int | None,
    sustained: bool,
    sustained_messages: int,
    sustained_seconds: float,
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
    plot_file: Path,
    no_plot: bool,
) -> None:
    """Benchmark zchat's broker against zmq.proxy (see benchmarks/README.md)."""
    repeat = repeat or (1 if quick else 3)
    chosen = scenarios_for(
        source=source_messages or (100_000 if quick else 500_000),
        messages=messages or (20_000 if quick else 200_000),
        ks=sorted(set(ks or (1, 10, 50))),
        rate=rate,
        seconds=latency_seconds or (1.0 if quick else 3.0),
        clients=idle_clients or (200 if quick else 1000),
        sustained=sustained_messages,
        bound=sustained_seconds,
    )
    wanted = set(only or FAMILIES) - ({"sustained"} if not (sustained or "sustained" in only) else set())
    chosen = [s for s in chosen if s.family in wanted]
    # The PostgreSQL row needs a server to start: without one it is left out, and said so, unless
    # it was asked for by name (then its runs fail, saying why).
    no_postgres = None if brokers else missing()
    every = [k for k in (*BROKERS, *PROXY_VARIANTS) if k is not PGSTORE or not no_postgres]
    kinds = [k for k in (*BROKERS, *PROXY_VARIANTS) if k.key in brokers] if brokers else every
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    # The sustained run is about growth over time, not a median: once.
    plan = [
        (r, sc, k)
        for r in range(1, repeat + 1)
        for sc in chosen
        for k in kinds
        if sc.runs_on(k) and (r == 1 or sc.family != "sustained")
    ]
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
            bench = Bench(tmp, ctx, fleet, transport, text_bytes, db_dir or tmp, tmp / "src", Databases())

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
            bench.postgres.stop()
    elapsed = time.monotonic() - began
    header = [
        "# zchat broker benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs ({cpu_model()}), Python"
        f" {platform.python_version()}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, {transport} on"
        f" loopback, {text_bytes}-byte texts",
        f"- zchat {version}; the store-on broker's SQLite file in {db_dir or '$TMPDIR'}; PostgreSQL "
        + (f"not run: {no_postgres}" if no_postgres else "a local server over TCP on 127.0.0.1, a database per run"),
        f"- every number is the median of {repeat} run(s); total time {elapsed / 60:.1f} min",
        "- publishers, broker and subscribers share the same CPUs: see benchmarks/README.md",
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
    if not no_plot and any(s.family in ("throughput", "latency") for s in chosen):
        _plot(records, chosen, kinds, plot_file, f"zchat broker vs zmq.proxy · {time.strftime('%Y-%m-%d')}")
    if any(not r["ok"] for r in records if not r.get("discarded")):
        sys.exit(1)


def _plot(records: list[Json], chosen: list[Scenario], kinds: list[BrokerKind], path: Path, title: str) -> None:
    # Imported here, not at the top: matplotlib is optional (the bench extra), and every worker
    # process runs this module too, which must not pay for importing it.
    try:
        from benchmarks.plot import plot  # noqa: PLC0415
    except ImportError:
        click.echo("no plot: matplotlib is missing (pip install -e '.[bench]')", err=True)
        return
    plot(records, chosen, kinds, path, title)
    click.echo(f"plot: {path}", err=True)


def entry() -> None:
    """What ``bench.py`` and ``python -m benchmarks`` run: a worker when the coordinator spawned
    this process as one (fleet.ENTRY), else the command line."""
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        sys.exit(worker_main(json.loads(sys.argv[2])))
    main()
