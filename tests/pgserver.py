"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary directory, ``postgres``
on 127.0.0.1 at a free port and on a unix socket in that directory, all removed by :meth:`stop`.

Standard library only, so that `.ci/run` can ask, before any virtualenv exists, whether this
machine has the server binaries: ``python3 tests/pgserver.py`` prints their directory, or says
where it looked and exits 1. The pytest fixtures that use this live in conftest.py."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

#: Set to a directory to use the binaries there and nowhere else (an empty one plays a machine
#: without PostgreSQL).
BINDIR_ENV = "ZCHAT_PG_BINDIR"
#: What the tests run; Debian's client-only packages put psql and pg_isready on PATH, not these.
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
#: The cluster's superuser, the role every test connects as.
SUPERUSER = "zchat"
#: How many free ports to try in turn if another process takes ours before the server binds it.
START_ATTEMPTS = 3


class ServerError(RuntimeError):
    """A server command failed; the message carries its output and the end of the server's log."""


def find_bindir() -> Path | None:
    """The directory holding :data:`SERVER_PROGRAMS`, or None. Looks in $ZCHAT_PG_BINDIR alone if
    it is set; otherwise beside ``initdb`` on PATH, at ``pg_config --bindir``, then in Debian's
    /usr/lib/postgresql/VERSION/bin, newest first (Debian keeps initdb off PATH)."""
    if (override := os.environ.get(BINDIR_ENV)) is not None:
        candidates = [Path(override)]
    else:
        candidates = [*_beside_initdb_on_path(), *_pg_config_bindir(), *_debian_bindirs()]
    for bindir in candidates:
        if all((bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in SERVER_PROGRAMS):
            return bindir
    return None


def where_searched() -> str:
    """Where :func:`find_bindir` looks, for a message saying it found nothing."""
    if (override := os.environ.get(BINDIR_ENV)) is not None:
        return f"${BINDIR_ENV}={override}"
    return "PATH, pg_config --bindir, /usr/lib/postgresql/*/bin"


def _beside_initdb_on_path() -> list[Path]:
    found = shutil.which("initdb")
    # Resolved: a symlink on PATH (/usr/local/bin/initdb) is not where `postgres` lives.
    return [Path(found).resolve().parent] if found else []


def _pg_config_bindir() -> list[Path]:
    # Debian's pg_config comes with libpq-dev and names the bindir even without the server there.
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(out.stdout.strip())]


def _debian_bindirs() -> list[Path]:
    dirs = Path("/usr/lib/postgresql").glob("*/bin")
    return sorted(dirs, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1, reverse=True)


class PgServer:
    """One cluster: :meth:`start` creates and starts it (bounded waits), :meth:`stop` stops it and
    deletes its directory. TCP connections authenticate with a password (as a deployed broker
    would); the unix socket trusts whoever can reach the directory."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="zchat-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        # initdb and postgres refuse to run as root: then they run as an unprivileged account
        # that owns the directory.
        self.account = _server_account() if os.geteuid() == 0 else None
        if self.account is not None:
            os.chown(self.dir, self.account.pw_uid, self.account.pw_gid)

    def dsn(self, dbname: str, *, unix: bool = False) -> str:
        """A libpq URI for ``dbname``: TCP on 127.0.0.1 with the password, or the unix socket."""
        if unix:
            return f"postgresql://{SUPERUSER}@/{dbname}?host={quote(str(self.dir), safe='')}&port={self.port}"
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> None:
        """initdb, then start the server and wait until it accepts connections, all within
        ``timeout`` seconds. If it raises (:class:`ServerError` when a command fails), everything
        is already stopped and removed."""
        deadline = time.monotonic() + timeout
        try:
            pwfile = self.dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.account is not None:
                os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
            initdb = ["--pgdata", str(self.data), "--username", SUPERUSER, "--pwfile", str(pwfile)]
            initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"]
            self._run("initdb", *initdb, "--no-sync", "--no-instructions", deadline=deadline)
            pwfile.unlink()
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{_conf_quote(str(self.dir))}'\n"
                    # The cluster is deleted after the session: durability costs time, buys nothing.
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                )
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port = _free_port()
                try:
                    self._pg_ctl_start(deadline)
                    return
                except ServerError:
                    if attempt == START_ATTEMPTS or "Address already in use" not in self._log_tail():
                        raise
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server if it runs, then delete the cluster. Safe after a failed start."""
        if (self.data / "postmaster.pid").exists():
            try:
                # immediate: no shutdown checkpoint, the data is about to be deleted anyway.
                stop = ["stop", "--pgdata", str(self.data), "--mode=immediate", "--wait", f"--timeout={int(timeout)}"]
                self._run("pg_ctl", *stop, deadline=time.monotonic() + timeout + 5)
            except (ServerError, subprocess.TimeoutExpired):
                self._kill_postmaster()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _pg_ctl_start(self, deadline: float) -> None:
        # pg_ctl --wait polls the server until it accepts connections, for at most --timeout s.
        left = max(1, int(deadline - time.monotonic()))
        start = ["start", "--pgdata", str(self.data), "--log", str(self.log), "--wait", f"--timeout={left}"]
        self._run("pg_ctl", *start, "-o", f"-p {self.port}", deadline=deadline + 5)

    def _run(self, program: str, *args: str, deadline: float) -> None:
        account = self.account
        # Only PATH and the locale: a developer's PGDATA, PGPORT or PGHOST must not steer the server.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        proc = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.dir,  # initdb needs a current directory that its user can enter
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,  # drop root's supplementary groups too
        )
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            raise ServerError(
                f"{program} {' '.join(args)} exited {proc.returncode}:\n{output}--- log ---\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _kill_postmaster(self) -> None:
        # The last resort when pg_ctl itself hangs: the postmaster's pid is postmaster.pid's first
        # line, and its backends exit on their own once they notice it has gone.
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def _server_account() -> pwd.struct_passwd:
    # Debian's postgresql package creates `postgres`; `nobody` serves where the binaries came
    # from elsewhere. Creating a user would change the machine beyond the test run.
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerError("running as root, and neither a `postgres` nor a `nobody` account exists to run the server as")


def _conf_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    if (found := find_bindir()) is None:
        sys.exit(f"no PostgreSQL server binaries ({', '.join(SERVER_PROGRAMS)}) in {where_searched()}")
    print(found)
