"""``python -m benchmarks`` (from the repository root): the same as ``python benchmarks/bench.py``."""

from benchmarks.cli import entry

if __name__ == "__main__":
    entry()
