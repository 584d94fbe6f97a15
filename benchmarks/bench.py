#!/usr/bin/env python3
"""The benchmark's entry script: ``python benchmarks/bench.py --help`` (see benchmarks/README.md).

The benchmark itself is the ``benchmarks`` package around this file (benchmarks/cli.py has the
overview); ``python -m benchmarks`` from the repository root runs the same. The coordinator
starts its worker processes by running this script again (benchmarks.fleet.ENTRY).
"""

import importlib.util
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, only benchmarks/ itself is on sys.path, so the package is loaded from here
    # by path. Not by putting the repository root on sys.path: that would make the checkout's
    # zchat/ importable too, and the bench must snapshot the installed zchat (snapshot_zchat).
    here = Path(__file__).parent
    spec = importlib.util.spec_from_file_location(
        "benchmarks", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    assert spec is not None and spec.loader is not None
    sys.modules["benchmarks"] = package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)

    from benchmarks.cli import entry

    entry()
