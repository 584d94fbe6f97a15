"""What the bench measures besides messages: CPU and memory from /proc, machine load, file sizes,
and the arithmetic on samples (when a sampled count finished, percentiles).

Linux only: a process's CPU seconds (``/proc/PID/stat``), RSS (``/proc/PID/status``) and open
sockets (``/proc/PID/fd``), the whole
machine's busy time (``/proc/stat``, to tell other users' load from the bench's), the size of a
file that may not exist (the store's WAL), and the nearest-rank percentiles of the latency tables.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float | None:
    """:func:`cpu_seconds`, or None for a process that is gone."""
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) in MB, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out.get("VmRSS", math.nan), "peak_rss_mb": out.get("VmHWM", math.nan)}


def wait_quiet(limit: float, threshold_pct: float = 15.0) -> float:
    """Wait (up to ``limit`` seconds) for half a second in which the machine's CPUs are idle
    but for ``threshold_pct`` % of one CPU: others may be using this machine. Returns the last
    such measurement."""
    deadline = time.monotonic() + limit
    while True:
        busy, t = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        pct = 100 * (machine_busy_seconds() - busy) / (time.monotonic() - t)
        if pct < threshold_pct or time.monotonic() >= deadline:
            return pct


def open_sockets(pid: int) -> int:
    """How many sockets the process has open (each TCP or IPC connection a broker accepted is one)."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed meanwhile
            continue
    return count


def file_size(path: Path) -> int:
    """Bytes in ``path``; 0 if it does not exist (a WAL between checkpoints may not)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def finish_ns(samples: Sequence[tuple[int, int]], final: int) -> int:
    """When a count sampled as (monotonic ns, count) pairs reached ``final``: between the last
    sample below it and the first at it, at the rate of the interval before those two (the last
    messages of a stream come as fast as the ones before them); the first sample at ``final``
    if there is no such interval. Samples must start below ``final`` and end at it."""
    for k, (t, count) in enumerate(samples):
        if count < final:
            continue
        if k < 2:
            return t
        (t0, c0), (t1, c1) = samples[k - 2], samples[k - 1]
        if c1 <= c0:  # the stream stalled before: no rate to go by
            return t
        return min(t, t1 + round((final - c1) * (t1 - t0) / (c1 - c0)))
    return samples[-1][0] if samples else 0


LATENCY_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


def percentile(ordered: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted data (nan if empty)."""
    if not ordered:
        return math.nan
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))])
