"""zchat's broker benchmark against ``zmq.proxy``: ``python benchmarks/bench.py`` or ``python -m benchmarks``.

The method and the columns are in benchmarks/README.md. The modules, each importing only those
above it:

- ``metrics``: CPU and RSS from /proc, the machine's background load, latency percentiles.
- ``fleet``: the processes the bench starts, the control channel to its workers, what every run
  shares (:class:`~benchmarks.fleet.Bench`).
- ``brokers``: what is benchmarked (the proxy, zchat with and without its store), how each is
  started, and the snapshot of the zchat package they run.
- ``workers``: the load: publisher, subscriber and idle-client worker processes.
- ``scenarios``: the scenarios, and running one against a fresh broker.
- ``report``: the Markdown tables and targets.
- ``cli``: the command line (its docstring has the overview); ``bench.py`` and ``__main__`` run it.
"""
