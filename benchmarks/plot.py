"""The plot: msgs/s per subscriber and p99 latency against K, the proxy's rows beside zchat's.

One PNG with two panels, from the same records as the Markdown: the median over runs, with a
whisker from the slowest to the fastest run. matplotlib is the ``bench`` extra
(``pip install -e '.[bench]'``): the command line imports this module only to draw a plot.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from benchmarks.brokers import BROKERS, BrokerKind
from benchmarks.fleet import Json
from benchmarks.report import kept, median
from benchmarks.scenarios import Scenario


def _points(
    records: list[Json], scenarios: list[Scenario], kind: BrokerKind, *path: str
) -> list[tuple[int, float, float, float]]:
    """(K, median, lowest, highest) of ``path`` over the runs of each scenario."""
    out = []
    for sc in scenarios:
        rs = kept(records, sc, kind)
        values = sorted(median([r], *path) for r in rs)
        if values:
            out.append((sc.subs, median(rs, *path), values[0], values[-1]))
    return out


def plot(records: list[Json], scenarios: list[Scenario], kinds: list[BrokerKind], path: Path, title: str) -> None:
    thr = sorted((s for s in scenarios if s.family == "throughput"), key=lambda s: s.subs)
    lat = sorted((s for s in scenarios if s.family == "latency"), key=lambda s: s.subs)
    fig = Figure(figsize=(12, 4.6))
    left, right = fig.subplots(1, 2)
    panels = ((left, thr, ("per_sub_msgs_per_s",)), (right, lat, ("latency_ms", "p99")))
    for ax, scs, path_ in panels:
        for kind in (k for k in kinds if k in BROKERS):
            pts = _points(records, scs, kind, *path_)
            if not pts:
                continue
            ks, mid, lo, hi = zip(*pts, strict=True)
            yerr = [[m - low for m, low in zip(mid, lo, strict=True)], [h - m for m, h in zip(mid, hi, strict=True)]]
            style = "--" if not kind.zchat else "-"
            ax.errorbar(ks, mid, yerr=yerr, marker="o", linestyle=style, capsize=3, label=kind.label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([sc.subs for sc in scs], [str(sc.subs) for sc in scs])
        ax.minorticks_off()
        ax.set_xlabel("K (subscribers)")
        ax.grid(True, which="both", alpha=0.3)
    left.set_title("throughput, 1 publisher → K subscribers")
    left.set_ylabel("msgs/s per subscriber (median)")
    rate = lat[0].rate if lat else 0
    right.set_title(f"p99 latency at {rate:,} msg/s".replace(",", " "))
    right.set_ylabel("p99 ms")
    left.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
