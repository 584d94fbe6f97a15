"""The PostgreSQL server behind the bench's ``pgstore`` broker: the test suite's throwaway server
(tests/pgserver.py: ``initdb`` into the bench's temp dir, loopback only), started on the first run
that needs it, with a fresh database per run, and stopped with the bench.

A machine without the server binaries runs no ``pgstore`` row unless asked (``--broker pgstore``),
and the report says why (:func:`missing`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pgserver import PgServer, find_bindir, where_searched  # the tests' own server

__all__ = ["Databases", "PgServer", "find_bindir", "missing"]


def missing() -> str | None:
    """Why no PostgreSQL row can run here, or None if it can."""
    return None if find_bindir() is not None else f"no PostgreSQL server binaries (looked in {where_searched()})"


class Databases:
    """One server for the whole bench; a database of its own for each run."""

    def __init__(self) -> None:
        self._server: PgServer | None = None

    def fresh(self, run: int) -> str:
        """The URL of a new, empty database for ``run`` (the server starts on the first call)."""
        if self._server is None:
            bindir = find_bindir()
            if bindir is None:
                raise RuntimeError(missing())
            self._server = PgServer(bindir)
            self._server.start()
        name = f"history_{run}"
        with psycopg.connect(self._server.dsn("postgres", unix=True), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self._server.dsn(name)

    def drop(self, run: int) -> None:
        """Forget ``run``'s database (its broker has stopped): the next runs start as small."""
        if self._server is not None:
            with psycopg.connect(self._server.dsn("postgres", unix=True), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(f"history_{run}"))
                )

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far: its processes now (postmaster, backends,
        background workers) and the children it has reaped. 0 before it started."""
        if self._server is None:
            return 0.0
        try:
            postmaster = int((self._server.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue  # gone meanwhile
            fields = text[text.rindex(")") + 2 :].split()
            pid, ppid = int(stat.parent.name), int(fields[1])
            if postmaster in (pid, ppid):
                # utime, stime (and for the postmaster cutime, cstime: its reaped backends).
                ticks = fields[11:15] if pid == postmaster else fields[11:13]
                total += sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
