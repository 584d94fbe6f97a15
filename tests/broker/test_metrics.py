"""`zchat broker --metrics`: Prometheus metrics scraped over HTTP from real brokers (in a thread,
and as a `zchat broker` process), on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import zmq
from conftest import ZCHAT, ThreadBroker, child_env, start_broker_process
from prometheus_client.parser import text_string_to_metric_families

from zchat.broker.config import FEED_HWM
from zchat.broker.core import Counters
from zchat.broker.metrics import COUNTER_HELP, ROLES
from zchat.broker.shell import RPC_HWM
from zchat.client.shell import Client

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[Samples, dict[str, tuple[str, str]], str]:
    """Every sample (by name and labels), every family's (type, help), and the content type."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        body, content_type = reply.read().decode(), reply.headers["Content-Type"]
    samples: Samples = {}
    families: dict[str, tuple[str, str]] = {}
    for family in text_string_to_metric_families(body):
        families[family.name] = (family.type, family.documentation)
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples, families, content_type


def fresh(b: ThreadBroker) -> None:
    """Wait (bounded) for a snapshot taken after everything the test did so far was committed."""
    metrics = b.broker.metrics
    assert metrics is not None
    assert metrics.wait_published(metrics.published + 1, timeout=5), "the broker published no snapshot"


def test_every_counter_of_stats_has_a_metric_with_help() -> None:
    assert list(COUNTER_HELP) == list(vars(Counters()))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_brokers_metrics_scraped_over_http(
    kind: str, ctx: zmq.Context[zmq.Socket[bytes]], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = request.getfixturevalue("pg_dsn") if kind == "postgresql" else str(tmp_path / "h.sqlite3")
    # A lease long enough for alice to outlast the wait for a snapshot without a heartbeat.
    b = ThreadBroker(ctx, db=db, metrics=("127.0.0.1", 0), heartbeat=5.0)
    try:
        assert b.broker.metrics is not None
        url = f"http://127.0.0.1:{b.broker.metrics.port}/metrics"
        with Client("alice", ["general"], endpoints=b.endpoints, context=ctx) as alice:
            alice.say("hello")
            alice.say("world")
            alice.wait_sent(10)
            fresh(b)
            samples, families, content_type = scrape(url)
        assert content_type.startswith("text/plain; version=0.0.4")
        for name, help_text in COUNTER_HELP.items():
            assert families[f"zchat_{name}"] == ("counter", help_text)
            assert (f"zchat_{name}_total", ()) in samples
        assert samples["zchat_received_total", ()] == 2
        assert samples["zchat_published_total", ()] == 3  # a join and two messages
        assert samples["zchat_joins_total", ()] == 1
        assert samples["zchat_store_failures_total", ()] == 0
        assert (samples["zchat_sessions", ()], samples["zchat_rooms", ()]) == (1, 1)
        assert samples["zchat_store_bytes", ()] > 0 and samples["zchat_uptime_seconds", ()] > 0
        assert (samples["zchat_wal_bytes", ()] > 0) == (kind == "sqlite")  # PostgreSQL's WAL is the server's
        assert {role: samples["zchat_role", (("role", role),)] for role in ROLES} == {"active": 1, "standby": 0}
        info = (("epoch", b.broker.core.epoch), ("history", b.store.id), ("store", kind))
        assert samples["zchat_broker_info", info] == 1
        assert (samples["zchat_secure", ()], samples["zchat_store_failing", ()]) == (0, 0)
        hwm = {s: samples["zchat_socket_hwm_messages", (("socket", s),)] for s in ("feed", "rpc")}
        assert hwm == {"feed": FEED_HWM, "rpc": RPC_HWM}
        assert 0 <= samples["zchat_snapshot_age_seconds", ()] < 5
        assert all(name.startswith("zchat_") for name in families)  # nothing of the process's own
    finally:
        b.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)  # the endpoint went with the broker


def test_zchat_broker_metrics_serves_on_the_port_it_logs() -> None:
    bp = start_broker_process("--metrics", "127.0.0.1:0")
    try:
        # Logged before the "listening" line that start_broker_process waited for.
        found = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", "".join(bp.log))
        assert found is not None, bp.log
        samples, _, _ = scrape(found.group(1))
        assert samples["zchat_role", (("role", "active"),)] == 1
    finally:
        assert bp.stop() == 0


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (
            "0.0.0.0:9464",
            "Error: refusing to serve metrics on 0.0.0.0:9464, beyond this machine, without --secure or --insecure"
            " (the endpoint is plain HTTP: numbers and ids, no messages, nicks or keys)",
        ),
        ("9464x", "Error: --metrics '9464x': expected [HOST:]PORT, e.g. 127.0.0.1:9464"),
        ("host:70000", "Error: --metrics 'host:70000': expected [HOST:]PORT, e.g. 127.0.0.1:9464"),
    ],
)
def test_a_metrics_address_beyond_loopback_or_malformed_is_one_line(value: str, error: str) -> None:
    done = subprocess.run(
        [*ZCHAT, "broker", "--db", ":memory:", "--port", "1", "--metrics", value],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    assert (done.returncode, done.stderr.strip()) == (1, error)
