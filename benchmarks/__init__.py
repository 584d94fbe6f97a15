"""zchat's broker benchmark against ``zmq.proxy``: ``python -m benchmarks`` or ``python benchmarks/bench.py``.

The method and the columns are in benchmarks/README.md. The modules, each importing only those
above it:

- ``metrics``: CPU and RSS from /proc, the machine's background load, file sizes, when a sampled
  count finished, latency percentiles.
- ``fleet``: the processes the bench starts, the control channel to its workers, what every run
  shares (:class:`~benchmarks.fleet.Bench`).
- ``wire``: the zchat protocol as the load speaks it (the one place to adapt to a new version),
  and the proxy's stand-in for zchat's events.
- ``devices``: libzmq devices in threads: the publishers' replay source, the subscribers' counter.
- ``brokers``: what is benchmarked (the proxy, zchat with and without its store), how each is
  started and watched, and the snapshot of the zchat package they run.
- ``workers``: the load: publisher, subscriber and idle-client worker processes.
- ``scenarios``: the scenarios, and running one against a fresh broker.
- ``report``: the Markdown tables and targets.
- ``plot``: the PNG of throughput and latency against K (matplotlib: the ``bench`` extra).
- ``cli``: the command line (its docstring has the overview); ``bench.py`` and ``__main__`` run it.
"""
